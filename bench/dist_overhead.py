"""Framework overhead of the dist engine: one learner, async, against a plain torch loop.

    .venv/bin/python bench/dist_overhead.py [--models mlp,paper-cifar10] [--batch-size 32] [--repeats 3]

Both sides train on Fashion-MNIST (28×28×1) with μ = 32 and one torch thread: the plain loop in
this process, softsync as 2 processes (server + 1 learner) through `softsync.train`, whose
samples_per_s leaves out the epoch-end evaluation. Prints the samples/s ratio softsync/plain.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from softsync.datasets import load_dataset

from common import plain_loop, softsync_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,paper-cifar10")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("fashion-mnist")
    steps = args.epochs * (len(dataset.train.targets) // args.batch_size)
    print(f"Fashion-MNIST, μ = {args.batch_size}, {steps} steps, async with 1 learner, 1 thread per process")
    for model_name in args.models.split(","):
        plain_loop(model_name, dataset, 20, args.batch_size)  # warm-up
        ratios = []
        for repeat in range(args.repeats):
            rate = softsync_rate(model_name, 1, args.batch_size, args.epochs)
            plain = steps * args.batch_size / plain_loop(model_name, dataset, steps, args.batch_size, seed=repeat)
            ratios.append(rate / plain)
            print(
                f"  {model_name:14s} repeat {repeat}: softsync {rate:8.0f} samples/s, "
                f"plain {plain:8.0f} samples/s, ratio {ratios[-1]:.3f}"
            )
        print(f"{model_name}: median ratio softsync/plain = {statistics.median(ratios):.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
