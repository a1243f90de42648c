"""Transport: softsync's push+pull against raw gloo send/recv of the same bytes.

    .venv/bin/python bench/transport.py [--model mlp] [--batch-size 32] [--messages 3000] [--repeats 3]

Two processes on 127.0.0.1, one thread each. Raw: the learner side sends a buffer of the size of
softsync's push message and receives one of the size of its pull answer, back to back. softsync:
the real dist server (async, 1 learner) and a real learner whose gradient computation is skipped
(it pushes zeros), so every step is exactly push → server update → pull. Prints bytes/s of both
and the ratio softsync/raw.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from softsync.config import make_config
from softsync.datasets import load_dataset
from softsync.engines.dist import HEADER
from softsync.engines.launch import free_port, run_rank
from softsync.models import build_model, count_parameters


def sizes(model: str, batch_size: int) -> tuple[int, int]:
    """(push, pull) message lengths in float32 values."""
    dataset = load_dataset("fashion-mnist")
    parameters = count_parameters(build_model(model, dataset.input_shape, dataset.num_classes))
    return HEADER + parameters, HEADER + batch_size + parameters


def raw(rank: int, push: int, pull: int, messages: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    outgoing, incoming = (torch.zeros(push), torch.zeros(pull)) if rank == 1 else (torch.zeros(pull), torch.zeros(push))
    for warm in (True, False):
        count = 50 if warm else messages
        start = time.perf_counter()
        for _ in range(count):
            if rank == 1:
                dist.send(outgoing, 0)
                dist.recv(incoming, 0)
            else:
                dist.recv(incoming, 1)
                dist.send(outgoing, 1)
    elapsed = time.perf_counter() - start
    if rank == 1:
        print(json.dumps({"bytes_per_s": messages * (push + pull) * 4 / elapsed}))
    dist.destroy_process_group()


def softsync(rank: int, model: str, batch_size: int, epochs: int, out: str) -> None:
    from softsync.engines import dist as engine

    config = make_config(
        engine="dist",
        protocol="async",
        learners=1,
        batch_size=batch_size,
        model=model,
        epochs=epochs,
        eval_samples=10,
        quiet=True,
        out=out,
    )
    if rank == 1:
        original_init = engine.DistLearner.__init__

        def skip_compute(self, *args):
            original_init(self, *args)
            self.learner.gradient = lambda weights, x, y: (self.learner.gradients, 0.0)

        engine.DistLearner.__init__ = skip_compute
    summary = run_rank(config, None, prepared=False)
    if rank == 0:
        print(json.dumps({"messages_per_s": summary["samples_per_s"] / batch_size}))


def spawn(arguments: list[str]) -> dict:
    environment = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--rank", str(rank), *arguments],
            stdout=subprocess.PIPE,
            text=True,
            env={**environment, "RANK": str(rank)},
        )
        for rank in (0, 1)
    ]
    outputs = [child.communicate(timeout=600)[0] for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    return json.loads(next(line for output in outputs for line in output.splitlines() if line.startswith("{")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--epochs", type=int, default=3, help="softsync epochs of N//μ steps; raw does as many round trips"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    push, pull = sizes(args.model, args.batch_size)
    if args.mode == "raw":
        return raw(args.rank, push, pull, args.epochs * (60000 // args.batch_size))
    if args.mode == "softsync":
        return softsync(args.rank, args.model, args.batch_size, args.epochs, args.out)
    print(
        f"{args.model}: push {push * 4 / 1e3:.0f} kB, pull {pull * 4 / 1e3:.0f} kB per step; 2 processes, 1 thread each"
    )
    ratios = []
    for repeat in range(args.repeats):
        common = ["--model", args.model, "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
        raw_rate = spawn(["--mode", "raw", *common])["bytes_per_s"]
        with tempfile.TemporaryDirectory() as out:
            rate = spawn(["--mode", "softsync", *common, "--out", out + "/run"])
        ours = rate["messages_per_s"] * (push + pull) * 4
        ratios.append(ours / raw_rate)
        print(
            f"  repeat {repeat}: raw gloo {raw_rate / 1e9:.2f} GB/s, "
            f"softsync push+pull {ours / 1e9:.2f} GB/s, ratio {ratios[-1]:.3f}"
        )
    print(f"{args.model}: median ratio softsync/raw = {statistics.median(ratios):.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
