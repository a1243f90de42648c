"""What every engine writes into a run directory: metrics.jsonl, summary.json, checkpoint.pt.

The Recorder turns the engine's events (a gradient arrived, an epoch ended, the run ended)
into those files, so that both engines write the same outputs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"


class RunDirError(ValueError):
    """The run directory cannot be used; the message is one line."""


CONFIG = "config.json"


def prepare_run_dir(path: str | Path, config) -> Path:
    """Create a fresh run directory holding config.json; refuse one that holds a run or cannot be written.

    config.json is created exclusively, so two runs started on the same directory cannot both
    write into it.
    """
    out = Path(path)
    if any((out / name).exists() for name in (METRICS, SUMMARY, CHECKPOINT, CONFIG)):
        raise RunDirError(f"--out {str(out)!r} already holds a run: choose another directory or continue it with --resume")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / CONFIG, "x") as handle:
            handle.write(json.dumps(dataclasses.replace(config, out=str(out)).resolved(), indent=2))
    except FileExistsError:
        raise RunDirError(f"--out {str(out)!r} already holds a run: choose another directory or continue it with --resume") from None
    except OSError as error:
        raise RunDirError(f"--out {str(out)!r} is not writable: {error.strerror or error}") from None
    return out


def run_progress(run_dir: str | Path) -> str:
    """new (no run there), finished (it has a summary), resumable (a checkpoint), or stale (started, nothing to resume)."""
    run = Path(run_dir)
    if not (run / CONFIG).exists():
        return "new"
    if (run / SUMMARY).exists():
        return "finished"
    return "resumable" if (run / CHECKPOINT).exists() else "stale"


def discard_stale_run(run_dir: str | Path) -> None:
    """Remove a run stopped before its first checkpoint, so it can start again: nothing trained is lost."""
    if run_progress(run_dir) != "stale":
        raise RunDirError(f"{str(run_dir)!r} holds a checkpoint or a finished run: refusing to remove it")
    shutil.rmtree(run_dir)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short by a crash, or any other non-record line, is skipped."""
    records = []
    for line in path.read_text(errors="replace").splitlines():  # a damaged byte spoils its line only
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        # what every reader relies on: an object with a whole-number epoch (not [1, 2], not {"epoch": "x"})
        if isinstance(record, dict) and type(record.get("epoch")) is int:
            records.append(record)
    return records


def open_run_dir(config, checkpoint: dict | None):
    """(config with ``out`` set, the run directory): a fresh one, or the resumed one cut back to its checkpoint."""
    if checkpoint is not None:
        out = Path(config.out)
        keep_metrics_up_to(out, checkpoint["epoch"])
    else:
        out = prepare_run_dir(config.out or config.default_out(), config)
    return dataclasses.replace(config, out=str(out)), out


def load_checkpoint(run_dir: str | Path) -> dict:
    """The checkpoint of a run directory; RunDirError (one line) when there is none or it is unreadable."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunDirError(f"--resume {str(run_dir)!r} is not a run directory: it has no {CHECKPOINT}")
    try:
        # our own file: it holds Python objects (config, random states), so not weights_only
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise RunDirError(f"--resume {str(run_dir)!r}: {CHECKPOINT} cannot be read ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or not {"config", "server", "data", "engine", "epoch", "recorder"} <= set(checkpoint):
        raise RunDirError(f"--resume {str(run_dir)!r}: {CHECKPOINT} is not a softsync checkpoint")
    return checkpoint


def keep_metrics_up_to(run_dir: Path, epoch: int) -> None:
    """Drop metrics written after the checkpoint's epoch: the resumed run writes them again."""
    path = run_dir / METRICS
    if path.exists():
        lines = [json.dumps(record) for record in read_metrics(path) if record.get("epoch", 0) <= epoch]
        atomic_write_bytes(path, lambda handle: handle.write("".join(line + "\n" for line in lines).encode()))


def atomic_write_bytes(path: Path, write: Callable[[object], None]) -> None:
    """Write through a temporary file, fsync and rename, so a crash never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Recorder:
    """Per-epoch metrics, checkpoints, the progress bar and the final summary of one run."""

    def __init__(self, out: Path, config, evaluate: Callable[[], tuple[float, float]], total_gradients: int, quiet: bool = False) -> None:
        self.out = out
        self.config = config
        self.evaluate = evaluate
        self.started = time.perf_counter()
        self.wall_offset = 0.0  # wall time of earlier sessions of a resumed run
        self.epoch_end_s = 0.0  # time spent evaluating and checkpointing: not training
        self.loss_sum: dict[int, float] = {}
        self.loss_count: dict[int, int] = {}
        self.last_test_error: float | None = None
        self.status = "completed"
        self.consecutive_rejections = 0
        self._staleness_seen = (0, 0)  # (count, Σ τ) at the previous epoch end
        self.progress = tqdm(total=total_gradients, unit="grad", disable=quiet, dynamic_ncols=True, leave=False)
        self._pending_progress = 0

    def start_clock(self) -> None:
        """Training starts now (the dist server calls this on the first message: process start-up is not training)."""
        self.started = time.perf_counter()

    @property
    def wall_s(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def gradient(self, epoch: int, loss: float, accepted: bool, learners: int) -> bool:
        """Account one pushed gradient; True when rejections in a row say the run diverged."""
        if accepted:
            self.consecutive_rejections = 0
            self.loss_sum[epoch] = self.loss_sum.get(epoch, 0.0) + loss
            self.loss_count[epoch] = self.loss_count.get(epoch, 0) + 1
            self._pending_progress += 1
            if self._pending_progress >= 64:
                self.progress.update(self._pending_progress)
                self._pending_progress = 0
            return False
        self.consecutive_rejections += 1
        return self.consecutive_rejections >= max(10, 2 * learners)

    def save_checkpoint(self, state: dict, epochs_ended: int) -> None:
        """Write checkpoint.pt atomically: ``state`` (server, data, engine) with the config and our own state."""
        checkpoint = {**state, "config": self.config.resolved(), "epoch": epochs_ended, "recorder": self.state_dict()}
        atomic_write_bytes(self.out / CHECKPOINT, lambda handle: torch.save(checkpoint, handle))

    def epoch_end(self, epoch: int, server, virtual_s: float | None = None, checkpoint: dict | None = None) -> bool:
        """Evaluate, append to metrics.jsonl, write the checkpoint; True if the run diverged."""
        paused = time.perf_counter()
        test_loss, test_error = self.evaluate()
        count = self.loss_count.pop(epoch, 0)
        train_loss = self.loss_sum.pop(epoch, 0.0) / count if count else float("nan")
        histogram = server.stats.histogram
        seen_count = sum(histogram.values())
        seen_sum = sum(t * k for t, k in histogram.items())
        new = seen_count - self._staleness_seen[0]
        staleness_mean = (seen_sum - self._staleness_seen[1]) / new if new else 0.0
        self._staleness_seen = (seen_count, seen_sum)
        record = {
            "epoch": epoch + 1,
            "updates": server.clock,
            "gradients": server.gradients,
            "samples": server.gradients * self.config.batch_size,
            "wall_s": round(self.wall_s, 4),
            "lr": server.lr,
            "train_loss": _json_number(train_loss),
            "test_loss": _json_number(test_loss),
            "test_error": _json_number(test_error),
            "staleness_mean": staleness_mean,
        }
        if virtual_s is not None:
            record["virtual_s"] = virtual_s
        with open(self.out / METRICS, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.last_test_error = test_error
        diverged = not (math.isfinite(test_loss) and math.isfinite(train_loss))
        if checkpoint is not None:
            self.save_checkpoint(checkpoint, epoch + 1)
        self.epoch_end_s += time.perf_counter() - paused
        self.progress.update(self._pending_progress)
        self._pending_progress = 0
        self.progress.set_postfix(
            epoch=f"{epoch + 1}/{self.config.epochs}",
            updates=server.clock,
            staleness=f"{staleness_mean:.2f}",
            test_error=f"{test_error:.4f}",
        )
        return diverged

    def state_dict(self) -> dict:
        return {
            "wall_s": self.wall_s,
            "epoch_end_s": self.epoch_end_s,
            "loss_sum": dict(self.loss_sum),
            "loss_count": dict(self.loss_count),
            "staleness_seen": self._staleness_seen,
            "consecutive_rejections": self.consecutive_rejections,
            "last_test_error": self.last_test_error,
        }

    def load_state_dict(self, state: dict) -> None:
        self.wall_offset = state["wall_s"]
        self.epoch_end_s = state["epoch_end_s"]
        self.started = time.perf_counter()
        self.loss_sum = dict(state["loss_sum"])
        self.loss_count = dict(state["loss_count"])
        self._staleness_seen = tuple(state["staleness_seen"])
        self.consecutive_rejections = state["consecutive_rejections"]
        self.last_test_error = state["last_test_error"]

    def finish(self, server, learner_failures: int = 0, virtual_s: float | None = None) -> dict:
        """Write summary.json and return it."""
        self.progress.close()
        wall = self.wall_s
        samples = server.gradients * self.config.batch_size
        elapsed = virtual_s if virtual_s is not None else wall - self.epoch_end_s
        summary = {
            "config": self.config.resolved(),
            "status": self.status,
            "test_error": _json_number(self.last_test_error) if self.last_test_error is not None else None,
            "updates": server.clock,
            "gradients": server.gradients,
            "rejected_gradients": server.rejected_gradients,
            "learner_failures": learner_failures,
            "samples": samples,
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
            "wall_s": round(wall, 4),
            "epoch_end_s": round(self.epoch_end_s, 4),
            "staleness": server.stats.summary(),
        }
        if virtual_s is not None:
            summary["virtual_s"] = virtual_s
            summary["wall_samples_per_s"] = samples / wall if wall > 0 else 0.0
        atomic_write_bytes(self.out / SUMMARY, lambda handle: handle.write(json.dumps(summary, indent=2).encode()))
        return summary
