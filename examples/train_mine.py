"""Your own model, data and loss, trained asynchronously by softsync: the script DDP users would write.

    python examples/train_mine.py                                  # sim engine: one process, virtual time
    python examples/train_mine.py --engine dist --learners 4       # 5 local processes: a server and 4 learners
    torchrun --nproc-per-node 5 examples/train_mine.py --engine dist --learners 4
    torchrun --nnodes 2 --node-rank K --nproc-per-node 3 --master-addr HOST --master-port 29500 \\
        examples/train_mine.py --engine dist --learners 5 --out /shared/runs/mine

Under torchrun every rank runs this script; softsync.train gives rank 0 the parameter server (it
writes the run directory) and ranks 1..λ the learners, so the world size is λ + 1. Every process
builds its own model and data by calling the factories below: they must be defined at the top level
(softsync finds them in other processes by this file's path and their name) and the training call
must sit under `if __name__ == "__main__":`, which the other processes do not run. On several nodes,
each needs this file at the same path and the data.
"""

import argparse
import os

import torch
from torch import nn
from torch.utils.data import TensorDataset

import softsync
from softsync.datasets import load_dataset

# Factories take no arguments: settings reach the other processes through the environment, which they inherit
SUBSET = "TRAIN_MINE_SUBSET"


def make_model() -> nn.Module:
    """A small CNN for 28×28 grey images; softsync seeds the call, so every process builds the same weights."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),  # softsync seeds each mini-batch's random numbers: runs still replay exactly
        nn.Linear(32 * 7 * 7, 10),
    )


def make_data() -> tuple[TensorDataset, TensorDataset]:
    """(train, test): any map-style datasets of (input, target) pairs work; these are Fashion-MNIST in memory."""
    data = load_dataset("fashion-mnist")  # Debian's dataset-fashion-mnist, or $SOFTSYNC_DATA
    subset = int(os.environ.get(SUBSET, "0")) or len(data.train)
    train = TensorDataset(data.train.inputs[:subset], data.train.targets[:subset])
    return train, TensorDataset(data.test.inputs, data.test.targets)


def smoothed_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss: the mean over the mini-batch, as every softsync loss."""
    return nn.functional.cross_entropy(output, target, label_smoothing=0.05)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="sim", choices=["sim", "dist"])
    parser.add_argument("--learners", type=int, default=4)
    parser.add_argument("--protocol", default="async", help="hardsync, N-softsync or async")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.02, help="α0; each gradient's rate is α0/τ")
    parser.add_argument("--subset", type=int, default=0, help="train on the first N samples only (0: all)")
    parser.add_argument("--out", default="runs/train-mine")
    args = parser.parse_args()
    os.environ[SUBSET] = str(args.subset)
    summary = softsync.train(
        model=make_model,
        data=make_data,
        loss=smoothed_cross_entropy,
        engine=args.engine,
        protocol=args.protocol,
        learners=args.learners,
        batch_size=32,
        lr=args.lr,
        momentum=0.9,
        epochs=args.epochs,
        out=args.out,
    )
    if summary is not None:  # None on a learner rank under torchrun: rank 0 holds the summary
        print(f"{summary['status']}: test error {summary['test_error']:.4f}, run in {summary['config']['out']}")
