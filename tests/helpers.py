"""Helpers shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from softsync.cli import main


class Interrupt(Exception):
    """A crash injected by a test, as if the process died at that point."""


def fails_with_one_line(argv: list[str], capture) -> str:
    """Run the CLI; assert it exits 2 with one line `softsync: error: ...` and no traceback; return the line.

    ``capture`` is pytest's capsys or capfd (capfd also sees what child processes print)."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capture.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softsync: error:"), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory, to compare before and after (the lock file is only ever created)."""
    return {path.name: path.read_bytes() for path in Path(run_dir).iterdir() if path.is_file() and path.name != ".lock"}


def metrics(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def epochs(run_dir: Path) -> list[int]:
    """The epochs recorded in a run's metrics.jsonl, in order."""
    return [record["epoch"] for record in metrics(run_dir)]


def final_weights(run_dir: Path) -> torch.Tensor:
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)["server"]["weights"]


def crash_after_checkpoint(monkeypatch, when, error: type[BaseException] = Interrupt) -> list[tuple[int, int]]:
    """Make the process die right after a checkpoint for which ``when(clock, epochs_ended)`` is true.

    Returns the list of (clock, epochs ended) of every checkpoint written, filled as the run goes.
    ``monkeypatch.undo()`` restores normal checkpoints."""
    from softsync.checkpoint import Checkpointer

    original = Checkpointer.save
    saved: list[tuple[int, int]] = []

    def save_then_crash(self, epochs_ended: int) -> None:
        original(self, epochs_ended)
        clock = self.parts["server"].clock
        saved.append((clock, epochs_ended))
        if when(clock, epochs_ended):
            raise error

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)
    return saved
