"""The parameter server alone: updates/s and answered pulls/s, by model size, shards and threads.

    .venv/bin/python bench/server_speed.py [--parameters 10000000,72000000] [--shards 1,2] [--threads 1,2]

An update is an async push of one gradient into softsync's ParameterServer (the finiteness check and
the fused SGD step with momentum 0.9); an answered pull is the copy of θ into a message buffer, as
the dist server does. A server of S shards has P/S parameters in each shard, all working at once on
their own node, so its rate is that of one shard. T is torch.set_num_threads of the process. The
rates are medians of --repeats, each of --steps operations; every configuration runs in this process,
so their ratios are side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from softsync.protocol import parse_protocol
from softsync.server import ParameterServer


def rates(parameters: int, steps: int, repeats: int) -> tuple[float, float]:
    """(updates/s, answered pulls/s) of a server of ``parameters``."""
    server = ParameterServer(torch.zeros(parameters), parse_protocol("async", 1), 1, lr=0.01, momentum=0.9)
    gradient, message = torch.full((parameters,), 1e-3), torch.empty(parameters)
    server.push(gradient, server.clock, 0)  # allocates the momentum buffer
    updates, answers = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            server.push(gradient, server.clock, 0)
        updates.append(steps / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(steps):
            message.copy_(server.weights)
        answers.append(steps / (time.perf_counter() - start))
    return statistics.median(updates), statistics.median(answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parameters", default="10000000,72000000")
    parser.add_argument("--shards", default="1,2")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("parameters  shards  threads   updates/s   answers/s   (update, answer ms)")
    for parameters in map(int, args.parameters.split(",")):
        for shards in map(int, args.shards.split(",")):
            for threads in map(int, args.threads.split(",")):
                torch.set_num_threads(threads)
                update_rate, answer_rate = rates(parameters // shards, args.steps, args.repeats)
                print(
                    f"{parameters:>10,}  {shards:>6}  {threads:>7}  {update_rate:>10.1f}  {answer_rate:>10.1f}"
                    f"   ({1e3 / update_rate:.1f}, {1e3 / answer_rate:.1f})"
                )


if __name__ == "__main__":
    main()
