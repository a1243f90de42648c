"""Server time per update with each --correction against none, for a 1M-parameter model.

    .venv/bin/python bench/corrections.py [--parameters 1000000] [--learners 8] [--pushes 400] [--repeats 3]

The parameter server alone (no transport, no learners), under async with λ learners: each learner
pulls, and its gradient comes back λ − 1 updates later (τ = λ − 1, round robin), so a correction
always has a gap to correct and the server keeps λ − 1 copies of θ. One torch thread. Every
correction runs in the same process, interleaved repeat by repeat; prints µs per push and the ratio
to `none` (the median over the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from softsync.corrections import CORRECTIONS, make_correction
from softsync.protocol import parse_protocol
from softsync.server import ParameterServer


def seconds_per_push(correction: str, parameters: int, learners: int, pushes: int) -> tuple[float, int]:
    server = ParameterServer(
        torch.zeros(parameters),
        parse_protocol("async", learners),
        learners,
        lr=0.01,
        momentum=0.9,
        correction=make_correction(correction, dc_lambda=0.04),
    )
    gradients = [torch.randn(parameters, generator=torch.Generator().manual_seed(l)) * 1e-3 for l in range(learners)]
    scratch = torch.empty(parameters)
    timestamps = [server.pull()[1] for _ in range(learners)]
    start = time.perf_counter()
    for push in range(pushes):
        learner = push % learners
        # the gradient arrives in a receive buffer, which the server may scale in place
        server.push(scratch.copy_(gradients[learner]), timestamps[learner], learner)
        timestamps[learner] = server.pull()[1]
    elapsed = time.perf_counter() - start
    return elapsed / pushes, server.versions.peak if server.versions is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parameters", type=int, default=1_000_000)
    parser.add_argument("--learners", type=int, default=8)
    parser.add_argument("--pushes", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.parameters:,} parameters, async with {args.learners} learners (τ = {args.learners - 1}), 1 thread")
    times: dict[str, list[float]] = {name: [] for name in CORRECTIONS}
    copies: dict[str, int] = {}
    for _ in range(args.repeats):
        for name in CORRECTIONS:
            seconds, copies[name] = seconds_per_push(name, args.parameters, args.learners, args.pushes)
            times[name].append(seconds)
    baseline = statistics.median(times["none"])
    for name in CORRECTIONS:
        median = statistics.median(times[name])
        repeats = ", ".join(f"{t * 1e6:.0f}" for t in times[name])
        print(
            f"  {name:18s} {median * 1e6:8.0f} µs a push (repeats: {repeats}), "
            f"ratio to none {median / baseline:.2f}, copies of θ held {copies[name]}"
        )


if __name__ == "__main__":
    main()
