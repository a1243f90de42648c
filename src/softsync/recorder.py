"""The Recorder turns a run's events (a gradient arrived, an epoch ended, the run ended) into
metrics.jsonl, summary.json, the progress bar and, with --tensorboard, TensorBoard event files (board.py),
so that both engines write the same outputs.

It records; it decides nothing (the coordinator holds the divergence rule, the checkpointer the checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .board import Board
from .coordinator import Coordinator
from .rundir import METRICS, STATUS, SUMMARY, atomic_write_bytes
from .server import ParameterServer
from .telemetry import LearnerCounts, Telemetry

STATUS_EVERY_S = 2.0  # how often a running run refreshes status.json (wall seconds)
NEVER = sys.maxsize  # the clock of the next train/* scalars without a board: no run gets there


def json_number(value: float | None) -> float | None:
    """A float for a JSON file: non-finite values (a diverged loss) become null, never `Infinity`."""
    return value if value is not None and math.isfinite(value) else None


class Recorder:
    """Per-epoch metrics, the progress bar and the final summary of one run."""

    def __init__(
        self,
        out: Path,
        config: Any,
        evaluate: Callable[[], tuple[float, float | None]],
        total_gradients: int,
        quiet: bool = False,
        board: Board | None = None,
    ) -> None:
        self.out = out
        self.config = config
        self.evaluate = evaluate
        self.started = time.perf_counter()
        self.wall_offset = 0.0  # wall time of earlier sessions of a resumed run
        self.epoch_end_s = 0.0  # time spent evaluating and checkpointing: not training
        self.last_test_error: float | None = None  # None also when the model does not classify
        self.last_test_loss: float | None = None
        self.staleness_seen = (0, 0)  # (count, Σ τ) at the previous epoch end
        self.learners_seen: list[LearnerCounts] | None = None  # per-learner counts at the previous epoch end
        self.training_seen = 0.0  # training seconds (virtual under sim) at the previous epoch end
        self.status_seen = (0.0, 0, 0, 0)  # (training s, gradients, staleness count, Σ τ) at the last status
        self.status_due = 0.0  # time.monotonic() of the next status refresh
        self.progress = tqdm(total=total_gradients, unit="grad", disable=quiet, dynamic_ncols=True, leave=False)
        self.pending_progress = 0
        # TensorBoard (--tensorboard): train/* every --log-every updates, over the interval since the last
        self.board = board
        self.board_due = config.log_every if board is not None else NEVER  # the clock of the next train/* scalars
        self.board_seen = (0.0, 0, 0, 0)  # (training s, gradients, staleness count, Σ τ) at the last train/* scalars
        self.board_histogram: dict[int, int] = {}  # the server's staleness histogram at the previous epoch end

    def start_clock(self) -> None:
        """Training starts now (the dist server calls this on the first message: process start-up is not training)."""
        self.started = time.perf_counter()

    @property
    def wall_s(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def gradient_applied(self, server: ParameterServer, virtual_s: float | None = None) -> None:
        """One more gradient applied: the progress bar moves (every 64) and, every --log-every updates, the train/*
        scalars go to TensorBoard. Called once per gradient: two integer comparisons unless something is due."""
        self.pending_progress += 1
        if self.pending_progress >= 64:
            self.progress.update(self.pending_progress)
            self.pending_progress = 0
        if server.clock >= self.board_due:
            self.board_training(server, virtual_s)

    def board_training(self, server: ParameterServer, virtual_s: float | None) -> None:
        """train/samples_per_s and train/staleness_mean over the updates since the last ones, train/rejected_gradients
        and train/dropped_gradients (since the run began), at the server's clock."""
        assert self.board is not None  # without one, board_due is never reached
        training = self.training_s(virtual_s)
        count, total = staleness_totals(server.stats.histogram)
        seen_training, seen_gradients, seen_count, seen_total = self.board_seen
        interval, new = training - seen_training, count - seen_count
        samples = (server.accepted_gradients - seen_gradients) * self.config.batch_size
        scalars = {
            "train/samples_per_s": samples / interval if interval > 0 else 0.0,
            "train/staleness_mean": (total - seen_total) / new if new else 0.0,
            "train/rejected_gradients": server.rejected_gradients,
            "train/dropped_gradients": server.dropped_gradients,
        }
        self.board.scalars(scalars, server.clock, virtual_s if virtual_s is not None else self.wall_s)
        self.board_seen = (training, server.accepted_gradients, count, total)
        self.board_due = (server.clock // self.config.log_every + 1) * self.config.log_every

    def board_epoch(self, record: dict, server: ParameterServer, telemetry: Telemetry, walltime: float) -> None:
        """An epoch's record as TensorBoard scalars, and the staleness histogram of its gradients; flushed."""
        assert self.board is not None
        scalars = {
            "epoch/test_loss": record["test_loss"],
            "epoch/test_error": record["test_error"],
            "epoch/train_loss": record["train_loss"],
            "epoch/lr": record["lr"],
        }
        for row in record["learners"]:  # a lost learner's scalars stop after the epoch it was lost in
            learner = row["learner"]
            if learner not in telemetry.lost or row["gradients"]:
                for name in ("samples_per_s", "staleness_mean", "compute_fraction"):
                    scalars[f"learner/{learner}/{name}"] = row[name]
        # null in metrics.jsonl: a model that does not classify (test_error), a diverged loss
        self.board.scalars({tag: value for tag, value in scalars.items() if value is not None}, server.clock, walltime)
        histogram, seen = server.stats.histogram, self.board_histogram
        epoch = {tau: count - seen.get(tau, 0) for tau, count in histogram.items()}
        self.board.counts("epoch/staleness", epoch, server.clock, walltime)
        self.board_histogram = dict(histogram)
        self.board.flush()

    def close(self) -> None:
        """Close the TensorBoard event file (at the end of the run, or when it fails): it is complete on disk."""
        if self.board is not None:
            self.board.close()

    def resume(self, clock: int) -> None:
        """The run continues from a checkpoint at update ``clock`` (after load_state_dict): TensorBoard drops what an
        earlier session wrote after it (board.Board.resume)."""
        if self.board is not None:
            self.board.resume(clock)

    def training_s(self, virtual_s: float | None) -> float:
        """Seconds of training so far: virtual under sim; under dist wall time without the epoch ends."""
        return virtual_s if virtual_s is not None else self.wall_s - self.epoch_end_s

    def epoch_end(
        self,
        epoch: int,
        train_loss: float,
        server: ParameterServer,
        telemetry: Telemetry,
        virtual_s: float | None = None,
    ) -> float:
        """Evaluate and append the epoch's record to metrics.jsonl; returns the test loss."""
        training = self.training_s(virtual_s)
        paused = time.perf_counter()
        test_loss, test_error = self.evaluate()
        histogram = server.stats.histogram
        seen_count = sum(histogram.values())
        seen_sum = sum(t * k for t, k in histogram.items())
        new = seen_count - self.staleness_seen[0]
        staleness_mean = (seen_sum - self.staleness_seen[1]) / new if new else 0.0
        self.staleness_seen = (seen_count, seen_sum)
        record = {
            "epoch": epoch + 1,
            "updates": server.clock,
            "gradients": server.accepted_gradients,
            "samples": server.accepted_gradients * self.config.batch_size,
            "wall_s": round(self.wall_s, 4),
            "lr": server.lr,
            "train_loss": json_number(train_loss),
            "test_loss": json_number(test_loss),
            "test_error": json_number(test_error),
            "staleness_mean": staleness_mean,
            "learners": telemetry.rows(training - self.training_seen, self.config.batch_size, self.learners_seen),
        }
        self.learners_seen, self.training_seen = telemetry.snapshot(), training
        if virtual_s is not None:
            record["virtual_s"] = json_number(virtual_s)
        with open(self.out / METRICS, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.board is not None:  # its time counts as the epoch end's, not training's
            self.board_epoch(record, server, telemetry, virtual_s if virtual_s is not None else record["wall_s"])
        self.last_test_error, self.last_test_loss = test_error, test_loss
        self.epoch_end_s += time.perf_counter() - paused
        self.progress.update(self.pending_progress)
        self.pending_progress = 0
        self.progress.set_postfix(
            epoch=f"{epoch + 1}/{self.config.epochs}",
            updates=server.clock,
            staleness=f"{staleness_mean:.2f}",
            **({"test_loss": f"{test_loss:.4f}"} if test_error is None else {"test_error": f"{test_error:.4f}"}),
        )
        return test_loss

    def status(
        self,
        state: str,
        server: ParameterServer,
        telemetry: Telemetry,
        live: set[int],
        epochs_ended: int,
        now: float,
        virtual_s: float | None = None,
        error: str = "",
    ) -> None:
        """Write status.json: what the run is doing now (`softsync status` reads it from any shell).

        ``now`` is the engine's clock of the learners' last messages (time.monotonic() under dist,
        virtual seconds under sim); rates are over the interval since the previous status.
        """
        training = self.training_s(virtual_s)
        histogram = server.stats.histogram
        count, total = sum(histogram.values()), sum(t * k for t, k in histogram.items())
        seen_training, seen_gradients, seen_count, seen_total = self.status_seen
        interval = training - seen_training
        new = count - seen_count
        self.status_seen = (training, server.accepted_gradients, count, total)
        self.status_due = time.monotonic() + STATUS_EVERY_S
        learners = []
        for learner, counts in enumerate(telemetry.counts):
            heard = telemetry.last_heard[learner]
            learners.append(
                {
                    "learner": learner,
                    "state": "lost" if learner in telemetry.lost else "live" if learner in live else "stopped",
                    "gradients": counts.gradients,
                    "last_message_s": None if heard is None else round(max(0.0, now - heard), 3),
                }
            )
        record = {
            "state": state,
            "error": error,
            "updated": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "engine": self.config.engine,
            "epoch": epochs_ended,
            "epochs": self.config.epochs,
            "updates": server.clock,
            "gradients": server.accepted_gradients,
            "rejected_gradients": server.rejected_gradients,
            "dropped_gradients": server.dropped_gradients,
            "interval_s": interval,
            "samples_per_s": (server.accepted_gradients - seen_gradients) * self.config.batch_size / interval
            if interval > 0
            else 0.0,
            "staleness_mean": (total - seen_total) / new if new else None,
            "learners": learners,
        }
        atomic_write_bytes(self.out / STATUS, lambda handle: handle.write(json.dumps(record, indent=1).encode()))

    def state_dict(self) -> dict:
        return {
            "wall_s": self.wall_s,
            "epoch_end_s": self.epoch_end_s,
            "staleness_seen": self.staleness_seen,
            "learners_seen": None if self.learners_seen is None else [asdict(c) for c in self.learners_seen],
            "training_seen": self.training_seen,
            "last_test_error": self.last_test_error,
            "last_test_loss": self.last_test_loss,
            "progress": self.progress.n + self.pending_progress,
            "board": {"due": self.board_due, "seen": list(self.board_seen), "histogram": dict(self.board_histogram)},
        }

    def load_state_dict(self, state: dict) -> None:
        self.wall_offset = state["wall_s"]
        self.epoch_end_s = state["epoch_end_s"]
        self.started = time.perf_counter()
        self.staleness_seen = tuple(state["staleness_seen"])
        seen = state.get("learners_seen")  # absent from checkpoints written before per-learner telemetry
        self.learners_seen = None if seen is None else [LearnerCounts(**counts) for counts in seen]
        self.training_seen = state.get("training_seen", 0.0)
        self.last_test_error = state["last_test_error"]
        self.last_test_loss = state.get("last_test_loss")  # absent from checkpoints written before --loss existed
        self.progress.update(state["progress"])
        board = state.get("board")  # absent from checkpoints written before --tensorboard
        if board is not None and self.board is not None:
            self.board_due = board["due"]
            self.board_seen = tuple(board["seen"])
            self.board_histogram = dict(board["histogram"])

    def finish(self, coordinator: Coordinator, status: str, virtual_s: float | None = None) -> dict:
        """Write summary.json and return it."""
        server, telemetry = coordinator.server, coordinator.telemetry
        self.progress.close()
        wall = self.wall_s
        samples = server.accepted_gradients * self.config.batch_size
        elapsed = self.training_s(virtual_s)
        summary = {
            "config": self.config.resolved(),
            "status": status,
            "test_error": json_number(self.last_test_error),
            "test_loss": json_number(self.last_test_loss),
            "updates": server.clock,
            "gradients": server.accepted_gradients,
            "rejected_gradients": server.rejected_gradients,
            "dropped_gradients": server.dropped_gradients,
            "learner_failures": coordinator.learner_failures,
            "samples": samples,
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
            "wall_s": round(wall, 4),
            "epoch_end_s": round(self.epoch_end_s, 4),
            "staleness": server.stats.summary(),
            # copies of θ kept at once for a --correction (θ_{t−τ} of gradients in flight), and the last momentum
            "weight_versions": server.versions.peak if server.versions is not None else 0,
            "momentum": server.effective_momentum,
            "pushes_ahead_max": coordinator.gate.ahead_max if coordinator.gate.ssp is not None else None,
            "learners": telemetry.rows(self.training_s(virtual_s), self.config.batch_size),
        }
        if virtual_s is not None:
            summary["virtual_s"] = json_number(virtual_s)
            summary["wall_samples_per_s"] = samples / wall if wall > 0 else 0.0
        atomic_write_bytes(self.out / SUMMARY, lambda handle: handle.write(json.dumps(summary, indent=2).encode()))
        self.close()
        return summary


def staleness_totals(histogram: dict[int, int]) -> tuple[int, int]:
    """(count, Σ τ) of a staleness histogram {τ: count}."""
    return sum(histogram.values()), sum(tau * count for tau, count in histogram.items())
