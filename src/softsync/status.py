"""`softsync status RUN_DIR`: what a run is doing, from another shell, while it trains or after it ended.

It reads what the run writes (status.json every few seconds, processes.json while a dist run lives,
summary.json at the end) and asks this host whether the processes it names are alive; it never
writes, so it works on a run directory of another host too (on a shared file system).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import RunDirError
from .recorder import STATUS_EVERY_S
from .rundir import CONFIG, PROCESSES, STATUS, SUMMARY

# a running run older than this has stopped refreshing: its writer was killed, or hangs
SILENT_AFTER_S = 5 * STATUS_EVERY_S


def alive(pid: int, host: str) -> bool | None:
    """Whether process ``pid`` of ``host`` runs (a zombie does not); None for another host's."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_json(path: Path) -> dict | list | None:
    """A JSON file the run writes atomically; None if it is not there (or not whole: a run of another version)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def describe(run_dir: str | Path, now: float | None = None) -> str:
    """The status of the run in ``run_dir`` as lines of text."""
    run = Path(run_dir)
    if not (run / CONFIG).is_file():
        raise RunDirError(f"{str(run)!r} is not a run directory: it has no {CONFIG}")
    now = time.time() if now is None else now
    status = read_json(run / STATUS)
    summary = read_json(run / SUMMARY)
    processes = read_json(run / PROCESSES)
    if not isinstance(status, dict):
        state = f"{summary['status']} (no status.json)" if isinstance(summary, dict) else "starting (no status yet)"
        return f"{run}: {state}"
    age = now - status["updated"]
    state = status["state"]
    writer = alive(status["pid"], status["host"])
    if state == "running" and (writer is False or (writer is None and age > SILENT_AFTER_S)):
        state = "ended without finishing (its server process is gone: killed or crashed); --resume continues it"
    elif state == "running" and age > SILENT_AFTER_S:
        state = f"running, but silent for {age:.0f} s (busy evaluating, or hung)"
    elif state == "failed" and status.get("error"):
        state = f"failed: {status['error']}"
    clock = "virtual s" if status["engine"] == "sim" else "s"
    staleness = status["staleness_mean"]
    lines = [
        f"{run}: {state}",
        f"  updated {age:.1f} s ago by pid {status['pid']} on {status['host']} ({status['engine']} engine)",
        f"  epoch {status['epoch']}/{status['epochs']}, {status['updates']} updates, {status['gradients']} gradients"
        f" ({status['rejected_gradients']} rejected"
        + (f", {status['dropped_gradients']} dropped)" if status.get("dropped_gradients") else ")"),
        f"  last {status['interval_s']:.3g} {clock}: {status['samples_per_s']:.1f} samples/{clock.split()[-1]}"
        f"{'' if clock == 's' else ' (virtual)'}, mean staleness "
        + ("n/a" if staleness is None else f"{staleness:.2f}"),
        "  learner  state    gradients  last message",
    ]
    for learner in status["learners"]:
        heard = learner["last_message_s"]
        ago = "never" if heard is None else f"{heard:.1f} {clock} before the status"
        lines.append(f"  {learner['learner']:>7}  {learner['state']:<7}  {learner['gradients']:>9}  {ago}")
    if isinstance(processes, list):
        lines.append("  processes (processes.json):")
        for process in processes:
            running = alive(process["pid"], process["host"])
            shown = "alive" if running else "gone" if running is False else "on another host"
            where = f"pid {process['pid']:>7} on {process['host']}"
            lines.append(f"  rank {process['rank']:>3} {process['role']:<7} {where}: {shown}")
    return "\n".join(lines)
