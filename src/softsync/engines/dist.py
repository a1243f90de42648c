"""Real processes on torch.distributed (gloo, point-to-point): rank 0 is the parameter server and
data server, ranks 1..λ are learners 0..λ-1.

Every message is one contiguous float32 buffer, sent whole, never pickled. Its first HEADER slots
are a header read as int32 (a float32 slot holds any int32's bits exactly):

    learner → server: [kind, learner, timestamp, epoch, index, compute s, wait s, loss (the last three float32)]
                      + gradient
    server → learner: [kind, clock, epoch, index, 0, 0, 0, 0] + μ sample indices (int32) + weights

A learner's model lives inside its two buffers (weights in the receive buffer, gradients in the
send buffer), so a step copies nothing per parameter. With --device cuda the two buffers stay on
the host (pinned) and the model on the learner's GPU: a step copies the weights in and the
gradient out, one contiguous copy each; the server stays on the CPU. The server reads each
learner's messages on a thread of its own, so a lost learner is noticed at once without
disturbing the others, and it carries out what the coordinator decides, as the sim engine does:
the semantics live there.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

from ..build import Components, load_task
from ..checkpoint import Checkpointer
from ..config import TrainConfig
from ..coordinator import Outcome, Work
from ..data import batch_seed
from ..datasets import batcher
from ..errors import RunError, ServerLost, SoftsyncError
from ..learner import Learner, learner_device
from ..models import count_parameters

HEADER = 8
PULL, PUSH, WEIGHTS, STOP = 1, 2, 3, 4
COMPUTE_SLOT, WAIT_SLOT, LOSS_SLOT = 5, 6, 7  # float32 slots of a push: its step's seconds, its loss


class JoinTimeout(RunError):
    """A rank gave up waiting for the others to join: some rank started more slowly than --timeout allows."""


def timed_out(error: BaseException) -> bool:
    """Whether a torch.distributed or gloo error is a timeout (their texts are all we have)."""
    text = str(error).lower()
    return "timed out" in text or "timeout" in text


def describe(learner: int) -> str:
    return f"learner {learner} (rank {learner + 1})"


def int_header(buffer: torch.Tensor) -> np.ndarray:
    """The header as int32, through numpy: element access costs ~0.1 µs instead of a tensor op's ~2 µs."""
    return buffer[:HEADER].numpy().view(np.int32)


def float_header(buffer: torch.Tensor) -> np.ndarray:
    return buffer[:HEADER].numpy()


def short(error: BaseException) -> str:
    """The first line of a gloo error, without its source-file prefix and its advice."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split("] ", 1)[-1] if text.startswith("[") else text
    return text.split(" This is typically caused by", 1)[0].rstrip(". ")


def epoch_end_too_long(epoch: int, pause: float, timeout: float) -> str:
    return (
        f"the end of epoch {epoch + 1} (evaluating the test set, writing the checkpoint) took {pause:.1f} s, "
        f"longer than a learner waits for the server (2 × --timeout = {2 * timeout:g} s): "
        "use a larger --timeout"
    )


class DistServer:
    """Rank 0: carries messages between λ learner ranks and the coordinator.

    Each learner's messages are read on a thread of its own and handled under one lock; the main
    thread only watches deadlines (a learner that owes a push for longer than --timeout is lost).
    """

    def __init__(self, parts: Components, timeout: float, processes: list[dict] | None = None) -> None:
        self.config = parts.config
        self.server, self.recorder = parts.server, parts.recorder
        self.timeout = timeout
        self.coordinator = parts.coordinator(self.end_epoch)
        self.checkpointer: Checkpointer | None = None
        learners = self.config.learners
        size = parts.learner.weights.numel()
        self.receive = [torch.empty(HEADER + size) for _ in range(learners)]
        self.outgoing = [torch.zeros(HEADER + self.config.batch_size + size) for _ in range(learners)]
        self.receive_headers = [int_header(buffer) for buffer in self.receive]
        self.outgoing_headers = [int_header(buffer) for buffer in self.outgoing]
        self.sends: list[dist.Work | None] = [None] * learners
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.failure: str | None = None
        self.started = False
        self.lost: set[int] = set()  # in this session: they may never take their last message
        self.processes = processes or []  # processes.json's entries, to end a hung learner on this host
        self.deadline: dict[int, float] = {}  # learner -> when its push is overdue

    # -- transport ---------------------------------------------------------------------------
    def read(self, learner: int) -> None:
        """Thread: receive one learner's messages and handle each under the server lock.

        Handling on the receiving thread saves a thread hand-off per message; the lock keeps
        the server's state consistent across learners.
        """
        buffer = self.receive[learner]
        while True:
            try:
                dist.recv(buffer, src=learner + 1)
            except Exception as error:  # gloo raises RuntimeError for closed or timed-out pairs
                with self.lock:
                    if learner in self.coordinator.live and self.failure is None:  # else: stopped, or a consequence
                        self.lose(learner, self.diagnose(learner, short(error)))
                return
            with self.lock:
                if self.failure is not None or learner not in self.coordinator.live:
                    return  # a lost learner that woke up: its mini-batch went to another
                try:
                    self.handle(learner)
                except Exception as error:
                    self.fail(
                        str(error)
                        if isinstance(error, SoftsyncError)
                        else f"while handling {describe(learner)}: {short(error)}"
                    )
                    return
                if learner not in self.coordinator.live:
                    return

    def diagnose(self, learner: int, error: str) -> str:
        """Name the learner at fault when ``learner``'s receive failed."""
        if "Timed out" not in error:
            return f"{describe(learner)} was lost: {error}"
        if learner in self.coordinator.gate.waiting and self.deadline:
            learner = min(self.deadline, key=self.deadline.__getitem__)  # it waited rightly: blame the one it awaits
        return f"{describe(learner)} sent nothing for {self.timeout:g} s: it is hung or lost"

    def lose(self, learner: int, reason: str) -> None:
        """Go on without a lost learner: the coordinator hands its mini-batch to another."""
        self.deadline.pop(learner, None)
        self.lost.add(learner)
        outcome = self.coordinator.lose(learner)
        if self.coordinator.finished:
            self.fail(f"every learner was lost (the last: {reason}); the run directory keeps the last checkpoint")
            return
        self.warn(f"{reason}; going on with {len(self.coordinator.live)} learner(s)")
        self.carry_out(outcome)

    def end_hung(self, learner: int) -> None:
        """Kill a hung learner that runs on this host: its pending receive would otherwise time out
        inside gloo, and a gloo timeout closes the connections to every peer."""
        for process in self.processes:
            if process["rank"] == learner + 1 and process["host"] == socket.gethostname():
                try:
                    os.kill(process["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def warn(self, message: str) -> None:
        print(f"softsync: warning: {message}", file=sys.stderr, flush=True)

    def fail(self, message: str) -> None:
        """Record the run's failure (the first one wins) and wake the main thread; call under the lock."""
        if self.failure is None:
            self.failure = message
        self.changed.notify_all()

    def send(self, learner: int, kind: int, work: Work | None = None) -> None:
        previous = self.sends[learner]
        if previous is not None:
            previous.wait()  # the learner has answered, so this finished long ago
        buffer = self.outgoing[learner]
        header = self.outgoing_headers[learner]
        header[:] = 0
        header[0] = kind
        if work is not None:
            header[1], header[2], header[3] = work.timestamp, work.batch.epoch, work.batch.index
            size = self.config.batch_size
            buffer[HEADER : HEADER + size].view(torch.int32).copy_(work.batch.samples)
            buffer[HEADER + size :].copy_(self.server.weights)
        self.sends[learner] = dist.isend(buffer, dst=learner + 1)

    # -- messages ----------------------------------------------------------------------------
    def handle(self, learner: int) -> None:
        """One message of ``learner``, in its receive buffer: a pull or a push."""
        if not self.started:  # training starts with the first message: start-up is not timed
            self.started = True
            self.recorder.start_clock()
        kind, sender, timestamp, epoch, index = self.receive_headers[learner][:5].tolist()
        self.deadline.pop(learner, None)
        telemetry = self.coordinator.telemetry
        telemetry.heard(learner, time.monotonic())
        if sender != learner or kind not in (PULL, PUSH):
            outcome = self.coordinator.reject(learner, f"a malformed header (kind {kind}, learner {sender})")
        elif kind == PULL:
            outcome = self.coordinator.pull(learner)
        else:
            header = float_header(self.receive[learner])
            telemetry.timed(learner, float(header[COMPUTE_SLOT]), float(header[WAIT_SLOT]))
            loss = float(header[LOSS_SLOT])
            outcome = self.coordinator.push(learner, self.receive[learner][HEADER:], timestamp, epoch, index, loss)
            if outcome.accepted:
                self.recorder.gradient_applied(self.server)
        if outcome.rejected:
            what = "a gradient" if outcome.rejected_gradient else "a message"
            self.warn(f"rejected {what} of {describe(learner)}: {outcome.rejected}")
        self.carry_out(outcome)

    def carry_out(self, outcome: Outcome) -> None:
        """Answer, stop, then checkpoint (which records the answers' mini-batches, to hand out again)."""
        for learner, work in outcome.answers:
            self.deadline[learner] = time.monotonic() + self.timeout
            self.send(learner, WEIGHTS, work)
        for learner in outcome.stops:
            self.deadline.pop(learner, None)
            self.send(learner, STOP)
        if outcome.checkpoint and self.checkpointer is not None:
            self.checkpointer.save(self.coordinator.data.ended)
        if self.coordinator.finished:
            self.changed.notify_all()  # the main thread only needs waking for the end (or a failure)

    def end_epoch(self, epoch: int, train_loss: float) -> float:
        """Evaluate (under the lock: training pauses, so it is not timed) and record the epoch."""
        paused = time.monotonic()
        test_loss = self.recorder.epoch_end(epoch, train_loss, self.server, self.coordinator.telemetry)
        pause = time.monotonic() - paused
        if pause >= 2 * self.timeout:  # gloo's timeout: the learner that ended the epoch has given up
            raise RunError(epoch_end_too_long(epoch, pause, self.timeout))
        for learner in self.deadline:  # evaluation paused the server, not the learners' duty to answer
            self.deadline[learner] += pause
        return test_loss

    def report_status(self, state: str, error: str = "") -> None:
        """status.json; call under the lock (or once the learners are gone)."""
        coordinator, now = self.coordinator, time.monotonic()  # the clock of telemetry.heard
        live, ended = coordinator.live, coordinator.data.ended
        self.recorder.status(state, self.server, coordinator.telemetry, live, ended, now, error=error)

    def state_dict(self) -> dict:
        """Nothing: a resumed dist run has new learner processes (Coordinator.restart_learners)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # -- the server loop ---------------------------------------------------------------------
    def serve(self) -> str:
        """Run until every learner has been told to stop; returns the run's status."""
        learners = self.config.learners
        readers = [
            threading.Thread(target=self.read, args=(l,), daemon=True, name=f"read-{l}") for l in range(learners)
        ]
        for reader in readers:
            reader.start()
        first_deadline = time.monotonic() + self.timeout  # every learner's first pull
        with self.lock:
            self.report_status("running")
            while not self.coordinator.finished and self.failure is None:
                now = time.monotonic()
                if now >= self.recorder.status_due:
                    self.report_status("running")
                due = min(self.deadline.values(), default=first_deadline if not self.started else now + self.timeout)
                if now >= due and not self.started:
                    self.fail(f"no learner sent its first pull within {self.timeout:g} s")
                    break
                for late in [l for l, t in self.deadline.items() if t <= now]:
                    self.lose(late, f"{describe(late)} sent nothing for {self.timeout:g} s: it is hung or lost")
                    self.end_hung(late)
                if not self.coordinator.finished and self.failure is None:
                    due = min(self.deadline.values(), default=now + self.timeout)
                    due = min(due, self.recorder.status_due)
                    self.changed.wait(timeout=max(0.0, due - time.monotonic()))
            if self.failure is not None:
                raise RunError(self.failure)
        for learner, work in enumerate(self.sends):
            if work is not None and learner not in self.lost:  # a lost learner may never take its last message
                work.wait()
        for reader in readers:  # they end once their learner is stopped (a hung one's ends at its timeout)
            reader.join(timeout=1.0)
        return self.coordinator.status


class DistLearner:
    """Ranks 1..λ: pull, compute, push until the server says stop."""

    def __init__(self, config: TrainConfig, learner_id: int) -> None:
        torch.set_num_threads(config.threads_per_learner)
        self.config = config
        self.learner_id = learner_id
        # LOCAL_RANK (torchrun's) is this rank's index on its node: the learners of a node spread over its GPUs
        # whatever their global ranks. On the server's node the server holds a local rank but no GPU, so its
        # learners start at local rank 1 and the modulo wraps around to GPU 0. A local launch sets no LOCAL_RANK:
        # every rank is on this host, and the learner id is its index here. Under torchrun this is where a node
        # without a GPU is found: the error names it.
        host = f"the host of rank {learner_id + 1} ({socket.gethostname()})"
        device = learner_device(config.device, int(os.environ.get("LOCAL_RANK", learner_id)), host)
        task = load_task(config)
        self.batch = batcher(task.data.train)
        size = count_parameters(task.model)
        # the transport's buffers are on the host (gloo carries CPU tensors), pinned for the copies to a GPU
        pinned = device.type == "cuda"
        self.inbox = torch.empty(HEADER + config.batch_size + size, pin_memory=pinned)
        self.outbox = torch.zeros(HEADER + size, pin_memory=pinned)
        self.learner = Learner(
            task.model,
            task.loss,
            weights=self.inbox[HEADER + config.batch_size :],
            gradients=self.outbox[HEADER:],
            device=device,
        )
        self.samples = self.inbox[HEADER : HEADER + config.batch_size].view(torch.int32)
        # speeds are relative: the fastest learner runs flat out, a learner at half its speed sleeps
        speeds = config.learner_speeds or (1.0,)
        self.slowdown = max(speeds) / speeds[learner_id % len(speeds)] - 1.0

    def run(self) -> None:
        header_in, header_out, floats_out = int_header(self.inbox), int_header(self.outbox), float_header(self.outbox)
        header_out[0], header_out[1] = PULL, self.learner_id
        waiting = time.perf_counter()
        self.exchange(send=True)
        while True:
            self.exchange(send=False)
            started = time.perf_counter()
            kind, clock, epoch, index = header_in[:4].tolist()
            if kind == STOP:
                return
            if kind != WEIGHTS:
                raise RunError(f"the server sent a malformed header (kind {kind})")
            inputs, targets = self.batch(self.samples.long(), epoch)
            seed = batch_seed(self.config.seed, epoch, index)
            _, loss = self.learner.gradient(self.learner.weights, inputs, targets, seed)
            if self.slowdown > 0:  # a straggler: a learner of speed s takes 1/s as long
                time.sleep((time.perf_counter() - started) * self.slowdown)
            header_out[0], header_out[2], header_out[3], header_out[4] = PUSH, clock, epoch, index
            finished = time.perf_counter()
            floats_out[COMPUTE_SLOT], floats_out[WAIT_SLOT] = finished - started, started - waiting
            floats_out[LOSS_SLOT] = loss
            waiting = finished
            self.exchange(send=True)

    def exchange(self, send: bool) -> None:
        """Send the outbox to, or receive the inbox from, the server."""
        try:
            if send:
                dist.send(self.outbox, dst=0)
            else:
                dist.recv(self.inbox, src=0)
        except RuntimeError as error:
            if timed_out(error):
                raise ServerLost(
                    f"learner {self.learner_id} waited {2 * self.config.timeout:g} s (2 × --timeout) for "
                    "the server in vain: it is hung, or busy for longer than that (evaluating the test "
                    "set, writing a checkpoint); if it is busy, use a larger --timeout"
                ) from None
            raise ServerLost(f"learner {self.learner_id} lost the server: {short(error)}") from None


SUPERVISED = "SOFTSYNC_SUPERVISED"  # set for locally launched ranks: the supervisor reports consequences
STORE_FD = "SOFTSYNC_STORE_FD"  # a local launch's rank 0: the listening socket its store takes over
LOCAL_GLOO = "softsync_gloo"  # gloo, its device bound to --host (a local launch)


def init(config: TrainConfig, rank: int, world: int) -> None:
    """Join the process group at MASTER_ADDR:MASTER_PORT."""
    try:
        # gloo's own timeout is twice ours: the server's deadline names (and on its host ends) a hung
        # learner first, because a timed-out gloo receive closes the connections to every peer
        timeout = timedelta(seconds=2 * config.timeout)
        # torchrun --max-restarts keeps its store across restarts: restarted ranks must not read the
        # addresses of the ranks that died, so each attempt has keys of its own
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"softsync/attempt-{attempt}/", meeting_store(rank, world, timeout))
        backend = local_gloo(config.host) if os.environ.get(SUPERVISED) else "gloo"
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    except Exception as error:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        if timed_out(error):
            raise JoinTimeout(
                f"rank {rank} could not join the process group at {where} within "
                f"{2 * config.timeout:g} s (2 × --timeout): start-up (importing torch, loading the "
                "data, building the model) took some rank longer; use a larger --timeout"
            ) from None
        raise RunError(f"rank {rank} could not join the process group at {where}: {short(error)}") from None


def meeting_store(rank: int, world: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store: torchrun's (or env://'s), or in a local launch one listening on --host only.

    env:// makes rank 0's TCPStore listen on every interface. A local launch hands rank 0 a socket
    the launcher bound to --host (master_listen_fd); the other ranks connect to it as under env://.
    The port cannot be taken between choosing and binding it, and a rank ready before rank 0 waits
    in the socket's backlog. (A FileStore would listen nowhere, but gloo listens anyway, and a
    store file left by a killed run would have to be found and removed before a --resume.)
    """
    listening = os.environ.get(STORE_FD)
    if listening is None:
        store, _, _ = next(rendezvous("env://", rank, world, timeout=timeout))
        return store
    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=True,
        timeout=timeout,
        master_listen_fd=int(listening),
    )


def local_gloo(host: str) -> str:
    """A gloo backend whose listening socket is on ``host``; returns its name for init_process_group.

    gloo's default device binds the address the machine's hostname resolves to (or
    GLOO_SOCKET_IFNAME's), often a public one, and init_process_group takes no gloo options. The
    ranks of a local launch all meet on --host, so they register gloo with a device made for it.
    """

    def create(store: dist.Store, rank: int, size: int, timeout: timedelta) -> dist.ProcessGroupGloo:
        options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
        options._timeout = timeout
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        return dist.ProcessGroupGloo(store, rank, size, options)

    if not hasattr(dist.Backend, LOCAL_GLOO.upper()):
        dist.Backend.register_backend(LOCAL_GLOO, create, devices=["cpu"])
    return LOCAL_GLOO
