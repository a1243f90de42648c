"""Measure what the speedup model needs on this machine: gradient times and the link's cost.

    python experiments/calibrate_speedup.py [--batch-size 32]

Prints, for experiments/speedup-predicted.toml:
- the time of one μ-sample gradient (forward + backward) of paper-cifar10 on Fashion-MNIST (90K
  parameters) and of an AlexNet-sized network on 224×224×3 (one thread each, the unit of a learner);
- the latency and bandwidth of gloo send/recv between two processes on 127.0.0.1;
- the parameter server's own work per parameter, on one thread: an async update (the finiteness
  check, the fused SGD step with momentum) and the copy of θ into an answer (the sim's
  --server-update-time and --server-answer-time), for 10M parameters.
Run it on a quiet machine: it measures speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from softsync.datasets import load_dataset
from softsync.engines.launch import free_port
from softsync.models import build_model, count_parameters


def alexnet(classes: int = 1000) -> nn.Module:
    """Krizhevsky et al.'s network as in torchvision (61M parameters): the paper's ImageNet model size."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, classes),
    )


def gradient_seconds(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward."""
    times = []
    for _ in range(repeats + 1):  # the first one warms up allocators
        start = time.perf_counter()
        model.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def server_seconds_per_parameter(parameters: int = 10_000_000, repeats: int = 5) -> tuple[float, float]:
    """(update, answer) seconds per parameter of the real ParameterServer: an async push of one gradient
    (finiteness check and fused SGD step with momentum 0.9), and the copy of θ into a message."""
    from softsync.protocol import parse_protocol
    from softsync.server import ParameterServer

    server = ParameterServer(torch.zeros(parameters), parse_protocol("async", 1), 1, lr=0.01, momentum=0.9)
    gradient, message = torch.full((parameters,), 1e-3), torch.empty(parameters)
    updates, answers = [], []
    for _ in range(repeats + 1):  # the first allocates the momentum buffer
        start = time.perf_counter()
        server.push(gradient, server.clock, 0)
        updates.append(time.perf_counter() - start)
        start = time.perf_counter()
        message.copy_(server.weights)
        answers.append(time.perf_counter() - start)
    return statistics.median(updates[1:]) / parameters, statistics.median(answers[1:]) / parameters


def ping_pong(rank: int, port: int, sizes: list[int], repeats: int, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    for size in sizes:
        message = torch.zeros(max(1, size // 4))
        times = []
        for _ in range(repeats + 2):
            start = time.perf_counter()
            if rank == 0:  # a push then a pull: the learner's side of one gradient
                dist.send(message, 1)
                dist.recv(message, 1)
            else:
                dist.recv(message, 0)
                dist.send(message, 0)
            times.append(time.perf_counter() - start)
        if rank == 0:
            results[size] = statistics.median(times[2:]) / 2  # one message
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    data = load_dataset("fashion-mnist", seed=0)
    small = build_model("paper-cifar10", data.input_shape, data.num_classes, seed=0)
    small_params = count_parameters(small)
    small_s = gradient_seconds(
        small, data.train.inputs[: args.batch_size], data.train.targets[: args.batch_size], repeats=50
    )
    big = alexnet()
    big_params = count_parameters(big)
    images = torch.randn(args.batch_size, 3, 224, 224)
    big_s = gradient_seconds(big, images, torch.randint(0, 1000, (args.batch_size,)), repeats=3)

    update_time, answer_time = server_seconds_per_parameter()

    sizes = [4, small_params * 4, 64 * 2**20]
    results = mp.Manager().dict()
    mp.spawn(ping_pong, args=(free_port(), sizes, 20, results), nprocs=2, join=True)
    latency = results[4]
    bandwidth = sizes[2] / (results[sizes[2]] - latency)
    print(
        f"paper-cifar10 on 28×28×1: {small_params} parameters, gradient of μ={args.batch_size}: {small_s * 1e3:.2f} ms"
    )
    print(f"AlexNet on 224×224×3: {big_params} parameters, gradient of μ={args.batch_size}: {big_s:.3f} s")
    print(
        f"gloo on 127.0.0.1: latency {latency * 1e6:.0f} µs, bandwidth {bandwidth / 1e9:.2f} GB/s; "
        f"a paper-cifar10 message takes {results[sizes[1]] * 1e3:.3f} ms"
    )
    print("for experiments/speedup-predicted.toml:")
    print(f"  small: step_time = {small_s:.5f}, message_bytes = {small_params * 4}")
    print(f"  large: step_time = {big_s:.4f}, message_bytes = {72_000_000 * 4} (72M parameters)")
    print(f"  bandwidth = {bandwidth:.4g}, latency = {latency:.3g}")
    print(
        f"the server, one thread: an update {update_time * 1e9:.3f} ns and an answer {answer_time * 1e9:.3f} ns "
        f"per parameter ({update_time * 72e6 * 1e3:.0f} ms and {answer_time * 72e6 * 1e3:.0f} ms for 72M)"
    )
    print(f"  server_update_time = {update_time:.4g}, server_answer_time = {answer_time:.4g}")


if __name__ == "__main__":
    main()
