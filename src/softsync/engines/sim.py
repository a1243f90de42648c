"""Deterministic discrete-event engine: λ learners and one parameter server in virtual time.

Each learner loops pull → compute → push. Step times come from a seeded model: a compute
time (base × jitter ÷ the learner's speed factor), the server's own work (an update, and the copy
of θ into each answer, each --server-*-time seconds per parameter), which queues on the server, and
transfers that queue on the server's link (bytes ÷ bandwidth + latency): where a parameter server
saturates. With --servers S the parameter vector is split over S shards, each with its own link and
its own processor working in parallel on its 1/S of every message, update and answer: the same
arithmetic as one server (hardsync with S shards computes what one computes, and so does async, as
every shard sees the pushes in the same order), on S times the link and the processor.

A pull is instantaneous in virtual time, so a learner's gradient is computed the moment the
coordinator answers it, on the server's weights of that moment (the weights it pulled), and held
until its push event: the same result as keeping a snapshot per learner, without copying the
weights λ times. Events at equal times run in the order they were scheduled, so a seed fixes the
run exactly.

With --device cuda the server and evaluation stay on the CPU, and one learner on the GPU (a copy
of the model) computes every learner's gradient: the server's weights are copied in for each
gradient and the gradient copied back. On the CPU that learner is the server's own (its model
lives in the server's weights): nothing is copied.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import random
import time
from dataclasses import dataclass, field

import torch

from .. import board
from ..build import Components, Given, batches_per_epoch, build_components, load_task
from ..checkpoint import Checkpointer
from ..config import TrainConfig
from ..coordinator import Outcome, Work
from ..data import batch_seed
from ..datasets import batcher
from ..errors import first_line
from ..learner import Learner, learner_device, require_device
from ..rundir import open_run_dir

PUSH_SEND, PUSH_ARRIVE = 1, 2  # a learner's gradient is computed and leaves / reaches the server


@dataclass
class StepTimeModel:
    """Seeded virtual step times of every learner."""

    step_time: float
    jitter: float
    speeds: tuple[float, ...]
    bandwidth: float  # bytes/s of each shard's link
    latency: float
    message_bytes: int  # of the whole model; the server's work is priced per float32 parameter of it
    seed: int
    servers: int = 1
    update_time: float = 0.0  # the server's seconds per parameter of an update
    answer_time: float = 0.0  # ... of answering a pull (copying θ into the message)
    rngs: list[random.Random] = field(init=False)

    def __post_init__(self) -> None:
        # one stream per learner: adding a learner does not change the others' times
        self.rngs = [random.Random(f"softsync-{self.seed}-{learner}") for learner in range(len(self.speeds))]

    @classmethod
    def from_config(cls, config: TrainConfig, weights: torch.Tensor) -> StepTimeModel:
        """The --step-time, --step-jitter, --learner-speeds, --bandwidth, --latency, --message-bytes, --servers,
        --server-update-time and --server-answer-time of a run."""
        return cls(
            step_time=config.step_time,
            jitter=config.step_jitter,
            speeds=config.learner_speeds or (1.0,) * config.learners,
            bandwidth=config.bandwidth,
            latency=config.latency,
            message_bytes=config.message_bytes or weights.numel() * weights.element_size(),
            seed=config.seed,
            servers=config.servers,
            update_time=config.server_update_time,
            answer_time=config.server_answer_time,
        )

    def compute_time(self, learner: int) -> float:
        noise = 1.0 + self.jitter * self.rngs[learner].gauss(0.0, 1.0)
        return self.step_time * max(0.05, noise) / self.speeds[learner]

    @property
    def transfer_time(self) -> float:
        """One message on the S links in parallel, each carrying its shard's slice."""
        return self.message_bytes / (self.bandwidth * self.servers)

    @property
    def update_seconds(self) -> float:
        return self.update_time * (self.message_bytes / 4) / self.servers

    @property
    def answer_seconds(self) -> float:
        return self.answer_time * (self.message_bytes / 4) / self.servers


@dataclass
class Held:
    """A gradient computed at its learner's pull, held until its push reaches the server."""

    gradient: torch.Tensor
    loss: float


class SimEngine:
    """Runs the learner loop on the coordinator in virtual time."""

    def __init__(self, parts: Components, times: StepTimeModel) -> None:
        self.server, self.recorder, self.learner = parts.server, parts.recorder, parts.learner
        if parts.config.device != "cpu":
            device = learner_device(parts.config.device, 0)
            self.learner = Learner(copy.deepcopy(parts.task.model), parts.task.loss, device=device)
        self.evaluated_model = parts.learner.model  # evaluation's (on the CPU)
        self.batch = batcher(parts.task.data.train)
        self.seed = parts.config.seed
        self.times = times
        self.coordinator = parts.coordinator(self.end_epoch)
        self.checkpointer: Checkpointer | None = None
        self.now = 0.0
        self.link_free = 0.0  # when the server's link finishes its queued transfers
        self.server_free = 0.0  # when the server finishes its queued updates and answers
        self.events: list[tuple[float, int, int, int]] = []  # (time, sequence, kind, learner)
        self.sequence = 0
        self.held: dict[int, Held] = {}
        self.idle_since: dict[int, float] = {}  # learner -> when it sent its last push (or the run began)

    def schedule(self, time: float, kind: int, learner: int) -> None:
        heapq.heappush(self.events, (time, self.sequence, kind, learner))
        self.sequence += 1

    def transfer(self, ready: float) -> float:
        """Queue one message, ready to leave at ``ready``, on the server's link; returns when it has arrived."""
        start = max(ready, self.link_free)
        self.link_free = start + self.times.transfer_time
        return self.link_free + self.times.latency

    def serve(self, seconds: float) -> float:
        """Queue ``seconds`` of the server's work (0: wait for what is queued); returns when it is done."""
        self.server_free = max(self.now, self.server_free) + seconds
        return self.server_free

    def run(self) -> str:
        """Run to the last epoch (or divergence); returns "completed" or "diverged"."""
        self.report_status("running")
        self.carry_out(self.coordinator.start())
        handled = 0
        while self.events and not self.coordinator.stopping:
            handled += 1
            if handled % 256 == 0 and time.monotonic() >= self.recorder.status_due:
                self.report_status("running")
            self.now, _, kind, learner = heapq.heappop(self.events)
            if kind == PUSH_SEND:
                self.idle_since[learner] = self.now
                self.schedule(self.transfer(self.now), PUSH_ARRIVE, learner)
            else:
                self.push(learner)
        return self.coordinator.status

    def push(self, learner: int) -> None:
        self.coordinator.telemetry.heard(learner, self.now)
        held = self.held.pop(learner)
        work = self.coordinator.in_flight[learner]
        clock = self.server.clock
        outcome = self.coordinator.push(
            learner, held.gradient, work.timestamp, work.batch.epoch, work.batch.index, held.loss
        )
        if outcome.accepted:
            self.recorder.gradient_applied(self.server, self.now)
        self.serve((self.server.clock - clock) * self.times.update_seconds)  # before the answers it delays
        self.carry_out(outcome)

    def carry_out(self, outcome: Outcome) -> None:
        """Answered learners compute now; then the checkpoint, which holds their gradients. A stopped learner has
        nothing more to do."""
        for learner, work in outcome.answers:
            self.compute(learner, work)
        if outcome.checkpoint and self.checkpointer is not None:
            self.checkpointer.save(self.coordinator.data.ended)

    def compute(self, learner: int, work: Work) -> None:
        batch = work.batch
        inputs, targets = self.batch(batch.samples, batch.epoch)
        seed = batch_seed(self.seed, batch.epoch, batch.index)
        gradient, loss = self.learner.gradient(self.server.weights, inputs, targets, seed)
        self.held[learner] = Held(gradient.clone(), loss)
        compute_start = self.transfer(self.serve(self.times.answer_seconds))  # the weights reach the learner
        compute_time = self.times.compute_time(learner)
        waited = compute_start - self.idle_since.get(learner, self.now)  # for the link, the server, the round
        self.coordinator.telemetry.timed(learner, compute_time, waited)
        self.schedule(compute_start + compute_time, PUSH_SEND, learner)

    def report_status(self, state: str, error: str = "") -> None:
        """status.json, in virtual time (a learner's last message age is virtual seconds too)."""
        coordinator = self.coordinator
        self.recorder.status(
            state,
            self.server,
            coordinator.telemetry,
            coordinator.live,
            coordinator.data.ended,
            self.now,
            virtual_s=self.now,
            error=error,
        )

    def end_epoch(self, epoch: int, train_loss: float) -> float:
        if self.learner.model is not self.evaluated_model:
            # the weights are the server's; a model's buffers (batch norm's running statistics) are the learner's,
            # which on the CPU is the evaluated model itself
            with torch.no_grad():
                for mine, its in zip(self.evaluated_model.buffers(), self.learner.model.buffers(), strict=True):
                    mine.copy_(its)
        return self.recorder.epoch_end(epoch, train_loss, self.server, self.coordinator.telemetry, virtual_s=self.now)

    def state_dict(self) -> dict:
        """The simulation's own state (time, queued events, held gradients, random streams)."""
        return {
            "now": self.now,
            "link_free": self.link_free,
            "server_free": self.server_free,
            "events": list(self.events),
            "sequence": self.sequence,
            "held": {learner: {"gradient": h.gradient.clone(), "loss": h.loss} for learner, h in self.held.items()},
            "rngs": [rng.getstate() for rng in self.times.rngs],
            "idle_since": dict(self.idle_since),
        }

    def load_state_dict(self, state: dict) -> None:
        self.now = state["now"]
        self.link_free = state["link_free"]
        self.server_free = state.get("server_free", 0.0)  # absent before --server-*-time
        self.events = [tuple(event) for event in state["events"]]
        heapq.heapify(self.events)
        self.sequence = state["sequence"]
        self.held = {int(learner): Held(h["gradient"], h["loss"]) for learner, h in state["held"].items()}
        for rng, rng_state in zip(self.times.rngs, state["rngs"], strict=True):
            rng.setstate(rng_state)
        self.idle_since = {int(learner): t for learner, t in state.get("idle_since", {}).items()}


def run_sim(config: TrainConfig, checkpoint: dict | None, given: Given | None = None) -> dict:
    """`softsync train --engine sim`: the whole run in this process; returns the summary.

    ``given``: the Python objects softsync.train was given in place of the model, data or loss.
    """
    require_device(config.device)  # no GPU: exit 2 before anything is loaded or written
    torch.set_num_threads(1)  # the sim runs one gradient at a time; one thread is the fair unit
    board.require(config)
    task = load_task(config, given)
    batches_per_epoch(config, len(task.data.train))  # type: ignore[arg-type]  # before the run directory exists
    config, out, lock = open_run_dir(config, checkpoint)
    # gradients seed torch's RNG (batch_seed), the CPU's and every GPU's (torch.manual_seed): not the caller's
    gpus = list(range(torch.cuda.device_count())) if config.device == "cuda" else []
    with lock, torch.random.fork_rng(devices=gpus):
        parts = build_components(config, out, task)
        engine = SimEngine(parts, StepTimeModel.from_config(config, parts.learner.weights))
        checkpointer = parts.checkpointer(engine.coordinator, engine)
        if checkpoint is not None:
            checkpointer.restore(checkpoint)
            parts.recorder.resume(parts.server.clock)
        engine.checkpointer = checkpointer
        try:
            status = engine.run()
        except BaseException as error:
            with contextlib.suppress(Exception):  # the error being reported matters more than the event file
                parts.recorder.close()
            interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
            engine.report_status("interrupted" if interrupted else "failed", "" if interrupted else first_line(error))
            raise
        summary = parts.recorder.finish(engine.coordinator, status, virtual_s=engine.now)
        engine.report_status(status)
        return summary
