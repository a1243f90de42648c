"""Starting a dist run: λ+1 local processes on 127.0.0.1, or one rank under torchrun.

Locally, this process only supervises: it starts rank 0 (server) and ranks 1..λ (learners) as
children, watches them, and when the run ends, fails or is interrupted, makes sure every one of
them has exited. Under torchrun (RANK and WORLD_SIZE set), the process is one rank itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .. import board, specs
from ..build import batches_per_epoch, build_components, load_task
from ..checkpoint import load_checkpoint
from ..config import TrainConfig, make_config
from ..errors import ConfigError, RunError, ServerLost, SoftsyncError, UserError, report
from ..learner import require_device
from ..processes import dying_with_parent, end_processes, ended_by_signals, exit_code_within
from ..rundir import PROCESSES, SUMMARY, atomic_write_bytes, open_run_dir
from .dist import STORE_FD, SUPERVISED, DistLearner, DistServer, JoinTimeout, init, short

WORKER_CONFIG = "SOFTSYNC_WORKER_CONFIG"
WORKER_PATH = "SOFTSYNC_WORKER_PATH"  # the launcher's sys.path (json)


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def run_rank(config: TrainConfig, checkpoint: dict | None, prepared: bool) -> dict | None:
    """Be one rank of a dist run; rank 0 returns the summary, learners None.

    A failing rank prints one line and leaves with os._exit: its reader threads are blocked
    in gloo, and a normal interpreter exit would abort on them.
    """
    rank: int | str = os.environ.get("RANK", "?")  # for the error line, even before it is parsed
    out: Path | None = None
    serving: DistServer | None = None  # rank 0 once the run is under way (a refused start leaves no status)
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if world != config.learners + 1:
            raise ConfigError(
                f"world size {world} needs --learners {world - 1} (one server rank and one rank per learner)"
            )
        # every rank loads its data and model before the rendezvous, all at once
        if rank == 0:
            torch.set_num_threads(config.server_threads)
            if prepared:  # a local launch: the launcher holds the run directory's lock
                out = Path(str(config.out))
            else:  # torchrun: this rank holds the lock for the life of the process
                board.require(config)
                config, out, _lock = open_run_dir(config, checkpoint)
            parts = build_components(config, out, load_task(config))
        else:
            learner = DistLearner(config, rank - 1)
        init(config, rank, world)
        # who is where, for processes.json (start-up only: pickling is fine here)
        processes: list = [None] * world
        dist.all_gather_object(processes, {"pid": os.getpid(), "host": socket.gethostname()})
        if rank != 0:
            learner.run()
            dist.destroy_process_group()
            return None
        assert out is not None  # rank 0 has opened its run directory
        listing = [{"rank": r, "role": "server" if r == 0 else "learner", **p} for r, p in enumerate(processes)]
        atomic_write_bytes(out / PROCESSES, lambda handle: handle.write(json.dumps(listing, indent=1).encode()))
        server = DistServer(parts, config.timeout, listing)
        server.checkpointer = parts.checkpointer(server.coordinator, server)
        if checkpoint is not None:
            server.checkpointer.restore(checkpoint)
            parts.recorder.resume(parts.server.clock)
            server.coordinator.restart_learners()  # new learner processes: what the old ones computed is lost
        serving = server
        status = server.serve()
        summary = parts.recorder.finish(server.coordinator, status)
        server.report_status(status)
        (out / PROCESSES).unlink(missing_ok=True)
        dist.destroy_process_group()
        return summary
    except BaseException as error:
        if out is not None:
            (out / PROCESSES).unlink(missing_ok=True)
        if serving is not None:  # rank 0: say how the run ended, for `softsync status`; the event file complete
            interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
            message = "" if interrupted else str(error) if isinstance(error, SoftsyncError) else short(error)
            with contextlib.suppress(Exception):  # the error being reported matters more than these files
                serving.recorder.close()
                serving.report_status("interrupted" if interrupted else "failed", message)
        # a learner that gave up on the others is a consequence: rank 0 or the launcher reports the cause
        consequence = isinstance(error, (ServerLost, JoinTimeout)) and rank != 0 and os.environ.get(SUPERVISED)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            code = 130
        elif consequence:
            code = 1
        else:
            code = report(error if isinstance(error, SoftsyncError) else RunError(short(error)), f"rank {rank}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def store_socket(host: str) -> socket.socket:
    """A socket listening on ``host`` only, on a free port: rank 0's rendezvous store takes it over."""
    family, kind, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    listening = socket.socket(family, kind)
    listening.bind(address)
    listening.listen(socket.SOMAXCONN)  # every rank may connect before rank 0 accepts
    return listening


POLL_S = 0.1  # how often the supervisor looks at its children


def supervise(processes: list[subprocess.Popen], timeout: float, out: Path) -> None:
    """Wait for the server to finish; raise RunError if it fails or hangs.

    Learners may die: the server notices, goes on without them and counts them in
    learner_failures. Rank 0 prints the cause of a failure (exit codes 1 and 2); only a server
    killed by a signal, or outliving its learners, is reported here.

    Every wait is bounded. A learner gives up on a silent server after gloo's timeout (2 ×
    ``timeout``); once every learner has exited, the server needs no one to write its summary or
    report its failure, so it gets ``timeout`` seconds more. A rule on the server's silence alone
    would end a server that is legitimately busy, e.g. evaluating a big test set.
    """
    server, learners = processes[0], processes[1:]
    alone_since: float | None = None  # when the server was first seen without a learner
    cpu_then = None
    while (code := exit_code_within(server, POLL_S)) is None:
        if alone_since is None and all(learner.poll() is not None for learner in learners):
            alone_since, cpu_then = time.monotonic(), cpu_seconds(server.pid)
        if alone_since is not None and time.monotonic() - alone_since > timeout:
            cpu_now = cpu_seconds(server.pid)
            busy = cpu_then is not None and cpu_now is not None and cpu_now - cpu_then >= 0.1 * timeout
            raise RunError(outlived_learners(busy, (out / PROCESSES).exists(), timeout))
    if code != 0:
        error = RunError(f"the run failed: the server (rank 0) exited with code {code}")
        error.exit_code = 2 if code == 2 else 1
        error.reported = code in (1, 2)
        raise error
    deadline = time.monotonic() + timeout
    for rank, learner in enumerate(learners, start=1):  # stopped learners exit at once; end_processes ends any other
        if exit_code_within(learner, max(0.1, deadline - time.monotonic())) is None:
            print(
                f"softsync: warning: learner rank {rank} did not stop within --timeout after the server finished; "
                "ending it",
                file=sys.stderr,
                flush=True,
            )
            return


def outlived_learners(busy: bool, joined: bool, timeout: float) -> str:
    """What a server still running ``timeout`` s after its last learner exited was doing, in one line.

    A server that used no CPU in that time is hung. One that did was busy for longer than its
    learners wait for it (gloo's 2 × ``timeout``): starting, or at an epoch end.
    """
    if not busy:
        return (
            f"the server (rank 0) is hung: it made no progress in the {timeout:g} s (--timeout) after its last "
            "learner exited; every process of the run was ended"
        )
    doing = "an epoch end (evaluation, checkpoint)" if joined else "start-up (loading the data, building the model)"
    return (
        f"--timeout {timeout:g} is too short for this run: the learners gave up after waiting 2 × --timeout for "
        f"the server (rank 0), which was still busy with {doing}; use a larger --timeout"
    )


def cpu_seconds(pid: int) -> float | None:
    """The CPU time a process has used so far, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in clock ticks


# A local dist launch starts λ+1 processes on this host: at most this many, at most `ulimit -u`,
# and at most what the available memory holds at RANK_MEMORY each (a rank holds 115-150 MB of its
# own once torch is imported, measured on logreg; 100 MB is a floor, so no launch that fits is refused).
MAX_LOCAL_PROCESSES = 1024
RANK_MEMORY = 100 * 2**20


def require_local_processes(learners: int) -> None:
    """A local dist launch starts λ+1 processes here: refuse more than this host allows, saying how many it does."""
    allowed, reason = local_process_limit()
    if learners + 1 <= allowed:
        return
    use = f"use at most --learners {allowed - 1}" if allowed >= 2 else "it cannot start a server and a learner"
    raise ConfigError(
        f"--learners {learners}: a local dist launch starts λ+1 = {learners + 1} processes, "
        f"this host allows {allowed} ({reason}): {use}, or spread the run over nodes with torchrun"
    )


def local_process_limit() -> tuple[int, str]:
    """How many processes a local dist launch may start on this host, and which limit says so."""
    limits = [(MAX_LOCAL_PROCESSES, f"at most {MAX_LOCAL_PROCESSES} processes")]
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if soft != resource.RLIM_INFINITY and soft >= 0:
        limits.append((soft, f"ulimit -u is {soft}"))
    memory = available_memory()
    if memory is not None:
        ranks = memory // RANK_MEMORY
        held = f"{memory / 2**30:.1f} GB of available memory holds {ranks} ranks of {RANK_MEMORY // 2**20} MB"
        limits.append((ranks, held))
    return min(limits)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None where there is no such file."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_dist(config: TrainConfig, checkpoint: dict | None) -> dict | None:
    """`softsync train --engine dist`: one rank under torchrun, else λ+1 local processes."""
    if under_torchrun():
        return run_rank(config, checkpoint, prepared=False)
    # no GPU for --device cuda, no tensorboard for --tensorboard, too many learners, a bad model, data, loss or
    # batch size: exit 2 before any process starts or the run directory exists (the learners run on this host;
    # under torchrun each learner rank checks its own node's GPUs, in DistLearner)
    require_device(config.device)
    board.require(config)
    require_local_processes(config.learners)
    batches_per_epoch(config, len(load_task(config).data.train))  # type: ignore[arg-type]
    config, out, lock = open_run_dir(config, checkpoint)
    world = config.learners + 1
    listening = store_socket(config.host)
    environment = {
        **os.environ,
        "MASTER_ADDR": config.host,
        "MASTER_PORT": str(listening.getsockname()[1]),
        "WORLD_SIZE": str(world),
        WORKER_CONFIG: json.dumps(config.resolved()),
        # the ranks find the user's modules (a model, data or loss by reference) where this process does
        WORKER_PATH: json.dumps(specs.search_path()),
        SUPERVISED: "1",
        # torch's C++ side logs the store's retries and timeouts with their stack frames; the ranks report
        # each failure in one line (set these yourself to see torch's logs)
        "TORCH_CPP_LOG_LEVEL": os.environ.get("TORCH_CPP_LOG_LEVEL", "FATAL"),
        "TORCH_SHOW_CPP_STACKTRACES": os.environ.get("TORCH_SHOW_CPP_STACKTRACES", "0"),
    }
    processes: list[subprocess.Popen] = []
    try:
        with ended_by_signals():
            processes.append(start_rank(0, environment, threads=config.server_threads, store=listening))
            listening.close()  # rank 0 holds it now
            for rank in range(1, world):
                processes.append(start_rank(rank, environment, threads=config.threads_per_learner))
            supervise(processes, config.timeout, out)
    finally:
        listening.close()
        end_processes(processes, grace=5.0)
        (out / PROCESSES).unlink(missing_ok=True)  # a rank stopped by a signal could not remove it
        lock.release()
    return json.loads((out / SUMMARY).read_text())


def start_rank(rank: int, environment: dict, threads: int, store: socket.socket | None = None) -> subprocess.Popen:
    """Start one locally launched rank; rank 0 gets the store's listening socket."""
    environment = {**environment, "RANK": str(rank), "OMP_NUM_THREADS": str(threads)}
    inherited = () if store is None else (store.fileno(),)
    if store is not None:
        environment[STORE_FD] = str(store.fileno())
    return subprocess.Popen(
        [sys.executable, "-m", "softsync.engines.launch"],
        env=environment,
        pass_fds=inherited,
        # the launcher alone answers Ctrl-C (with one line) and ends the ranks; no rank outlives it
        preexec_fn=dying_with_parent(ignore_interrupts=True),
    )


def worker_main() -> int:
    """Entry of a locally launched rank (`python -m softsync.engines.launch`)."""
    try:
        specs.extend_search_path(json.loads(os.environ.get(WORKER_PATH, "[]")))
        config = make_config(**json.loads(os.environ[WORKER_CONFIG]))
        checkpoint = load_checkpoint(str(config.out)) if config.resume and os.environ.get("RANK") == "0" else None
    except UserError as error:
        return report(error)
    run_rank(config, checkpoint, prepared=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
