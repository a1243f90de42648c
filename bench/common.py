"""Shared pieces of the benchmarks: a plain torch training loop, the baseline every ratio uses."""

from __future__ import annotations

import tempfile
import time

import torch
import torch.nn.functional as F

from softsync import train
from softsync.models import build_model


def plain_loop(model_name: str, dataset, steps: int, batch_size: int, seed: int = 0, lr: float = 0.01) -> float:
    """Seconds for ``steps`` steps of torch.optim.SGD (momentum 0.9) on μ-sized batches in this process."""
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.randperm(len(dataset.train.targets), generator=torch.Generator().manual_seed(seed))
    per_epoch = len(order) // batch_size
    start = time.perf_counter()
    for step in range(steps):
        index = step % per_epoch
        samples = order[index * batch_size : (index + 1) * batch_size]
        optimizer.zero_grad()
        F.cross_entropy(model(dataset.train.inputs[samples]), dataset.train.targets[samples]).backward()
        optimizer.step()
    return time.perf_counter() - start


def softsync_rate(model: str, learners: int, batch_size: int, epochs: int, protocol: str = "async", **options) -> float:
    """samples/s of a dist run on Fashion-MNIST (start-up and epoch-end evaluation left out); ``options``: more
    `softsync.train` options."""
    with tempfile.TemporaryDirectory() as out:
        summary = train(
            engine="dist",
            protocol=protocol,
            learners=learners,
            batch_size=batch_size,
            model=model,
            epochs=epochs,
            lr=0.01,
            momentum=0.9,
            eval_samples=100,
            quiet=True,
            out=f"{out}/run",
            **options,
        )
    return summary["samples_per_s"]


def sim_epoch(model: str, dataset, learners: int, batch_size: int, seed: int, lr: float = 0.01) -> tuple[float, int]:
    """(wall seconds, gradients) of one async epoch of ``dataset`` under the sim through softsync.train, the
    evaluation cut to one sample."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = train(
            data=dataset,
            dataset=dataset.name,
            model=model,
            protocol="async",
            learners=learners,
            batch_size=batch_size,
            lr=lr,
            momentum=0.9,
            epochs=1,
            seed=seed,
            eval_samples=1,
            quiet=True,
            out=f"{out}/run",
        )
        return time.perf_counter() - start, summary["gradients"]
