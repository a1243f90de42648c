"""The sim at internet scale: wall time per gradient at λ = 30, 300 and 1000, same model, same μ.

    .venv/bin/python bench/sim_scale.py [--learners 30,300,1000] [--model mlp] [--samples 48000] [--repeats 3]

Each run is one epoch of async (c = 1) on Fashion-MNIST through softsync.train, evaluation on one
sample; the same number of gradients at every λ. The wall time per gradient at each λ is divided by
that at the first λ; target: at most 1.2 at λ = 1000 (the event queue and the per-learner state
must not make a gradient dearer). Runs alternate λ repeat by repeat; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from softsync.datasets import load_dataset

from common import sim_epoch


def seconds_per_gradient(dataset, model: str, learners: int, batch_size: int, seed: int) -> float:
    seconds, gradients = sim_epoch(model, dataset, learners, batch_size, seed, lr=0.001)
    return seconds / gradients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", default="30,300,1000")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--samples", type=int, default=48000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("fashion-mnist")
    dataset.train.inputs = dataset.train.inputs[: args.samples]
    dataset.train.targets = dataset.train.targets[: args.samples]
    sizes = [int(size) for size in args.learners.split(",")]
    seconds_per_gradient(load_dataset("synthetic", synthetic_size=256), args.model, 2, args.batch_size, 0)  # warm-up
    times: dict[int, list[float]] = {size: [] for size in sizes}
    print(f"{args.model}, Fashion-MNIST {args.samples} samples, μ = {args.batch_size}, async, 1 thread")
    for repeat in range(args.repeats):
        for size in sizes:
            times[size].append(seconds_per_gradient(dataset, args.model, size, args.batch_size, seed=repeat))
            print(f"  repeat {repeat}, λ = {size:5d}: {times[size][-1] * 1e6:8.1f} µs a gradient")
    base = statistics.median(times[sizes[0]])
    for size in sizes:
        median = statistics.median(times[size])
        print(f"λ = {size:5d}: median {median * 1e6:8.1f} µs a gradient, {median / base:.3f} × λ = {sizes[0]}")


if __name__ == "__main__":
    main()
