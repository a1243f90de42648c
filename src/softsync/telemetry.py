"""Per-learner telemetry: what each learner contributed, how stale its gradients were, how it spent its time.

Pure bookkeeping, like the rest of the core: the coordinator reports what the protocol decided (a gradient
applied with its staleness, a rejection, a loss), the engine reports time (a learner's seconds computing and
waiting, when it was last heard from), in virtual seconds under sim and wall seconds under dist.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class LearnerCounts:
    """One learner's totals (since the run began, or over an interval as a difference of two)."""

    gradients: int = 0  # applied
    staleness_sum: int = 0
    staleness_max: int = 0
    rejected: int = 0
    dropped: int = 0  # too stale for --lr-policy drop: not applied, mini-batch redone
    failures: int = 0
    compute_s: float = 0.0  # computing gradients (a straggler's slowdown included)
    wait_s: float = 0.0  # waiting for weights: the link, the server, a hardsync round

    def minus(self, earlier: LearnerCounts) -> LearnerCounts:
        """The counts of the interval since ``earlier`` (the maximum staleness is the interval's only if it rose)."""
        difference = LearnerCounts(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})
        difference.staleness_max = self.staleness_max if self.staleness_max > earlier.staleness_max else 0
        return difference


class Telemetry:
    """The counts of every learner, and when each was last heard from."""

    def __init__(self, learners: int) -> None:
        self.counts = [LearnerCounts() for _ in range(learners)]
        self.last_heard: list[float | None] = [None] * learners  # engine time of the last message
        self.lost: set[int] = set()

    def applied(self, learner: int, staleness: int) -> None:
        counts = self.counts[learner]
        counts.gradients += 1
        counts.staleness_sum += staleness
        counts.staleness_max = max(counts.staleness_max, staleness)

    def rejected(self, learner: int) -> None:
        self.counts[learner].rejected += 1

    def dropped(self, learner: int) -> None:
        self.counts[learner].dropped += 1

    def lose(self, learner: int) -> None:
        self.counts[learner].failures += 1
        self.lost.add(learner)

    def restart(self) -> None:
        """New learner processes (a resumed dist run): none is lost any more."""
        self.lost.clear()

    def timed(self, learner: int, compute_s: float, wait_s: float) -> None:
        """One step of ``learner``: its seconds computing, and waiting for the weights it computed on."""
        counts = self.counts[learner]
        counts.compute_s += max(0.0, compute_s)
        counts.wait_s += max(0.0, wait_s)

    def heard(self, learner: int, now: float) -> None:
        self.last_heard[learner] = now

    def snapshot(self) -> list[LearnerCounts]:
        return [LearnerCounts(**asdict(counts)) for counts in self.counts]

    def rows(self, elapsed_s: float, batch_size: int, since: list[LearnerCounts] | None = None) -> list[dict]:
        """One record per learner, over the run or the interval since ``since`` that lasted ``elapsed_s``."""
        records = []
        for learner, counts in enumerate(self.counts):
            interval = counts.minus(since[learner]) if since is not None else counts
            busy = interval.compute_s + interval.wait_s
            records.append(
                {
                    "learner": learner,
                    "gradients": interval.gradients,
                    "samples_per_s": interval.gradients * batch_size / elapsed_s if elapsed_s > 0 else 0.0,
                    "staleness_mean": interval.staleness_sum / interval.gradients if interval.gradients else 0.0,
                    "staleness_max": interval.staleness_max,
                    "compute_fraction": interval.compute_s / busy if busy > 0 else 0.0,
                    "wait_fraction": interval.wait_s / busy if busy > 0 else 0.0,
                    "rejected": interval.rejected,
                    "dropped": interval.dropped,
                    "failures": interval.failures,
                }
            )
        return records

    def state_dict(self) -> dict:
        return {"counts": [asdict(counts) for counts in self.counts], "lost": sorted(self.lost)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = [LearnerCounts(**counts) for counts in state["counts"]]
        self.lost = set(state["lost"])
