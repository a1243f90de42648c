"""softsync against DistributedDataParallel: samples/s and wall time to a test accuracy.

    .venv/bin/python bench/vs_ddp.py [--epochs 4] [--target 0.88] [--model cnn-bench] [--lr 0.02]

Fashion-MNIST, 2 processes of 1 thread each, the same model, μ = 32 per process (global batch 64),
torch SGD with momentum 0.9, the same per-epoch sample order. DDP (gloo) all-reduces every step;
softsync runs 2 learners (+ the server process) under hardsync, 1-softsync and async with α0/τ.
Everything runs twice: all learners at full speed, then with the second slowed 2× (softsync
`--learner-speeds 1,0.5`; the DDP rank sleeps as long as it computed). Test error is measured
at every epoch end on the full test set; "time to target" is the wall time (evaluations included,
alike for both) at the first epoch end whose accuracy reaches the target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from softsync import train
from softsync.data import epoch_permutation
from softsync.datasets import load_dataset
from softsync.engines.launch import free_port
from softsync.learner import evaluate
from softsync.models import build_model


def ddp_rank(rank: int, args) -> None:
    torch.set_num_threads(1)
    dataset = load_dataset("fashion-mnist")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=300))
    model = torch.nn.parallel.DistributedDataParallel(
        build_model(args.model, dataset.input_shape, dataset.num_classes, seed=0)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    slowdown = 1.0 if (args.straggler and rank == 1) else 0.0  # speed 0.5: sleep as long as it computed
    rounds = len(dataset.train.targets) // (2 * args.batch_size)
    records, evaluation_s = [], 0.0
    dist.barrier()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = epoch_permutation(len(dataset.train.targets), 0, epoch)
        for step in range(rounds):
            began = time.perf_counter()
            index = 2 * step + rank
            samples = order[index * args.batch_size : (index + 1) * args.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(dataset.train.inputs[samples]), dataset.train.targets[samples]).backward()
            optimizer.step()
            if slowdown:
                time.sleep((time.perf_counter() - began) * slowdown)
        dist.barrier()
        paused = time.perf_counter()
        if rank == 0:
            _, error = evaluate(model.module, dataset.test)
            records.append({"epoch": epoch + 1, "wall_s": time.perf_counter() - start, "test_error": error})
        dist.barrier()
        evaluation_s += time.perf_counter() - paused
    if rank == 0:
        samples = args.epochs * rounds * 2 * args.batch_size
        print(json.dumps({"records": records, "samples_per_s": samples / (time.perf_counter() - start - evaluation_s)}))
    dist.destroy_process_group()


def run_ddp(args, straggler: bool) -> dict:
    environment = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        __file__,
        "--epochs",
        str(args.epochs),
        "--model",
        args.model,
        "--lr",
        str(args.lr),
        "--batch-size",
        str(args.batch_size),
    ] + (["--straggler"] if straggler else [])
    children = [
        subprocess.Popen(command + ["--ddp-rank", str(rank)], stdout=subprocess.PIPE, text=True, env=environment)
        for rank in (0, 1)
    ]
    outputs = [child.communicate(timeout=3600)[0] for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    return json.loads(outputs[0].strip().splitlines()[-1])


def run_softsync(args, protocol: str, straggler: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        summary = train(
            engine="dist",
            protocol=protocol,
            learners=2,
            batch_size=args.batch_size,
            model=args.model,
            lr=args.lr,
            momentum=0.9,
            epochs=args.epochs,
            quiet=True,
            out=f"{out}/run",
            learner_speeds="1,0.5" if straggler else "",
        )
        records = [json.loads(line) for line in open(f"{out}/run/metrics.jsonl")]
    return {"records": records, "samples_per_s": summary["samples_per_s"]}


def time_to(records: list[dict], target: float) -> str:
    for record in records:
        if record["test_error"] <= 1 - target:
            return f"{record['wall_s']:6.1f} s (epoch {record['epoch']})"
    return "not reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--model", default="cnn-bench")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--straggler", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_rank is not None:
        return ddp_rank(args.ddp_rank, args)
    print(
        f"{args.model}, Fashion-MNIST, 2 processes × μ = {args.batch_size}, lr {args.lr}, momentum 0.9, "
        f"{args.epochs} epochs, target accuracy {args.target:.0%}"
    )
    for straggler in (False, True):
        print("with the second learner slowed 2×:" if straggler else "all learners at full speed:")
        results = {"DDP (all-reduce)": run_ddp(args, straggler)}
        for protocol in ("hardsync", "1-softsync", "async"):
            results[f"softsync {protocol}"] = run_softsync(args, protocol, straggler)
        for name, result in results.items():
            errors = " ".join(f"{r['test_error']:.3f}" for r in result["records"])
            print(
                f"  {name:22s} {result['samples_per_s']:7.0f} samples/s, to {args.target:.0%}: "
                f"{time_to(result['records'], args.target)}; test error by epoch: {errors}"
            )


if __name__ == "__main__":
    main()
