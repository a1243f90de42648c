"""The parameter-server core: weights, clock, gradient buffer and the update rule.

It knows nothing about transport or time: engines call ``pull`` and ``push`` in the order
events happen (the coordinator does, for both engines). On each update (docs/design.md §1)

    G = (1/|B|) · Σ_l (α(τ_l)/α0) · g_l,   τ_l = i − j_l
    torch.optim.SGD.step(G) at lr α0 · schedule(epoch);  i ← i + 1

Gradients are scaled and summed as they arrive: the clock cannot move while the buffer
fills, so τ_l known at push time is the τ_l of the update that will apply it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .protocol import Protocol
from .staleness import StalenessStats, get_policy


def learning_rate(base_lr: float, epoch: int, steps: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Step schedule: α0 · γ^(number of steps E_k <= epoch)."""
    return base_lr * gamma ** sum(1 for step in steps if epoch >= step)


@dataclass
class PushResult:
    accepted: bool  # False: non-finite, from the future, the wrong size, or a second gradient in a hardsync round
    updated: bool  # True when this push completed the buffer and an update was applied
    staleness: int
    reason: str = ""


class ParameterServer:
    """Weights θ, clock i, SGD state and the buffer of pending gradients.

    ``weights`` is a flat tensor that the server updates in place (engines may let a local
    learner compute directly on it). ``learners`` is how many learners c is computed from.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        protocol: Protocol,
        learners: int,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_policy: str = "staleness",
        lr_steps: tuple[int, ...] = (),
        lr_gamma: float = 0.1,
    ) -> None:
        self.weights = weights
        self.protocol = protocol
        self.learners = learners
        self.base_lr = lr
        self.lr_steps = tuple(lr_steps)
        self.lr_gamma = lr_gamma
        self.policy = get_policy(lr_policy)
        # fused: one pass over θ, gradient and momentum instead of three (same arithmetic, ~1e-8 apart)
        fused = weights.dtype in (torch.float32, torch.float64) and weights.device.type == "cpu"
        self.optimizer = torch.optim.SGD(
            [weights], lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None
        )
        self.clock = 0
        self.epoch = 0
        self.accepted_gradients = 0
        self.rejected_gradients = 0  # counted here only: by push, and by reject for a message refused before it
        self.stats = StalenessStats()
        self._accumulator = torch.zeros_like(weights)
        self._sum: torch.Tensor | None = None  # Σ (α(τ)/α0) g over the buffer, in _accumulator when c > 1
        self._buffered = 0
        self._contributors: set[int] = set()  # learners in the current buffer

    # -- the two calls an engine makes -------------------------------------------------------
    def pull(self) -> tuple[torch.Tensor, int]:
        """The current weights and their timestamp (the clock)."""
        return self.weights, self.clock

    def push(self, gradient: torch.Tensor, timestamp: int, learner: int) -> PushResult:
        """Buffer one gradient computed on the weights of clock ``timestamp``; update when full.

        The server may scale ``gradient`` in place but does not keep it after returning, so
        a transport can receive the next message into the same buffer.
        """
        tau = self.clock - timestamp
        reason = ""
        if gradient.shape != self.weights.shape:
            reason = f"gradient has {gradient.numel()} values, the model {self.weights.numel()}"
        elif tau < 0:
            reason = f"timestamp {timestamp} is ahead of the clock {self.clock}"
        elif self.protocol.blocking and learner in self._contributors:
            reason = f"learner {learner} pushed twice in one hardsync round"
        elif not math.isfinite(float(gradient.sum())):
            reason = "non-finite gradient"
        if reason:
            return self.reject(reason, tau)

        scale = self.policy(tau, self.protocol.n)
        per_update = self.protocol.gradients_per_update(self.learners)
        if self._buffered == 0 and per_update == 1:
            # async: the gradient is the update, applied before we return; no copy on the hot path
            self._sum = gradient.mul_(scale) if scale != 1.0 else gradient
        elif self._buffered == 0:
            self._sum = torch.mul(gradient, scale, out=self._accumulator)
        else:
            assert self._sum is not None  # the buffer holds gradients
            self._sum.add_(gradient, alpha=scale)
        self._buffered += 1
        self._contributors.add(learner)
        self.accepted_gradients += 1
        self.stats.add(tau)
        updated = self._buffered >= per_update
        if updated:
            self.apply_update()
        return PushResult(True, updated, tau)

    def reject(self, reason: str, staleness: int = 0) -> PushResult:
        """Count a gradient that is not applied (also one refused before it reached the server)."""
        self.rejected_gradients += 1
        return PushResult(False, False, staleness, reason)

    def set_learners(self, learners: int) -> bool:
        """c is now computed from ``learners`` (a learner was lost: hardsync stops waiting for it).
        Gradients already buffered stay. True if the buffer is now full and an update was applied."""
        self.learners = learners
        if self._buffered and self._buffered >= self.protocol.gradients_per_update(learners):
            self.apply_update()
            return True
        return False

    # -- updates ---------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return learning_rate(self.base_lr, self.epoch, self.lr_steps, self.lr_gamma)

    def set_epoch(self, epoch: int) -> None:
        """Tell the server which epoch is being trained, for the step schedule."""
        self.epoch = epoch

    def apply_update(self) -> None:
        """Apply the buffered gradients as one SGD step (also used to flush a partial buffer)."""
        if self._buffered == 0:
            return
        assert self._sum is not None  # the buffer holds gradients
        if self._buffered > 1:
            self._sum.div_(self._buffered)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.weights.grad = self._sum
        self.optimizer.step()
        self.weights.grad = None
        self._sum = None
        self._buffered = 0
        self._contributors.clear()
        self.clock += 1

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, SGD state, clock, buffer, statistics.

        Not the number of learners: that is the run's membership, which the coordinator sets."""
        return {
            "weights": self.weights.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot, not live buffers
            "clock": self.clock,
            "epoch": self.epoch,
            "accepted_gradients": self.accepted_gradients,
            "rejected_gradients": self.rejected_gradients,
            "staleness_histogram": dict(self.stats.histogram),
            "buffer_sum": None if self._sum is None else self._sum.clone(),
            "buffered": self._buffered,
            "contributors": sorted(self._contributors),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.weights.copy_(state["weights"])
        self._sum = None if state["buffer_sum"] is None else self._accumulator.copy_(state["buffer_sum"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.clock = state["clock"]
        self.epoch = state["epoch"]
        self.accepted_gradients = state["accepted_gradients"]
        self.rejected_gradients = state["rejected_gradients"]
        self.stats = StalenessStats(state["staleness_histogram"])
        self._buffered = state["buffered"]
        self._contributors = set(state["contributors"])
