"""Scaling of the dist engine on this machine: 2 learners on 2 cores against a plain torch loop.

    .venv/bin/python bench/scaling.py [--model cnn-bench] [--batch-size 32] [--epochs 1] [--repeats 3]

Workload (the issue's): Fashion-MNIST 28×28×1, conv 5×5×32 (pad 2) → max-pool 2 → conv 5×5×64
(pad 2) → max-pool 2 → linear 10 (`cnn-bench`, 83,466 parameters), μ = 32, async, one torch thread
per process. The plain side is a one-process torch SGD loop; softsync runs with 1 and with 2
learner processes (plus the server process). Prints samples/s and the ratios 2 learners/plain and
2 learners/1 learner; samples_per_s leaves out the epoch-end evaluation.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from common import plain_loop
from softsync import train
from softsync.datasets import load_dataset


def softsync_rate(model: str, learners: int, batch_size: int, epochs: int, protocol: str = "async") -> float:
    with tempfile.TemporaryDirectory() as out:
        summary = train(engine="dist", protocol=protocol, learners=learners, batch_size=batch_size, model=model,
                        epochs=epochs, lr=0.01, momentum=0.9, eval_samples=100, quiet=True, out=f"{out}/run")
    return summary["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn-bench")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("fashion-mnist")
    steps = args.epochs * (len(dataset.train_y) // args.batch_size)
    plain_loop(args.model, dataset, 20, args.batch_size)  # warm-up
    print(f"{args.model}, Fashion-MNIST, μ = {args.batch_size}, async, {steps} steps, 1 thread per process")
    versus_plain, versus_one = [], []
    for repeat in range(args.repeats):
        plain = steps * args.batch_size / plain_loop(args.model, dataset, steps, args.batch_size, seed=repeat)
        one = softsync_rate(args.model, 1, args.batch_size, args.epochs)
        two = softsync_rate(args.model, 2, args.batch_size, args.epochs)
        versus_plain.append(two / plain)
        versus_one.append(two / one)
        print(f"  repeat {repeat}: plain {plain:7.0f}, 1 learner {one:7.0f}, 2 learners {two:7.0f} samples/s; "
              f"2 learners/plain {versus_plain[-1]:.3f}, 2 learners/1 learner {versus_one[-1]:.3f}")
    print(f"median: 2 learners/plain = {statistics.median(versus_plain):.3f} (target >= 1.8), "
          f"2 learners/1 learner = {statistics.median(versus_one):.3f}")


if __name__ == "__main__":
    main()
