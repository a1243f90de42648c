"""A user's model and dataset by file spec against the same built-ins: the generic data path must not cost.

    .venv/bin/python bench/user_spec.py [--learners 2] [--batch-size 32] [--epochs 1] [--repeats 3]

Writes a plain Python file into a temporary directory with `make_model()` (the built-in `cnn-small`
for Fashion-MNIST), `make_data()` (the built-in Fashion-MNIST, preprocessed alike, as two
`TensorDataset`s: softsync indexes them at once, as it does its own data) and `make_items()` (the
same tensors behind a plain map-style Dataset class: read item by item and batched with
`default_collate`). Then runs, alternating A, B, C per repeat, under the dist engine, async,
λ = 2, μ = 32, one thread per process, 1 epoch of Fashion-MNIST:

    A  model="cnn-small",       dataset="fashion-mnist"
    B  model="FILE:make_model", dataset="FILE:make_data"     (TensorDataset: the in-memory path)
    C  model="FILE:make_model", dataset="FILE:make_items"    (item by item + default_collate)

Prints each run's samples/s (softsync's samples_per_s: start-up and the epoch-end evaluation left
out) and the median ratios B/A (the issue's acceptance: >= 0.97) and C/A. First, in this process, it
times the one per-step difference: collating one mini-batch of μ random indices
(`softsync.datasets.batcher`) from each kind of split, the three timed side by side within seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from softsync import specs
from softsync.datasets import batcher, load_dataset

from common import softsync_rate

USER_FILE = '''\
"""A user's task, as a user would write it: factories softsync loads by file spec."""

import torch
from torch.utils.data import Dataset, TensorDataset

from softsync.datasets import load_dataset
from softsync.models import build_model


def make_model():
    return build_model("cnn-small", (1, 28, 28), 10)


def make_data():
    data = load_dataset("fashion-mnist")
    return (
        TensorDataset(data.train.inputs, data.train.targets),
        TensorDataset(data.test.inputs, data.test.targets),
    )


class Items(Dataset):
    """A plain map-style dataset: one (image, label) pair per index."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.inputs[index], self.targets[index]


def make_items():
    data = load_dataset("fashion-mnist")
    return Items(data.train.inputs, data.train.targets), Items(data.test.inputs, data.test.targets)
'''


def collate_time(path: Path, batch_size: int, batches: int = 2000) -> None:
    """Print the time of one mini-batch's collation from each kind of training split (median of 5 rounds)."""
    splits = {
        "A built-in": load_dataset("fashion-mnist").train,
        "B TensorDataset": specs.load(f"{path}:make_data", "--dataset")()[0],
        "C item by item": specs.load(f"{path}:make_items", "--dataset")()[0],
    }
    generator = torch.Generator().manual_seed(0)
    indices = [torch.randperm(len(splits["A built-in"]), generator=generator)[:batch_size] for _ in range(batches)]
    print(f"collating one mini-batch of μ = {batch_size} random indices (this process, 1 thread):")
    for side, split in splits.items():
        collate, rounds = batcher(split), []
        for _ in range(5):
            start = time.perf_counter()
            for batch in indices:
                collate(batch, 0)
            rounds.append((time.perf_counter() - start) / batches)
        print(f"  {side:16s} {statistics.median(rounds) * 1e6:6.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "user_task.py"
        path.write_text(USER_FILE)
        torch.set_num_threads(1)
        collate_time(path, args.batch_size)
        sides = {
            "A built-in": ("cnn-small", "fashion-mnist"),
            "B TensorDataset": (f"{path}:make_model", f"{path}:make_data"),
            "C item by item": (f"{path}:make_model", f"{path}:make_items"),
        }
        print(
            f"Fashion-MNIST, cnn-small, dist async, λ = {args.learners}, μ = {args.batch_size}, "
            f"{args.epochs} epoch(s), 1 thread per process"
        )
        rates: dict[str, list[float]] = {side: [] for side in sides}
        for repeat in range(args.repeats):
            for side, (model, dataset) in sides.items():
                rates[side].append(softsync_rate(model, args.learners, args.batch_size, args.epochs, dataset=dataset))
                print(f"  repeat {repeat} {side:16s} {rates[side][-1]:8.0f} samples/s", flush=True)
    a, b, c = rates.values()
    over_a = [[x / y for x, y in zip(side, a, strict=True)] for side in (b, c)]
    for name, ratios in zip(("B/A (TensorDataset / built-in)", "C/A (item by item / built-in)"), over_a, strict=True):
        listed = ", ".join(f"{ratio:.3f}" for ratio in ratios)
        target = " (target >= 0.97)" if name.startswith("B") else ""
        print(f"{name}: {listed} → median {statistics.median(ratios):.3f}{target}")


if __name__ == "__main__":
    main()
