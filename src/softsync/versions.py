"""The weights as they were at every clock some in-flight gradient was computed on.

A correction of a stale gradient needs θ_{t−τ}, the exact weights its learner computed on. The
server hands out the weights of clock t (``hold``) and takes back each gradient (``release``);
a clock's weights are kept while a gradient computed on them may still arrive.

Copies are made on write: θ changes only at an update, so the weights of the current clock are
copied just before an update, and only if a gradient computed on them is still out. Under hardsync
every gradient of a round is back before its update: no copy is ever made. Memory is at most
(distinct clocks in flight) × the model's size; ``peak`` counts the copies held at once.
"""

from __future__ import annotations

import torch


class WeightVersions:
    """Reference-counted copies of θ, by clock."""

    def __init__(self) -> None:
        self.holders: dict[int, int] = {}  # clock -> gradients out that were computed on its weights
        self.copies: dict[int, torch.Tensor] = {}  # clock -> θ of that clock, for clocks older than now
        self.peak = 0  # most copies held at once
        self.spare: list[torch.Tensor] = []  # freed copies, reused: no allocation per update

    def hold(self, clock: int) -> None:
        """A learner was given the weights of ``clock``."""
        self.holders[clock] = self.holders.get(clock, 0) + 1

    def release(self, clock: int) -> None:
        """The gradient computed on the weights of ``clock`` has arrived, or will never arrive."""
        left = self.holders.get(clock, 0) - 1
        if left > 0:
            self.holders[clock] = left
            return
        self.holders.pop(clock, None)
        copy = self.copies.pop(clock, None)
        if copy is not None:
            self.spare.append(copy)

    def before_update(self, weights: torch.Tensor, clock: int) -> None:
        """θ of ``clock`` is about to change: keep a copy if a gradient computed on it is still out."""
        if clock in self.holders and clock not in self.copies:
            copy = self.spare.pop() if self.spare else torch.empty_like(weights)
            self.copies[clock] = copy.copy_(weights)
            self.peak = max(self.peak, len(self.copies))

    def state_dict(self) -> dict:
        return {
            "holders": dict(self.holders),
            "copies": {clock: copy.clone() for clock, copy in self.copies.items()},
            "peak": self.peak,
        }

    def load_state_dict(self, state: dict) -> None:
        self.holders = {int(clock): count for clock, count in state["holders"].items()}
        self.copies = {int(clock): copy.clone() for clock, copy in state["copies"].items()}
        self.peak = state["peak"]
        self.spare = []
