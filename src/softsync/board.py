"""TensorBoard event files of a run (RUN_DIR/tensorboard/, `--tensorboard`), written for the Recorder.

Optional: the tensorboard package (`pip install 'softsync[tensorboard]'`). ``require`` refuses a run that asks for
it without the package, in one line, before the run directory is written or a process starts. A Board imports
torch.utils.tensorboard when it is made, before training (the import takes a few tenths of a second); its writer
(a SummaryWriter) opens at the first event, so that a resumed run can first say from which update on the events
of the session it continues are stale (``resume``: TensorBoard hides them).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .errors import ConfigError, first_line

MISSING = "--tensorboard needs the tensorboard package: pip install 'softsync[tensorboard]'"


def require(config: Any) -> None:
    """ConfigError (one line) if the run asks for --tensorboard and torch.utils.tensorboard cannot be imported."""
    if not config.tensorboard:
        return
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        raise ConfigError(MISSING) from None
    except Exception as error:  # an installed but broken tensorboard (e.g. a protobuf it does not work with)
        raise ConfigError(f"--tensorboard: torch.utils.tensorboard cannot be imported: {first_line(error)}") from None


class Board:
    """One session's event file in ``directory``: scalars, staleness histograms, flushed on demand."""

    def __init__(self, directory: Path) -> None:
        # imported now, before training starts: the import takes a few tenths of a second
        from torch.utils.tensorboard import SummaryWriter

        self.summary_writer = SummaryWriter
        self.directory = directory
        self.purge_step: int | None = None
        self.writer: Any = None  # a SummaryWriter, from the first event on
        self.closed = False

    def resume(self, clock: int) -> None:
        """A resumed run continues from a checkpoint at update ``clock``: what an earlier session wrote for later
        updates is stale. The new event file starts with TensorBoard's restart marker (SessionLog.START at
        ``clock + 1``), so TensorBoard drops those events and shows the ones this session writes again."""
        self.purge_step = clock + 1

    def _open(self) -> Any:
        if self.writer is None:
            self.writer = self.summary_writer(log_dir=str(self.directory), purge_step=self.purge_step)
        return self.writer

    def scalars(self, values: dict[str, float], step: int, walltime: float) -> None:
        if self.closed:
            return
        writer = self._open()
        for tag, value in values.items():
            writer.add_scalar(tag, value, step, walltime=walltime)

    def counts(self, tag: str, histogram: dict[int, int], step: int, walltime: float) -> None:
        """A histogram of whole numbers {value: count}, one bucket per value (nothing when it is empty)."""
        histogram = {value: count for value, count in histogram.items() if count > 0}
        if self.closed or not histogram:
            return
        low, high = min(histogram), max(histogram)
        # TensorBoard stores right bucket limits; the first, empty bucket gives the first value its left edge
        limits = [low - 0.5] + [value + 0.5 for value in range(low, high + 1)]
        buckets = [0] + [histogram.get(value, 0) for value in range(low, high + 1)]
        self._open().add_histogram_raw(
            tag,
            min=low,
            max=high,
            num=sum(histogram.values()),
            sum=sum(value * count for value, count in histogram.items()),
            sum_squares=sum(value * value * count for value, count in histogram.items()),
            bucket_limits=limits,
            bucket_counts=buckets,
            global_step=step,
            walltime=walltime,
        )

    def flush(self) -> None:
        """Write what is queued to the event file: after this, a crash loses none of it."""
        if self.writer is not None and not self.closed:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file; later events are dropped (a failing run's last threads)."""
        if self.closed:
            return
        self.closed = True
        if self.writer is not None:
            self.writer.close()
