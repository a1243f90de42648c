"""What --tensorboard costs: a dist run with TensorBoard logging against the same run without.

    .venv/bin/python bench/tensorboard_overhead.py [--model mlp] [--learners 2] [--log-every 100] [--repeats 3]

Fashion-MNIST, μ = 32, async, 1 epoch, evaluation on the first 100 test samples, one torch thread per learner;
the runs alternate off, on, off, on, ... in this one script run, so that the machine's drift falls on both
sides. samples_per_s leaves out start-up and the epoch end (where the per-epoch scalars, the histogram and the
flush are): what it measures is the hot path, `Recorder.gradient_applied` on every gradient and the train/*
scalars every K updates. Prints each run's samples/s and the median ratio on/off (target >= 0.98).
"""

from __future__ import annotations

import argparse
import statistics

from common import softsync_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(
        f"Fashion-MNIST, {args.model}, μ = {args.batch_size}, async, λ = {args.learners} (dist), "
        f"{args.epochs} epoch(s); --tensorboard --log-every {args.log_every} against no logging"
    )
    ratios = []
    for repeat in range(args.repeats):
        rates = {}
        for board in (False, True):
            rates[board] = softsync_rate(
                args.model, args.learners, args.batch_size, args.epochs, tensorboard=board, log_every=args.log_every
            )
        ratios.append(rates[True] / rates[False])
        print(
            f"  repeat {repeat}: off {rates[False]:8.0f} samples/s, on {rates[True]:8.0f} samples/s, "
            f"ratio {ratios[-1]:.3f}"
        )
    print(f"{args.model}: median ratio on/off = {statistics.median(ratios):.3f} (target >= 0.98)")


if __name__ == "__main__":
    main()
