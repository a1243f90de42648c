"""A character-level language model trained asynchronously with softsync, on any text file.

It shows softsync on a model and a task of your own: a tiny GRU reads --context characters and predicts each next
one. By default λ = 4 learners push gradients asynchronously: every gradient is an update, and a gradient is about
λ − 1 updates stale when it arrives (the other learners pushed meanwhile). The parameter server divides the learning
rate by each gradient's staleness τ, α0/τ: the paper's rule, which lets async training converge like synchronous
training. The script prints the test loss in nats and bits per character.

    python examples/char_lm.py --text FILE                               # sim: λ learners simulated in one process
    python examples/char_lm.py --text FILE --engine dist --learners 4    # real processes: a server and 4 learners
    torchrun --nproc-per-node 5 examples/char_lm.py --text FILE --engine dist --learners 4

The model, data and loss are the factories below, at the top level of this file: under --engine dist every
learner process loads this file by its path (not as __main__) and calls them. They take no arguments, so the
settings they need (the text file, --context, --hidden) reach them through environment variables, which the
processes inherit (under torchrun every rank runs this script and sets them itself).

What to expect (measured once: the defaults, seed 0, 3 epochs under sim, about 20 s on one core): on 151 KB of
English (cd /usr/share/common-licenses && cat Apache-2.0 GFDL-1.2 GFDL-1.3 GPL-2 GPL-3 LGPL-2.1 MPL-2.0), async with
α0/τ ends at a test loss of 2.02 nats/char (2.92 bits/char), hardsync at 2.08 and async with a constant rate
(--lr-policy constant) at 2.37.

Torch threads: softsync sets them. The sim runs one gradient at a time on one thread; under dist the server uses
one thread and each learner --threads-per-learner.
"""

import argparse
import math
import os
import sys
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import softsync

TEXT, CONTEXT, HIDDEN = "SOFTSYNC_CHAR_LM_TEXT", "SOFTSYNC_CHAR_LM_CONTEXT", "SOFTSYNC_CHAR_LM_HIDDEN"
TRAIN_FRACTION = 0.9  # the first 90% of the text is for training, the last 10% for testing


# ----------------------------------------------------------------------------- data


@cache
def read_text(path: str) -> tuple[str, list[str]]:
    """The text of a UTF-8 file and its vocabulary, the sorted set of its characters."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return text, sorted(set(text))


def windows(ids: torch.Tensor, context: int) -> TensorDataset:
    """Non-overlapping windows of ``context`` characters, each with the same window shifted by one as its target."""
    count = (len(ids) - 1) // context
    inputs = ids[: count * context].view(count, context)
    targets = ids[1 : count * context + 1].view(count, context)
    return TensorDataset(inputs, targets)


def make_data() -> tuple[TensorDataset, TensorDataset]:
    """(train, test): windows of the first 90% and of the last 10% of the text, as character ids."""
    text, vocab = read_text(os.environ[TEXT])
    index = {char: i for i, char in enumerate(vocab)}
    ids = torch.tensor([index[char] for char in text], dtype=torch.long)
    split = int(TRAIN_FRACTION * len(ids))
    context = int(os.environ[CONTEXT])
    return windows(ids[:split], context), windows(ids[split:], context)


# ----------------------------------------------------------------------------- model and loss


class CharGRU(nn.Module):
    """Embedding → one GRU layer → linear to the vocabulary: ids (N, T) → next-character logits (N, T, V)."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.embed(ids))
        return self.head(states)


def make_model() -> CharGRU:
    _, vocab = read_text(os.environ[TEXT])  # the same vocabulary as make_data's
    return CharGRU(len(vocab), int(os.environ[HIDDEN]))


def next_char_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) over every next-character prediction of the mini-batch."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# ----------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="char_lm.py",
        description="Train a tiny character-level GRU language model on a text file with softsync.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text: first 90%% trains, last 10%% tests")
    parser.add_argument("--engine", choices=["sim", "dist"], default="sim", help="simulated learners or processes")
    parser.add_argument("--learners", type=int, default=4, help="learners λ")
    parser.add_argument("--protocol", default="async", help="hardsync, N-softsync or async")
    parser.add_argument("--lr-policy", default="staleness", help="α(τ): staleness (α0/τ), constant or mean")
    parser.add_argument("--lr", type=float, default=0.1, help="base learning rate α0")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, on the server")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per mini-batch μ, per learner")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training windows")
    parser.add_argument("--context", type=int, default=32, help="characters per window T")
    parser.add_argument("--hidden", type=int, default=128, help="width of the embedding and of the GRU")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the data order and the sim")
    parser.add_argument("--out", default="runs/char-lm", help="run directory (it must not hold a run already)")
    parser.add_argument("--threads-per-learner", type=int, default=1, help="dist: torch threads of each learner")
    parser.add_argument("--timeout", type=float, default=120, help="dist: seconds any blocking operation may wait")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"char_lm.py: error: {message}", file=sys.stderr)
        return 2

    try:
        text, vocab = read_text(os.path.abspath(args.text))
    except OSError as error:
        return fail(f"cannot read --text {args.text}: {error.strerror or error}")
    except UnicodeDecodeError as error:
        return fail(f"--text {args.text} is not UTF-8 text: {error.reason} at byte {error.start}")
    if args.context < 1 or args.hidden < 1:
        return fail(f"--context {args.context} and --hidden {args.hidden} must be at least 1")
    split = int(TRAIN_FRACTION * len(text))
    if min(split, len(text) - split) < args.context + 1:
        return fail(
            f"--text {args.text} has {len(text)} characters: too short for one training and one test window of "
            f"--context {args.context} (10% of the text must hold {args.context + 1} characters)"
        )

    # what the factories read, here and in every process the dist engine starts
    os.environ[TEXT] = os.path.abspath(args.text)
    os.environ[CONTEXT] = str(args.context)
    os.environ[HIDDEN] = str(args.hidden)
    try:
        summary = softsync.train(
            model=make_model,
            data=make_data,
            loss=next_char_loss,
            engine=args.engine,
            protocol=args.protocol,
            learners=args.learners,
            lr_policy=args.lr_policy,
            lr=args.lr,
            momentum=args.momentum,
            batch_size=args.batch_size,
            epochs=args.epochs,
            seed=args.seed,
            out=args.out,
            threads_per_learner=args.threads_per_learner,
            timeout=args.timeout,
            quiet=args.quiet,
        )
    except softsync.SoftsyncError as error:  # bad options, a failed run: softsync's one line
        if not error.reported:
            print(f"char_lm.py: error: {error}", file=sys.stderr)
        return error.exit_code
    if summary is None:  # a learner rank under torchrun: rank 0 reports
        return 0
    loss = summary["test_loss"]
    print(
        f"{len(text)} characters, vocabulary of {len(vocab)}; {summary['status']} after {args.epochs} epochs, "
        f"mean staleness {summary['staleness']['mean']:.2f}"
    )
    print(f"test loss {loss:.4f} nats/char = {loss / math.log(2):.4f} bits/char (run directory: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
