"""The parameter-server core: weights, clock, gradient buffer and the update rule.

It knows nothing about transport or time: engines call ``pull`` and ``push`` in the order
events happen (the coordinator does, for both engines). On each update (docs/design.md §1)

    G = (1/|B|) · Σ_l (α(τ_l)/α0) · correct(g_l),   τ_l = i − j_l
    torch.optim.SGD.step(G) at lr α0 · schedule(epoch);  i ← i + 1

A policy may drop a gradient instead (α(τ) is None): it is not applied, and its mini-batch is
computed again. A correction (corrections.py) needs θ_{j_l}, which the server keeps while a
gradient computed on it is out (versions.py).

Gradients are scaled and summed as they arrive: the clock cannot move while the buffer
fills, so τ_l known at push time is the τ_l of the update that will apply it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .corrections import Correction
from .protocol import Protocol
from .staleness import StalenessStats, get_policy
from .versions import WeightVersions


def learning_rate(base_lr: float, epoch: int, steps: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Step schedule: α0 · γ^(number of steps E_k <= epoch)."""
    return base_lr * gamma ** sum(1 for step in steps if epoch >= step)


@dataclass
class PushResult:
    accepted: bool  # False: dropped, or rejected: non-finite, from the future, the wrong size, a second in a round
    updated: bool  # True when this push completed the buffer and an update was applied
    staleness: int
    reason: str = ""  # why it was rejected ("" if it was accepted or dropped)
    dropped: bool = False  # the policy drops a gradient this stale: not applied, its mini-batch is redone


class ParameterServer:
    """Weights θ, clock i, SGD state and the buffer of pending gradients.

    ``weights`` is a flat tensor that the server updates in place (engines may let a local
    learner compute directly on it). ``learners`` is how many learners c is computed from.
    ``momentum_correction``: the SGD momentum of each update is ``momentum`` less the implicit
    momentum 1 − 1/⟨τ⟩ that asynchrony adds (Mitliagkas et al. 2016), never below 0, with ⟨τ⟩ the
    mean staleness of the gradients applied so far.
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
        correction: Correction | None = None,
        momentum_correction: bool = False,
    ) -> None:
        self.weights = weights
        self.protocol = protocol
        self.learners = learners
        self.base_lr = lr
        self.lr_steps = tuple(lr_steps)
        self.lr_gamma = lr_gamma
        self.policy = get_policy(lr_policy, protocol.n)
        self.correction = correction or Correction()
        self.versions = WeightVersions() if self.correction.needs_versions else None
        self.momentum = momentum
        self.momentum_correction = momentum_correction
        # fused: one pass over θ, gradient and momentum instead of three (same arithmetic, ~1e-8 apart)
        fused = weights.dtype in (torch.float32, torch.float64) and weights.device.type == "cpu"
        self.optimizer = torch.optim.SGD(
            [weights], lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None
        )
        self.clock = 0
        self.epoch = 0
        self.accepted_gradients = 0
        self.rejected_gradients = 0  # counted here only: by push, and by reject for a message refused before it
        self.dropped_gradients = 0
        self.stats = StalenessStats()
        self._accumulator = torch.zeros_like(weights)
        self._sum: torch.Tensor | None = None  # Σ (α(τ)/α0) g over the buffer, in _accumulator when c > 1
        self._buffered = 0
        self._contributors: set[int] = set()  # learners in the current buffer
        self._gap: torch.Tensor | None = None  # θ_t − θ_{t−τ} of the gradient being corrected

    # -- the two calls an engine makes -------------------------------------------------------
    def pull(self) -> tuple[torch.Tensor, int]:
        """The current weights and their timestamp (the clock), handed to a learner.

        Every pull is matched by one ``push`` of a gradient computed on these weights, or one
        ``release`` if none will come (its learner was lost, its message refused)."""
        if self.versions is not None:
            self.versions.hold(self.clock)
        return self.weights, self.clock

    def release(self, timestamp: int) -> None:
        """No gradient will come for the weights of ``timestamp`` handed out by a pull."""
        if self.versions is not None:
            self.versions.release(timestamp)

    def push(self, gradient: torch.Tensor, timestamp: int, learner: int) -> PushResult:
        """Buffer one gradient computed on the weights of clock ``timestamp``; update when full.

        The server may scale ``gradient`` in place but does not keep it after returning, so
        a transport can receive the next message into the same buffer. The push ends the pull
        of ``timestamp``, whatever becomes of the gradient.
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
        scale = None if reason else self.policy(tau)
        if scale is not None and not self._correct(gradient, timestamp):
            reason = "non-finite gradient after the correction"
        self.release(timestamp)  # before the update, which keeps a copy of θ only for gradients still out
        if reason:
            return self.reject(reason, tau)
        if scale is None:
            self.dropped_gradients += 1
            return PushResult(False, False, tau, dropped=True)
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

    def _correct(self, gradient: torch.Tensor, timestamp: int) -> bool:
        """Apply the correction to a gradient computed on the weights of ``timestamp``; False if that made it
        non-finite (g⊙g⊙Δ can overflow where g does not)."""
        if self.versions is None:
            return True
        gap = None
        if timestamp != self.clock:
            if self._gap is None:
                self._gap = torch.empty_like(self.weights)
            gap = torch.sub(self.weights, self.versions.copies[timestamp], out=self._gap)
        self.correction.correct(gradient, gap, self.lr, self.effective_momentum)
        return gap is None or math.isfinite(float(gradient.sum()))

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
        if self.versions is not None:
            self.versions.before_update(self.weights, self.clock)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
            group["momentum"] = self.effective_momentum
        self.weights.grad = self._sum
        self.optimizer.step()
        self.weights.grad = None
        self._sum = None
        self._buffered = 0
        self._contributors.clear()
        self.clock += 1

    @property
    def effective_momentum(self) -> float:
        """The momentum of the next update: ``momentum``, less 1 − 1/⟨τ⟩ under --momentum-correction."""
        if not self.momentum_correction:
            return self.momentum
        implicit = max(0.0, 1.0 - 1.0 / self.stats.mean) if self.stats.mean > 0 else 0.0
        return max(0.0, self.momentum - implicit)

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
            "dropped_gradients": self.dropped_gradients,
            "versions": None if self.versions is None else self.versions.state_dict(),
            "correction": self.correction.state_dict(),
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
        self.dropped_gradients = state.get("dropped_gradients", 0)  # absent before issue 13
        if self.versions is not None and state.get("versions") is not None:
            self.versions.load_state_dict(state["versions"])
        if state.get("correction"):
            self.correction.load_state_dict(state["correction"])
