"""`python -m softsync.torchrun [train flags]`: one rank of a dist run, for torchrun.

    torchrun --nnodes N --node-rank K --nproc-per-node P --master-addr HOST --master-port PORT \\
        [--max-restarts R] -m softsync.torchrun --config run.toml

(`-m softsync.dist` is the same, under its earlier name.) A script of your own that calls
`softsync.train(..., engine="dist")` runs under torchrun the same way, in place of `-m softsync.torchrun`.

The world size must be λ + 1: rank 0 is the parameter server (and writes the run directory),
ranks 1..λ are the learners. The same flags as `softsync train`; `--engine dist` is implied.

Under `--max-restarts`, torchrun starts every rank again when one fails. A restarted rank
(TORCHELASTIC_RESTART_COUNT > 0) continues the run in `--out` from its last checkpoint, as
`--resume` would; if the run failed before its first checkpoint, it starts again from scratch
(rank 0 creates the run directory again over what the failed attempt left). softsync.train
does this (train.resolve), so a script of your own restarts the same way.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:], "--engine", "dist"]))  # --engine last, so that it wins
