"""A run directory's life: created with config.json, locked while a process writes it, read back.

config.json      the run's resolved config; marks the directory as a run
metrics.jsonl    one record per epoch (recorder.py)
summary.json     written when the run ends (recorder.py)
checkpoint.pt    the state to continue from (checkpoint.py)
processes.json   dist: who is where, while the run lives
status.json      what the run is doing, refreshed every few seconds (recorder.py; `softsync status`)
tensorboard/     --tensorboard: TensorBoard event files, one per session (board.py)
.lock            held (flock) by the one process that writes the run
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import RunDirError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
PROCESSES = "processes.json"
STATUS = "status.json"
TENSORBOARD = "tensorboard"  # a directory
EVENT_FILES = "events.out.tfevents.*"  # what softsync writes in it
LOCK = ".lock"
# what a run stopped before its first checkpoint can have written: removed to start it again
STALE_FILES = (CONFIG, METRICS, PROCESSES, STATUS, CHECKPOINT + ".tmp", METRICS + ".tmp", STATUS + ".tmp")


class RunLock:
    """An exclusive lock on a run directory, held for the life of the run (or of this process).

    flock: the kernel drops it when the holder dies, so a killed run never leaves a stale lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        try:
            self.handle = open(self.path, "a+")
        except OSError as error:
            raise RunDirError(f"{str(run_dir)!r} is not writable: {error.strerror or error}") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise RunDirError(
                f"{str(run_dir)!r} is in use by a running softsync ({holder}): one process writes a run"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.close()  # closing the file releases the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_progress(run_dir: str | Path) -> str:
    """new (no run there), finished (it has a summary), resumable (a checkpoint), or stale (started, nothing to
    resume)."""
    run = Path(run_dir)
    if not (run / CONFIG).exists():
        return "new"
    if (run / SUMMARY).exists():
        return "finished"
    return "resumable" if (run / CHECKPOINT).exists() else "stale"


def create_run_dir(path: str | Path, config: Any) -> tuple[Path, RunLock]:
    """A run directory for a new run, locked, holding config.json.

    A directory that holds a run is refused; one holding a run that stopped before its first checkpoint
    (nothing to resume) is started again in place: the files softsync wrote go, files it did not write stay.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"--out {str(out)!r} is not writable: {error.strerror or error}") from None
    lock = RunLock(out)
    try:
        if run_progress(out) == "stale":
            for name in STALE_FILES:
                (out / name).unlink(missing_ok=True)
            for events in (out / TENSORBOARD).glob(EVENT_FILES):
                events.unlink(missing_ok=True)
            if (out / TENSORBOARD).is_dir() and not any((out / TENSORBOARD).iterdir()):
                (out / TENSORBOARD).rmdir()
        if any((out / name).exists() for name in (METRICS, SUMMARY, CHECKPOINT, CONFIG)):
            raise RunDirError(
                f"--out {str(out)!r} already holds a run: choose another directory or continue it with --resume"
            )
        try:
            with open(out / CONFIG, "x") as handle:
                handle.write(json.dumps(dataclasses.replace(config, out=str(out)).resolved(), indent=2))
        except OSError as error:
            raise RunDirError(f"--out {str(out)!r} is not writable: {error.strerror or error}") from None
    except BaseException:
        lock.release()
        raise
    return out, lock


def open_run_dir(config: Any, checkpoint: dict | None) -> tuple[Any, Path, RunLock]:
    """(config with ``out`` set, the run directory, its lock): a new one, or the resumed one cut back to its
    checkpoint. The caller holds the lock for the run's life."""
    if checkpoint is None:
        out, lock = create_run_dir(config.out or config.default_out(), config)
    else:
        out = Path(config.out)
        lock = RunLock(out)
        try:
            keep_metrics_up_to(out, checkpoint["epoch"])
        except BaseException:
            lock.release()
            raise
    return dataclasses.replace(config, out=str(out)), out, lock


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


def keep_metrics_up_to(run_dir: Path, epoch: int) -> None:
    """Drop metrics written after the checkpoint's epoch: the resumed run writes them again."""
    path = run_dir / METRICS
    if path.exists():
        lines = [json.dumps(record) for record in read_metrics(path) if record.get("epoch", 0) <= epoch]
        atomic_write_bytes(path, lambda handle: handle.write("".join(line + "\n" for line in lines).encode()))


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file, fsync and rename, so a crash never leaves half a file.

    If writing fails (a full disk), the temporary file is removed and the old file stays.
    """
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
