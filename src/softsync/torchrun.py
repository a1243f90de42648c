"""`python -m softsync.torchrun [train flags]`: one rank of a dist run, for torchrun.

    torchrun --nnodes N --node-rank K --nproc-per-node P --master-addr HOST --master-port PORT \\
        [--max-restarts R] -m softsync.torchrun --config run.toml

(`-m softsync.dist` is the same, under its earlier name.)

The world size must be λ + 1: rank 0 is the parameter server (and writes the run directory),
ranks 1..λ are the learners. The same flags as `softsync train`; `--engine dist` is implied.

Under `--max-restarts`, torchrun starts every rank again when one fails. A restarted rank
(TORCHELASTIC_RESTART_COUNT > 0) continues the run in `--out` from its last checkpoint, as
`--resume` would; if the run failed before its first checkpoint, it starts again from scratch
(rank 0 creates the run directory again over what the failed attempt left).
"""

import os
import sys

from .cli import build_parser, main, train_options
from .config import ConfigError, make_config
from .rundir import run_progress


def restart_flags(argv: list[str]) -> list[str]:
    """The flags that make a restarted rank continue its run: --resume OUT when OUT has a checkpoint."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return []
    try:
        options = train_options(build_parser().parse_args(["train", *argv]))
        config = make_config(**options)
    except ConfigError:
        return []  # the run itself reports the bad value
    if config.resume:
        return []
    out = config.out or config.default_out()
    return ["--resume", out] if run_progress(out) == "resumable" else []


if __name__ == "__main__":
    arguments = sys.argv[1:]
    sys.exit(
        main(["train", *arguments, *restart_flags(arguments), "--engine", "dist"])
    )  # --engine last, so that it wins
