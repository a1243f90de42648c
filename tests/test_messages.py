"""The dist server's message handling, in-process: every malformed message is rejected, counted and
never applied, and never stops the server (no transport: sends are recorded)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softsync.build import build_components, load_task
from softsync.config import make_config
from softsync.engines.dist import HEADER, LOSS_SLOT, PULL, PUSH, STOP, WEIGHTS, DistServer
from softsync.rundir import create_run_dir


def make_server(tmp_path, protocol="async", learners=2):
    config = make_config(
        engine="dist",
        dataset="synthetic",
        model="logreg",
        learners=learners,
        protocol=protocol,
        batch_size=16,
        epochs=2,
        quiet=True,
        out=str(tmp_path / "run"),
    )
    out, _ = create_run_dir(config.out, config)
    server = DistServer(build_components(config, out, load_task(config)), timeout=60)
    server.sent = []
    server.send = lambda learner, kind, work=None: server.sent.append((learner, kind, work))
    return server


def deliver(server, learner, kind, sender=None, timestamp=0, epoch=0, index=0, gradient=None, loss=0.5):
    header = server.receive_headers[learner]
    header[:5] = [kind, learner if sender is None else sender, timestamp, epoch, index]
    buffer = server.receive[learner]
    buffer[HEADER:] = 0.01 if gradient is None else gradient
    buffer[:HEADER].numpy()[LOSS_SLOT] = loss
    server.handle(learner)


def valid_push(server, learner, **changes):
    work = server.coordinator.in_flight[learner]
    fields = dict(timestamp=work.timestamp, epoch=work.batch.epoch, index=work.batch.index)
    deliver(server, learner, PUSH, **{**fields, **changes})


def test_pull_then_push_applies_one_update(tmp_path):
    server = make_server(tmp_path)
    deliver(server, 0, PULL)
    assert server.sent[-1][:2] == (0, WEIGHTS)
    before = server.server.weights.clone()
    valid_push(server, 0)
    assert server.server.clock == 1 and not torch.equal(before, server.server.weights)
    assert server.server.rejected_gradients == 0


@pytest.mark.parametrize(
    "bad",
    [
        dict(sender=1),
        dict(kind=99),
        dict(kind=STOP),
        dict(index=5),
        dict(epoch=3),
        dict(timestamp=7),
        dict(timestamp=-3),
        dict(gradient=float("nan")),
        dict(gradient=float("inf")),
    ],
)
def test_a_bad_message_is_rejected_counted_and_not_applied(tmp_path, bad):
    server = make_server(tmp_path)
    deliver(server, 0, PULL)
    given_batch = server.coordinator.in_flight[0].batch
    before = server.server.weights.clone()
    kind = bad.pop("kind", PUSH)
    fields = dict(timestamp=server.server.clock, epoch=given_batch.epoch, index=given_batch.index)
    deliver(server, 0, kind, **{**fields, **bad})
    assert server.server.rejected_gradients == 1
    assert torch.equal(before, server.server.weights) and server.server.clock == 0
    # the learner goes on with a mini-batch; the rejected one is handed out again first
    assert server.sent[-1][:2] == (0, WEIGHTS)
    answered = server.sent[-1][2].batch
    assert (answered.epoch, answered.index) == (given_batch.epoch, given_batch.index)
    valid_push(server, 0)
    assert server.server.clock == 1


FIELDS = ["kind", "sender", "timestamp", "epoch", "index", "value"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from([None, *FIELDS]),
    number=st.integers(-(2**31), 2**31 - 1),
    value=st.floats(allow_nan=True, allow_infinity=True, width=32),
)
def test_no_message_stops_the_server_or_applies_anything_invalid(tmp_path_factory, field, number, value):
    """A valid push with at most one field changed: the valid ones are applied, every other is rejected."""
    server = make_server(tmp_path_factory.mktemp("fuzz"))
    deliver(server, 0, PULL)
    batch = server.coordinator.in_flight[0].batch
    valid = dict(kind=PUSH, sender=0, timestamp=0, epoch=batch.epoch, index=batch.index, value=0.01)
    message = {**valid, **({field: value if field == "value" else number} if field else {})}
    before = server.server.weights.clone()
    deliver(
        server,
        0,
        message["kind"],
        sender=message["sender"],
        timestamp=message["timestamp"],
        epoch=message["epoch"],
        index=message["index"],
        gradient=message["value"],
    )
    finite = bool(torch.isfinite(torch.full((server.server.weights.numel(),), message["value"]).sum()))
    if {k: v for k, v in message.items() if k != "value"} == {
        k: v for k, v in valid.items() if k != "value"
    } and finite:
        assert server.server.clock == 1 and server.server.rejected_gradients == 0
    else:
        assert server.server.clock == 0 and torch.equal(before, server.server.weights)
        assert server.server.rejected_gradients == 1
    assert server.sent[-1][0] == 0  # the learner is always answered
    assert np.all(np.isfinite(server.server.weights.numpy()))
