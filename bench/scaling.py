"""Scaling of the dist engine on this machine: 2 learners on 2 cores against a plain torch loop.

    .venv/bin/python bench/scaling.py [--model cnn-bench] [--batch-size 32] [--epochs 1] [--repeats 3]

Workload (the issue's): Fashion-MNIST 28×28×1, conv 5×5×32 (pad 2) → max-pool 2 → conv 5×5×64
(pad 2) → max-pool 2 → linear 10 (`cnn-bench`, 83,466 parameters), μ = 32, async, one torch thread
per process. The plain side is a one-process torch SGD loop; softsync runs with 1 and with 2
learner processes (plus the server process). Prints samples/s and the ratios 2 learners/plain and
2 learners/1 learner; samples_per_s leaves out the epoch-end evaluation. It also runs two
independent plain loops at once (two processes): what two cores give this workload at best.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from softsync.datasets import load_dataset

from common import plain_loop, softsync_rate


def two_plain_loops(model: str, batch_size: int, steps: int) -> float:
    """The machine's own ceiling: two independent plain loops at once, one process each.

    Both start at the same moment (after loading) and the rate is the samples of both over the
    time until the later one ends, so neither is timed while running alone.
    """
    start_at = time.time() + 15  # both have loaded and warmed up by then
    code = (
        "import sys, time, torch; sys.path.insert(0, %r); from common import plain_loop; "  # noqa: UP031
        "from softsync.datasets import load_dataset; torch.set_num_threads(1); d = load_dataset('fashion-mnist'); "
        "plain_loop(%r, d, 20, %d); time.sleep(max(0, %r - time.time())); plain_loop(%r, d, %d, %d); print(time.time())"
        % (str(Path(__file__).parent), model, batch_size, start_at, model, steps, batch_size)
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=environment)
        for _ in range(2)
    ]
    ends = [float(child.communicate(timeout=3600)[0].split()[-1]) for child in children]
    return 2 * steps * batch_size / (max(ends) - start_at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn-bench")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("fashion-mnist")
    steps = args.epochs * (len(dataset.train.targets) // args.batch_size)
    plain_loop(args.model, dataset, 20, args.batch_size)  # warm-up
    print(f"{args.model}, Fashion-MNIST, μ = {args.batch_size}, async, {steps} steps, 1 thread per process")
    versus_plain, versus_one, ceiling = [], [], []
    for repeat in range(args.repeats):
        plain = steps * args.batch_size / plain_loop(args.model, dataset, steps, args.batch_size, seed=repeat)
        one = softsync_rate(args.model, 1, args.batch_size, args.epochs)
        two = softsync_rate(args.model, 2, args.batch_size, args.epochs)
        pair = two_plain_loops(args.model, args.batch_size, steps)
        versus_plain.append(two / plain)
        versus_one.append(two / one)
        ceiling.append(pair / plain)
        print(
            f"  repeat {repeat}: plain {plain:7.0f}, 1 learner {one:7.0f}, 2 learners {two:7.0f}, "
            f"2 independent plain loops {pair:7.0f} samples/s; 2 learners/plain {versus_plain[-1]:.3f}, "
            f"2 learners/1 learner {versus_one[-1]:.3f}, 2 plain loops/plain {ceiling[-1]:.3f}"
        )
    print(
        f"median: 2 learners/plain = {statistics.median(versus_plain):.3f} (target >= 1.8), "
        f"2 learners/1 learner = {statistics.median(versus_one):.3f}, "
        f"machine ceiling (2 independent plain loops/plain) = {statistics.median(ceiling):.3f}"
    )


if __name__ == "__main__":
    main()
