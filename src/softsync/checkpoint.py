"""checkpoint.pt: the one owner of the checkpoint format.

A checkpoint holds the named state of every stateful part of a run, each saved by its own
``state_dict`` and restored by its own ``load_state_dict``:

    version      the format (FORMAT); another version is refused with one line
    config       the run's resolved config (what --resume continues)
    epoch        epochs ended when it was written
    server       ParameterServer: weights, SGD state, clock, gradient buffer, staleness histogram
    data         DataServer: position in the epoch order, completed and re-issued mini-batches
    coordinator  Coordinator: mini-batches being computed, learners waiting, learner_failures
    engine       the engine's own state (sim: virtual time, event queue, held gradients, random streams)
    recorder     Recorder: per-epoch loss sums, wall time so far, the last test error

It is written atomically (a temporary file, fsync, rename): a crash leaves the previous one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import ConfigError, RunDirError, RunError
from .rundir import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
FORMAT = 2
PARTS = ("server", "data", "coordinator", "engine", "recorder")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def load_checkpoint(run_dir: str | Path) -> dict:
    """The checkpoint of a run directory; RunDirError (one line) when there is none, or it is unreadable,
    of another format version, or not a softsync checkpoint."""
    where = f"--resume {str(run_dir)!r}"
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunDirError(f"{where} is not a run directory: it has no {CHECKPOINT}")
    try:
        # our own file: it holds Python objects (config, random states), so not weights_only
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise RunDirError(f"{where}: {CHECKPOINT} cannot be read ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or not {"config", "epoch", *PARTS} <= set(checkpoint):
        if isinstance(checkpoint, dict) and "version" not in checkpoint and "server" in checkpoint:
            raise RunDirError(
                f"{where}: {CHECKPOINT} was written by an older softsync (format 1, this one reads {FORMAT})"
            )
        raise RunDirError(f"{where}: {CHECKPOINT} is not a softsync checkpoint")
    if checkpoint.get("version") != FORMAT:
        raise RunDirError(
            f"{where}: {CHECKPOINT} has format {checkpoint.get('version')!r}; this softsync reads {FORMAT}"
        )
    if not isinstance(checkpoint["config"], dict) or not isinstance(checkpoint["epoch"], int):
        raise RunDirError(f"{where}: {CHECKPOINT} is damaged (its config or epoch)")
    return checkpoint


class Checkpointer:
    """Saves and restores every stateful part of one run under its name (see PARTS)."""

    def __init__(self, out: Path, config: Any, parts: dict[str, Stateful]) -> None:
        if set(parts) != set(PARTS):
            raise ValueError(f"a checkpoint has the parts {PARTS}, not {tuple(parts)}")
        self.path = out / CHECKPOINT
        self.config = config
        self.parts = parts

    def save(self, epochs_ended: int) -> None:
        """Write checkpoint.pt atomically. A failed write (a full disk) leaves the previous checkpoint
        and no temporary file, and ends the run with one line naming the checkpoint."""
        checkpoint = {"version": FORMAT, "config": self.config.resolved(), "epoch": epochs_ended}
        checkpoint.update({name: part.state_dict() for name, part in self.parts.items()})
        try:
            atomic_write_bytes(self.path, lambda handle: torch.save(checkpoint, handle))
        except OSError as error:
            raise RunError(
                f"could not write the checkpoint {self.path}: {error.strerror or error}; "
                "the previous checkpoint is intact (is the disk full?)"
            ) from None

    def restore(self, checkpoint: dict) -> None:
        """Load every part from ``checkpoint``; RunDirError (one line) if it does not fit this run."""
        where = f"--resume {str(self.path.parent)!r}"
        server = checkpoint["server"]
        weights = server.get("weights") if isinstance(server, dict) else None
        model = self.parts["server"].weights  # type: ignore[attr-defined]
        if not isinstance(weights, torch.Tensor):
            raise RunDirError(f"{where}: {CHECKPOINT} is damaged: its server state holds no weights")
        if weights.shape != model.shape:
            raise ConfigError(f"{where}: its checkpoint holds {weights.numel()} weights, the model {model.numel()}")
        for name in PARTS:
            part = self.parts[name]
            try:
                part.load_state_dict(checkpoint[name])
            except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
                detail = f"lacks {error}" if isinstance(error, KeyError) else type(error).__name__
                raise RunDirError(f"{where}: {CHECKPOINT} is damaged: its {name} state {detail}") from None
