"""Wall time of a simulated epoch against a plain torch SGD loop doing the same gradient steps.

    .venv/bin/python bench/sim_overhead.py [--models mlp,cnn-small] [--repeats 3] [--samples 60000]

Simulated side: λ = 30 learners, μ = 4, 30-softsync (c = 1), one epoch of Fashion-MNIST, through
softsync.train (data server, parameter server, staleness bookkeeping, event queue, evaluation
excluded). Plain side: the same number of μ-sized steps of torch.optim.SGD on the same model and
data. Both sides run in this process with one torch thread, alternately; the ratio of each pair
is printed and the median reported (the machine is shared, so absolute times drift).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from softsync.datasets import load_dataset

from common import plain_loop, sim_epoch


def simulated_epoch(model_name: str, dataset, batch_size: int, seed: int) -> tuple[float, int]:
    return sim_epoch(model_name, dataset, 30, batch_size, seed)  # async at λ = 30 is 30-softsync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn-small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=60000, help="training samples used (an epoch of them)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("fashion-mnist")
    if args.samples < len(dataset.train.targets):
        dataset.train.inputs, dataset.train.targets = (
            dataset.train.inputs[: args.samples],
            dataset.train.targets[: args.samples],
        )
    # warm-up: first calls import and initialise parts of torch; neither side should pay for that
    small = load_dataset("synthetic", synthetic_size=256)
    for model_name in args.models.split(","):
        simulated_epoch(model_name, small, args.batch_size, seed=0)
        plain_loop(model_name, small, 8, args.batch_size, seed=0)
    print(f"Fashion-MNIST, {len(dataset.train.targets)} samples, μ = {args.batch_size}, λ = 30, 30-softsync, 1 thread")
    for model_name in args.models.split(","):
        ratios = []
        for repeat in range(args.repeats):
            sim_s, steps = simulated_epoch(model_name, dataset, args.batch_size, seed=repeat)
            plain_s = plain_loop(model_name, dataset, steps, args.batch_size, seed=repeat)
            ratios.append(sim_s / plain_s)
            print(
                f"  {model_name:10s} repeat {repeat}: sim epoch {sim_s:7.2f} s, plain loop {plain_s:7.2f} s "
                f"({steps} steps), ratio {ratios[-1]:.3f}"
            )
        print(f"{model_name}: median ratio sim/plain = {statistics.median(ratios):.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()
