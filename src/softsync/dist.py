"""`python -m softsync.dist [train flags]`: one rank of a dist run, for torchrun.

    torchrun --nnodes N --node-rank K --nproc-per-node P --master-addr HOST --master-port PORT \\
        -m softsync.dist --config run.toml

The world size must be λ + 1: rank 0 is the parameter server (and writes the run directory),
ranks 1..λ are the learners. The same flags as `softsync train`; `--engine dist` is implied.
"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:], "--engine", "dist"]))  # last, so that it wins
