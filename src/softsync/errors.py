"""softsync's errors. Each kind carries its exit code; `report` is the one place that prints them.

Bad input (a flag, a config value, a dataset file, a run directory, a checkpoint) is a UserError:
one line, exit 2, and nothing was started or written. A failed run (a lost server, every learner
lost, a hung peer) is a RunError: one line, exit 1.
"""

from __future__ import annotations

import sys


class SoftsyncError(Exception):
    """Base of every error softsync reports as one line."""

    exit_code = 1
    reported = False  # True when another process (a rank) has already printed the cause


class UserError(SoftsyncError, ValueError):
    """Bad input; the message is one line naming the value and what is allowed."""

    exit_code = 2


class ConfigError(UserError):
    """A bad option value."""


class DataError(UserError):
    """Missing or corrupt data; the message names the problem and how to fix it."""


class RunDirError(UserError):
    """A run directory or its checkpoint that cannot be used."""


class RunError(SoftsyncError, RuntimeError):
    """A run that failed while training (a lost, hung or misbehaving peer)."""


class ServerLost(RunError):
    """A learner lost its connection to the server: a consequence, which the server or the launcher reports."""


def report(error: BaseException, where: str = "") -> int:
    """Print ``error`` as `softsync: error: [where: ]...` (unless a rank already did); return its exit code.

    ``where`` names the process for a failure that is not bad input (e.g. "rank 2").
    """
    if isinstance(error, (KeyboardInterrupt, SystemExit)):  # Ctrl-C; SIGTERM or SIGHUP (processes.ended_by_signals)
        print("softsync: interrupted", file=sys.stderr)
        code = error.code if isinstance(error, SystemExit) else 130
        return code if isinstance(code, int) else 1
    if isinstance(error, SoftsyncError):
        if not error.reported:
            prefix = f"{where}: " if where and not isinstance(error, UserError) else ""
            print(f"softsync: error: {prefix}{error}", file=sys.stderr)
        return error.exit_code
    raise error


def first_line(error: BaseException) -> str:
    """``Kind: first line of the message``, for a user's code that raised: enough to find it, on one line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
