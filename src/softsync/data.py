"""The data server: one seeded permutation per epoch, mini-batches handed out in pull order.

A mini-batch is identified by (epoch, index); its samples are
``permutation(epoch)[index·μ : (index+1)·μ]``. With hardsync the engine answers a round's
pulls in learner order, so round r gives learner l the mini-batch rλ + l and the run is the
same computation as one learner with μλ. A mini-batch whose gradient is lost is given back
and handed out again before any new one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from .errors import ConfigError

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Batch:
    """One mini-batch assignment."""

    epoch: int
    index: int
    samples: torch.Tensor  # indices into the training set


def mix(*values: int) -> int:
    """A 63-bit hash of integers by splitmix64 steps: the same in every process, unlike ``hash()``."""
    state = 0
    for value in values:
        state = ((state ^ (value & MASK64)) + 0x9E3779B97F4A7C15) & MASK64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        state = z ^ (z >> 31)
    return state >> 1  # 63 bits: a non-negative seed for torch.Generator.manual_seed


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of torch's RNG while a learner computes mini-batch (epoch, index): a model's dropout then draws the same
    masks under either engine, in a replay and after a resume, whichever learner computes it."""
    return mix(seed, epoch, index)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The global sample order of ``epoch``: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


class DataServer:
    """Hands out ``batches_per_epoch`` mini-batches of ``batch_size`` per epoch, for ``epochs`` epochs."""

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, epochs: int, batches_per_epoch: int | None = None
    ) -> None:
        if batches_per_epoch is None:
            batches_per_epoch = num_samples // batch_size
        if batches_per_epoch < 1 or batches_per_epoch * batch_size > num_samples:
            raise ConfigError(f"{batches_per_epoch} mini-batches of {batch_size} do not fit in {num_samples} samples")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epochs = epochs
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0  # epoch being handed out
        self.position = 0  # next index within it
        self.completed: dict[int, int] = {}  # epoch -> mini-batches whose gradient arrived
        self.ended = 0  # epochs ended, in order
        self.reissue: deque[tuple[int, int]] = deque()
        self._permutations: dict[int, torch.Tensor] = {}

    def _samples(self, epoch: int, index: int) -> torch.Tensor:
        if epoch not in self._permutations:
            self._permutations[epoch] = epoch_permutation(self.num_samples, self.seed, epoch)
        start = index * self.batch_size
        return self._permutations[epoch][start : start + self.batch_size]

    def batch(self, epoch: int, index: int) -> Batch:
        """The mini-batch ``epoch:index``."""
        return Batch(epoch, index, self._samples(epoch, index))

    @property
    def exhausted(self) -> bool:
        """Every epoch has been handed out and nothing waits to be handed out again: take() gives None."""
        return not self.reissue and self.epoch >= self.epochs

    def take(self) -> Batch | None:
        """The next mini-batch, or None once every epoch has been handed out."""
        if self.exhausted:
            return None
        if self.reissue:
            epoch, index = self.reissue.popleft()
            return self.batch(epoch, index)
        batch = self.batch(self.epoch, self.position)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def give_back(self, batch: Batch) -> None:
        """A mini-batch whose gradient was lost: hand it out again first."""
        self.reissue.append((batch.epoch, batch.index))

    def complete(self, batch: Batch) -> list[int]:
        """Record that ``batch``'s gradient arrived; returns the epochs that this ends, in order.

        An epoch ends once all its gradients have arrived and every earlier epoch has ended
        (a straggler may still hold a mini-batch of epoch e while epoch e+1 is done).
        """
        self.completed[batch.epoch] = self.completed.get(batch.epoch, 0) + 1
        ended = []
        while self.completed.get(self.ended, 0) == self.batches_per_epoch:
            self._permutations.pop(self.ended, None)
            del self.completed[self.ended]
            ended.append(self.ended)
            self.ended += 1
        return ended

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "completed": dict(self.completed),
            "ended": self.ended,
            "reissue": list(self.reissue),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.position = state["position"]
        self.completed = dict(state["completed"])
        self.ended = state["ended"]
        self.reissue = deque(tuple(item) for item in state["reissue"])
        self._permutations.clear()
