"""Deterministic discrete-event engine: λ learners and one parameter server in virtual time.

Each learner loops pull → compute → push. Step times come from a seeded model: a compute
time (base × jitter ÷ the learner's speed factor) and transfers that queue on the server's
single link (bytes ÷ bandwidth + latency), which is where a parameter server saturates.

A pull is instantaneous in virtual time, so the learner's gradient is computed right at its
pull, on the server's weights of that moment (the weights it pulled), and held until its push
event: the same result as keeping a snapshot per learner, without copying the weights λ times.
Events at equal times run in the order they were scheduled, so a seed fixes the run exactly.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import torch

from ..data import Batch, DataServer
from ..learner import Learner
from ..protocol import PullGate
from ..server import ParameterServer
from . import checkpoint_due, end_epoch, save_checkpoint

PULL, PUSH_SEND, PUSH_ARRIVE = 0, 1, 2


@dataclass
class StepTimeModel:
    """Seeded virtual step times of every learner."""

    step_time: float
    jitter: float
    speeds: tuple[float, ...]
    bandwidth: float  # bytes/s of the server's link
    latency: float
    message_bytes: int
    seed: int
    rngs: list[random.Random] = field(init=False)

    def __post_init__(self) -> None:
        # one stream per learner: adding a learner does not change the others' times
        self.rngs = [random.Random(f"softsync-{self.seed}-{learner}") for learner in range(len(self.speeds))]

    def compute_time(self, learner: int) -> float:
        noise = 1.0 + self.jitter * self.rngs[learner].gauss(0.0, 1.0)
        return self.step_time * max(0.05, noise) / self.speeds[learner]

    @property
    def transfer_time(self) -> float:
        return self.message_bytes / self.bandwidth


@dataclass
class InFlight:
    batch: Batch
    timestamp: int
    gradient: torch.Tensor
    loss: float


class SimEngine:
    """Runs the learner loop of DESIGN §1 on one ParameterServer in virtual time."""

    def __init__(self, server: ParameterServer, learner: Learner, data: DataServer, train_x: torch.Tensor, train_y: torch.Tensor, times: StepTimeModel, recorder, learners: int, checkpoint_every: int = 0) -> None:
        self.server = server
        self.learner = learner
        self.data = data
        self.train_x, self.train_y = train_x, train_y
        self.times = times
        self.recorder = recorder
        self.learners = learners
        self.checkpoint_every = checkpoint_every
        self.now = 0.0
        self.link_free = 0.0  # when the server's link finishes its queued transfers
        self.events: list[tuple[float, int, int, int]] = []  # (time, sequence, kind, learner)
        self.sequence = 0
        self.in_flight: dict[int, InFlight] = {}
        self.gate = PullGate(server.protocol, learners)
        self.finished = False
        self.diverged = False

    def schedule(self, time: float, kind: int, learner: int) -> None:
        heapq.heappush(self.events, (time, self.sequence, kind, learner))
        self.sequence += 1

    def transfer(self) -> float:
        """Queue one message on the server's link; returns when it has arrived."""
        start = max(self.now, self.link_free)
        self.link_free = start + self.times.transfer_time
        return self.link_free + self.times.latency

    def run(self) -> str:
        """Run to the last epoch (or divergence); returns "completed" or "diverged"."""
        if not self.events:  # a new run, or a finished one given more epochs
            for learner in range(self.learners):
                self.schedule(self.now, PULL, learner)
        while self.events and not self.finished:
            self.now, _, kind, learner = heapq.heappop(self.events)
            if kind == PULL:
                self.pull(learner)
            elif kind == PUSH_SEND:
                self.schedule(self.transfer(), PUSH_ARRIVE, learner)
            else:
                self.push(learner)
        return "diverged" if self.diverged else "completed"

    def pull(self, learner: int) -> None:
        weights, timestamp = self.server.pull()
        batch = self.data.take()
        if batch is None:
            return  # every epoch handed out: this learner is done
        gradient, loss = self.learner.gradient(weights, self.train_x[batch.samples], self.train_y[batch.samples])
        self.in_flight[learner] = InFlight(batch, timestamp, gradient.clone(), loss)
        compute_start = self.transfer()
        self.schedule(compute_start + self.times.compute_time(learner), PUSH_SEND, learner)

    def push(self, learner: int) -> None:
        work = self.in_flight.pop(learner)
        result = self.server.push(work.gradient, work.timestamp, learner)
        if self.recorder.gradient(work.batch.epoch, work.loss, result.accepted, self.learners):
            self.diverged = self.finished = True
            return
        if not result.accepted:
            self.data.give_back(work.batch)
        for answered in self.gate.request(learner, hold=result.accepted):
            self.schedule(self.now, PULL, answered)
        # last, so that the epoch's checkpoint holds this learner's next pull
        for epoch in self.data.complete(work.batch) if result.accepted else []:
            if end_epoch(self.server, self.data, self.recorder, epoch, self.state_dict(), self.now):
                self.diverged = self.finished = True
                return
        if checkpoint_due(self.server, self.checkpoint_every, result.updated):
            save_checkpoint(self.server, self.data, self.recorder, self.state_dict())

    def state_dict(self) -> dict:
        """The simulation's own state (time, queued events, held gradients, random streams)."""
        return {
            "now": self.now,
            "link_free": self.link_free,
            "events": list(self.events),
            "sequence": self.sequence,
            "in_flight": {
                learner: {"epoch": w.batch.epoch, "index": w.batch.index, "samples": w.batch.samples,
                          "timestamp": w.timestamp, "gradient": w.gradient.clone(), "loss": w.loss}
                for learner, w in self.in_flight.items()
            },
            "waiting": sorted(self.gate.waiting),
            "rngs": [rng.getstate() for rng in self.times.rngs],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; with no queued events (a finished run), learners start afresh."""
        self.now = state["now"]
        self.link_free = state["link_free"]
        self.events = [tuple(event) for event in state["events"]]
        heapq.heapify(self.events)
        self.sequence = state["sequence"]
        self.in_flight = {
            int(learner): InFlight(Batch(w["epoch"], w["index"], w["samples"]), w["timestamp"], w["gradient"], w["loss"])
            for learner, w in state["in_flight"].items()
        }
        self.gate.waiting = set(state["waiting"])
        for rng, rng_state in zip(self.times.rngs, state["rngs"]):
            rng.setstate(rng_state)
