"""Child processes that never outlive the softsync process that started them, and signals that end it cleanly.

Used by the two places that start children: the local dist launch (its ranks) and `softsync sweep`
(its `softsync train` runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

PR_SET_PDEATHSIG = 1


def dying_with_parent(ignore_interrupts: bool = False) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child gets SIGKILL when the thread that started it ends (Linux: PR_SET_PDEATHSIG).

    That thread must wait for the child (both callers do), so the signal only comes when the parent
    dies. ``ignore_interrupts``: the child ignores SIGINT, which a terminal's Ctrl-C sends to the whole
    group, so that the parent alone answers it; an ignored SIGINT stays ignored across exec, and Python
    then installs no KeyboardInterrupt handler. prctl is looked up here: between fork and exec the
    child only calls it. None where there is no prctl (not Linux).
    """
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None
    parent = os.getpid()

    def arm() -> None:
        if ignore_interrupts:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died between fork and prctl: nothing will signal us
                os._exit(1)

    return arm if prctl is not None or ignore_interrupts else None


@contextlib.contextmanager
def ended_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end this process through its clean-up path (SystemExit(128 + signal)), as Ctrl-C does.

    Once: a second signal must not interrupt the clean-up that ends the children.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    leaving: list[int] = []

    def leave(signum: int, frame: object) -> None:
        if not leaving:
            leaving.append(signum)
            raise SystemExit(128 + signum)

    previous = {signum: signal.signal(signum, leave) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_code_within(process: subprocess.Popen, seconds: float) -> int | None:
    """The process's exit code, or None if it is still running after ``seconds``."""
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def end_processes(processes: list[subprocess.Popen], grace: float) -> None:
    """Make sure every process has exited: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.send_signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
    deadline = time.monotonic() + grace
    for process in processes:
        if exit_code_within(process, max(0.0, deadline - time.monotonic())) is None:
            process.kill()
            process.wait(timeout=grace)
