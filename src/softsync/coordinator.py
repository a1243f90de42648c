"""The server side of a run: the parameter server, the data server, who is alive and who computes what.

It knows no transport and no time. An engine reports each event (a learner asks for weights, pushes a
gradient, is lost) and carries out the returned Outcome: send these learners the weights of ``Work.timestamp``
with this mini-batch, tell these to stop, write a checkpoint. Both engines drive it, so a run means the same
thing under sim and dist (docs/design.md §2).

The order of operations on a push, the same under both engines:

1. the protocol checks (the mini-batch and timestamp the learner was given), then the parameter server
   takes the gradient, or rejects or drops it and its mini-batch is handed out again;
2. the data server records the mini-batch; each epoch this ends is closed in order: the last epoch
   flushes a partial buffer, the step schedule moves on, ``end_epoch`` evaluates;
3. the pusher's next pull goes to the gate (hardsync holds it until the round's update is applied,
   --ssp while the pusher is too far ahead of the slowest learner);
4. released learners get the weights of now and the next mini-batch; a learner with nothing left waits
   while a mini-batch of a lost learner may still come back, and is stopped once none can.

The engine carries out the answers before it writes a requested checkpoint, so that the checkpoint
records them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .data import Batch, DataServer
from .protocol import PullGate
from .server import ParameterServer
from .telemetry import Telemetry

# the engine's end of an epoch: (epoch, its mean training loss) -> test loss (it evaluates, it records)
EndEpoch = Callable[[int, float], float]


@dataclass(frozen=True)
class Work:
    """A mini-batch handed to a learner, and the clock of the weights sent with it."""

    batch: Batch
    timestamp: int


@dataclass
class Outcome:
    """What the engine must do after an event."""

    answers: list[tuple[int, Work]] = field(default_factory=list)  # send the current weights and this mini-batch
    stops: list[int] = field(default_factory=list)  # tell these learners the run is over for them
    accepted: bool = False  # the pushed gradient was buffered
    updated: bool = False  # ... and an update was applied
    rejected: str = ""  # why the message was refused ("" if it was not)
    rejected_gradient: bool = False  # ... by the parameter server (else by the protocol checks)
    checkpoint: bool = False  # write a checkpoint, after carrying out the answers


def diverged_at_epoch_end(train_loss: float, test_loss: float) -> bool:
    """The divergence rule at an epoch end: a non-finite training or test loss."""
    return not (math.isfinite(train_loss) and math.isfinite(test_loss))


def diverged_by_rejections(consecutive: int, learners: int) -> bool:
    """The divergence rule while training: this many rejected gradients in a row."""
    return consecutive >= max(10, 2 * learners)


class Coordinator:
    """One run's server side: one method per event, each returning an Outcome.

    ``live`` is the one set of learners still in the run (not lost, not stopped); c is recomputed
    only when a learner is lost, because a stopped learner has nothing left to compute.
    """

    def __init__(
        self,
        server: ParameterServer,
        data: DataServer,
        learners: int,
        end_epoch: EndEpoch,
        checkpoint_every: int = 0,
        ssp: int | None = None,
    ) -> None:
        self.server = server
        self.data = data
        self.learners = learners
        self.end_epoch = end_epoch
        self.checkpoint_every = checkpoint_every
        self.live: set[int] = set(range(learners))
        self.gate = PullGate(server.protocol, self.live, ssp)
        self.in_flight: dict[int, Work] = {}
        self.parked: set[int] = set()  # nothing to hand out now, but a lost learner's mini-batch may come back
        self.learner_failures = 0
        self.consecutive_rejections = 0
        self.loss_sum: dict[int, float] = {}  # epoch -> Σ training loss of its applied gradients
        self.loss_count: dict[int, int] = {}
        self.status = "completed"  # or "diverged"
        self.stopping = False
        self.telemetry = Telemetry(learners)  # per learner: what the protocol decided; the engine adds time

    # -- events ----------------------------------------------------------------------------------
    def pull(self, learner: int) -> Outcome:
        """``learner`` asks for weights (its first request, or one after its push was refused)."""
        outcome = Outcome()
        if self.stopping:
            self._take_back(learner)
            self._answer([learner], outcome)
        elif learner in self.in_flight:
            batch = self.in_flight[learner].batch
            self.reject(learner, f"a pull while computing mini-batch {batch.epoch}:{batch.index}", outcome)
        else:
            self._answer(self.gate.request(learner), outcome)
        return outcome

    def push(
        self, learner: int, gradient: torch.Tensor, timestamp: int, epoch: int, index: int, loss: float
    ) -> Outcome:
        """``learner`` pushes the gradient of mini-batch ``epoch:index`` computed on the weights of ``timestamp``.

        The server may scale ``gradient`` in place and does not keep it.
        """
        outcome = Outcome()
        if self.stopping:
            self._take_back(learner)
            self._answer([learner], outcome)
            return outcome
        work = self.in_flight.get(learner)
        problem = ""
        if work is None:
            problem = "a push without a mini-batch"
        elif (epoch, index) != (work.batch.epoch, work.batch.index):
            problem = f"a push of mini-batch {epoch}:{index}, it was given {work.batch.epoch}:{work.batch.index}"
        elif timestamp != work.timestamp:
            problem = f"a push with timestamp {timestamp}, its weights had timestamp {work.timestamp}"
        if problem:
            self.reject(learner, problem, outcome)
            return outcome
        assert work is not None  # the checks above refuse a push without a mini-batch
        del self.in_flight[learner]  # the server's push ends the pull of its weights
        result = self.server.push(gradient, timestamp, learner)
        outcome.accepted, outcome.updated = result.accepted, result.updated
        if result.accepted:
            self.telemetry.applied(learner, result.staleness)
            self.gate.pushed(learner)
        elif result.dropped:
            self.telemetry.dropped(learner)
            if not self.data.exhausted:
                # another mini-batch for the learner too slow for this one, which goes to the next that asks:
                # given back first, a straggler would take it again and again, and its epoch would never end
                self._answer(self.gate.request(learner), outcome)
                self.data.give_back(work.batch)
            else:  # nothing else is left: redo it
                self.data.give_back(work.batch)
                self._answer(self.gate.request(learner), outcome)
            self._settle(outcome)
            return outcome
        else:
            self.telemetry.rejected(learner)
            outcome.rejected, outcome.rejected_gradient = result.reason, True
            self.data.give_back(work.batch)
            self.consecutive_rejections += 1
            if diverged_by_rejections(self.consecutive_rejections, self.learners):
                self._diverge([learner], outcome)
            else:  # redone at once, within the same hardsync round
                self._answer(self.gate.request(learner, hold=False), outcome)
            return outcome
        self.consecutive_rejections = 0
        self.loss_sum[epoch] = self.loss_sum.get(epoch, 0.0) + loss
        self.loss_count[epoch] = self.loss_count.get(epoch, 0) + 1
        ended = self.data.complete(work.batch)
        for epoch_ended in ended:
            if epoch_ended + 1 == self.data.epochs:
                self.server.apply_update()  # the last epoch wastes no gradient
            self.server.set_epoch(epoch_ended + 1)
            count = self.loss_count.pop(epoch_ended, 0)
            train_loss = self.loss_sum.pop(epoch_ended, 0.0) / count if count else math.nan
            if diverged_at_epoch_end(train_loss, self.end_epoch(epoch_ended, train_loss)):
                self._diverge([learner], outcome)
                return outcome
        every = self.checkpoint_every
        outcome.checkpoint = bool(ended) or (result.updated and every > 0 and self.server.clock % every == 0)
        self._answer(self.gate.request(learner), outcome)
        self._settle(outcome)
        return outcome

    def reject(self, learner: int, problem: str, outcome: Outcome | None = None) -> Outcome:
        """Refuse a message that breaks the protocol: count it, apply nothing, and hand the learner a
        mini-batch again (the one it was computing, first)."""
        outcome = outcome if outcome is not None else Outcome()
        outcome.rejected = problem
        self.server.reject(problem)
        self.telemetry.rejected(learner)
        work = self._take_back(learner)
        if work is not None:
            self.data.give_back(work.batch)
        self._answer(self.gate.request(learner, hold=False), outcome)
        return outcome

    def lose(self, learner: int) -> Outcome:
        """``learner`` is gone (crashed, hung): its mini-batch goes to another and no update waits for it."""
        outcome = Outcome()
        if learner not in self.live:
            return outcome
        self.live.discard(learner)
        self.parked.discard(learner)
        self.learner_failures += 1
        self.telemetry.lose(learner)
        work = self._take_back(learner)
        if work is not None:
            self.data.give_back(work.batch)
        if not self.live:
            return outcome
        self.server.set_learners(len(self.live))  # c from the learners left; applies a now complete round
        self._answer(self.gate.forget(learner), outcome)
        self._settle(outcome)
        return outcome

    def start(self) -> Outcome:
        """Every learner with nothing to do asks for weights, in learner order: the start of a run, or of a
        resumed run (a finished run given more epochs has every learner idle)."""
        outcome = Outcome()
        for learner in sorted(self.live - set(self.in_flight) - self.gate.waiting - self.parked):
            if learner in self.live:
                self._answer(self.gate.request(learner), outcome)
        if self.parked and self.data.reissue:
            self._settle(outcome)
        return outcome

    def restart_learners(self) -> None:
        """The learners are new processes (a resumed dist run): what they were computing is lost.

        Their mini-batches are handed out again; every learner the run starts is live, and c counts
        them all. A hardsync round cut by the checkpoint is applied with the gradients it holds, since
        its contributors cannot tell their new process apart from a second push in the round.
        --ssp counts pushes from here on: a learner lost before is not waited for until it catches up.
        """
        for learner in sorted(self.in_flight):
            self.data.give_back(self.in_flight[learner].batch)
            self._take_back(learner)
        self.gate.waiting.clear()
        self.gate.restart()
        self.parked.clear()
        self.live.clear()
        self.live.update(range(self.learners))
        self.telemetry.restart()
        self.server.set_learners(self.learners)
        if self.server.protocol.blocking:
            self.server.apply_update()

    @property
    def finished(self) -> bool:
        """Every learner has been stopped or lost."""
        return not self.live

    def _take_back(self, learner: int) -> Work | None:
        """``learner`` will not push a gradient for its work: the server's pull of those weights ends."""
        work = self.in_flight.pop(learner, None)
        if work is not None:
            self.server.release(work.timestamp)
        return work

    # -- answers ----------------------------------------------------------------------------------
    def _answer(self, learners: list[int], outcome: Outcome) -> None:
        """Give each learner the next mini-batch, park it, or stop it; stopping may release others."""
        queue = list(learners)
        while queue:
            learner = queue.pop(0)
            if learner not in self.live:  # already stopped (a release can reach it twice) or lost
                continue
            batch = None if self.stopping else self.data.take()
            if batch is not None:
                work = Work(batch, self.server.pull()[1])
                self.in_flight[learner] = work
                outcome.answers.append((learner, work))
            elif self.in_flight and not self.stopping:  # one may come back, if its learner is lost
                self.parked.add(learner)
            else:
                queue += self._stop(learner, outcome)

    def _stop(self, learner: int, outcome: Outcome) -> list[int]:
        outcome.stops.append(learner)
        self.live.discard(learner)
        self.parked.discard(learner)
        return self.gate.forget(learner)

    def _settle(self, outcome: Outcome) -> None:
        """Give parked learners the mini-batches that came back; stop them once none can come back."""
        while self.parked and self.data.reissue:
            learner = min(self.parked)
            self.parked.discard(learner)
            self._answer([learner], outcome)
        if self.parked and not self.in_flight:
            parked, self.parked = sorted(self.parked), set()
            self._answer(parked, outcome)

    def _diverge(self, learners: list[int], outcome: Outcome) -> None:
        """The run diverged: stop every learner as it next asks (those waiting and ``learners`` now)."""
        self.status = "diverged"
        self.stopping = True
        waiting = sorted(self.gate.waiting | self.parked | set(learners))
        self.gate.waiting.clear()
        self.parked.clear()
        self._answer(waiting, outcome)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Who computes what, who waits, and the counts that outlive a resume (learner_failures)."""
        return {
            "in_flight": {
                learner: {"epoch": w.batch.epoch, "index": w.batch.index, "timestamp": w.timestamp}
                for learner, w in self.in_flight.items()
            },
            "waiting": sorted(self.gate.waiting),
            "parked": sorted(self.parked),
            "learner_failures": self.learner_failures,
            "consecutive_rejections": self.consecutive_rejections,
            "loss_sum": dict(self.loss_sum),
            "loss_count": dict(self.loss_count),
            "telemetry": self.telemetry.state_dict(),
            "pushes": self.gate.pushes.copy(),
            "pushes_ahead_max": self.gate.ahead_max,
        }

    def load_state_dict(self, state: dict) -> None:
        self.in_flight = {
            int(learner): Work(self.data.batch(w["epoch"], w["index"]), w["timestamp"])
            for learner, w in state["in_flight"].items()
        }
        self.gate.waiting = set(state["waiting"])
        self.parked = set(state["parked"])
        self.learner_failures = state["learner_failures"]
        self.consecutive_rejections = state["consecutive_rejections"]
        self.loss_sum = dict(state["loss_sum"])
        self.loss_count = dict(state["loss_count"])
        if "pushes" in state:  # absent before --ssp
            self.gate.pushes = list(state["pushes"])
            self.gate.ahead_max = state["pushes_ahead_max"]
        if "telemetry" in state:  # absent from checkpoints written before per-learner telemetry
            self.telemetry.load_state_dict(state["telemetry"])
