"""Synchronization protocols of Zhang et al. (IJCAI 2016): hardsync, n-softsync and async.

A protocol decides how many pushed gradients the parameter server collects before it
applies one update (c) and whether a learner must wait for that update before pulling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError

PROTOCOLS_HELP = "hardsync, async or N-softsync with 1 <= N <= learners (e.g. 1-softsync)"


class ProtocolError(ConfigError):
    """A protocol name or parameter that does not describe a valid protocol."""


def gradients_per_update(learners: int, n: int) -> int:
    """c = max(1, floor(λ / n)): gradients the server collects per update under n-softsync."""
    return max(1, learners // n)


@dataclass(frozen=True)
class Protocol:
    """A parsed protocol. ``n`` is the softsync parameter (hardsync: 1, async: λ)."""

    name: str  # "hardsync", "softsync" or "async"
    n: int

    @property
    def blocking(self) -> bool:
        """Hardsync learners wait for the round's update before they pull again (τ = 0)."""
        return self.name == "hardsync"

    def gradients_per_update(self, live_learners: int) -> int:
        """c for the learners alive now: hardsync waits for every live learner."""
        if self.blocking:
            return max(1, live_learners)
        return gradients_per_update(live_learners, self.n)

    def __str__(self) -> str:
        return "hardsync" if self.name == "hardsync" else "async" if self.name == "async" else f"{self.n}-softsync"


def parse_protocol(text: str, learners: int) -> Protocol:
    """Parse ``hardsync``, ``async`` or ``N-softsync`` for λ = ``learners``.

    Raises ProtocolError with a one-line message naming the value and what is allowed.
    """
    value = str(text).strip().lower()
    if value == "hardsync":
        return Protocol("hardsync", 1)
    if value == "async":
        return Protocol("async", learners)
    match = re.fullmatch(r"(-?\d+)-softsync", value)
    if not match:
        raise ProtocolError(f"unknown protocol {text!r}: use {PROTOCOLS_HELP}")
    n = int(match.group(1))
    if n < 1 or n > learners:
        raise ProtocolError(f"protocol {text!r} needs 1 <= n <= learners ({learners}): got n = {n}")
    return Protocol("softsync", n)


class PullGate:
    """When the server answers a learner's pull.

    n-softsync and async answer at once. Hardsync holds pulls until every live learner is
    waiting (the round's update is then applied) and answers them together in learner order,
    which is what gives learner l the mini-batch rλ + l of round r. ``live`` is the coordinator's
    set of live learners, read here, never changed.

    ``ssp`` (bounded staleness, Ho et al. 2013) holds the pull of a learner that has pushed more
    than ``ssp`` gradients more than the slowest live learner, until that one catches up; waiting
    learners are answered in learner order. ``ssp = 0`` moves the learners in rounds.
    """

    def __init__(self, protocol: Protocol, live: set[int], ssp: int | None = None) -> None:
        self.blocking = protocol.blocking
        self.live = live
        self.ssp = ssp
        self.waiting: set[int] = set()
        self.pushes = [0] * (max(live) + 1 if live else 0)  # gradients applied, per learner
        self.ahead_max = 0  # under ssp: the most pushes a live learner was ahead of the slowest, at any push

    def request(self, learner: int, hold: bool = True) -> list[int]:
        """Learner ``learner`` asks for weights; returns the learners to answer now.

        ``hold=False`` answers at once even under hardsync (a rejected gradient is redone
        within the same round).
        """
        if not hold or not (self.blocking or self.ssp is not None):
            return [learner]
        self.waiting.add(learner)
        return self._release()

    def pushed(self, learner: int) -> None:
        """``learner``'s gradient was applied (a learner that catches up releases others at its next request)."""
        self.pushes[learner] += 1
        if self.ssp is not None and self.live:  # O(λ): measured only where it is promised
            counts = [self.pushes[live] for live in self.live]
            self.ahead_max = max(self.ahead_max, max(counts) - min(counts))

    def forget(self, learner: int) -> list[int]:
        """A learner has left the live set: the others may no longer need to wait for it."""
        self.waiting.discard(learner)
        return self._release()

    def restart(self) -> None:
        """Count pushes afresh (new learner processes)."""
        self.pushes = [0] * len(self.pushes)

    def _release(self) -> list[int]:
        if self.blocking:
            if self.live and self.waiting >= self.live:
                released = sorted(self.waiting)
                self.waiting.clear()
                return released
            return []
        if self.ssp is None or not self.live:
            released = sorted(self.waiting)
        else:
            slowest = min(self.pushes[learner] for learner in self.live)
            released = sorted(l for l in self.waiting if self.pushes[l] - slowest <= self.ssp)
        self.waiting.difference_update(released)
        return released
