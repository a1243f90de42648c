"""Oracles for the simulation engine: exact equivalences, the paper's staleness facts, replay."""

import json

import pytest
import torch

from softsync import train
from softsync.data import DataServer, epoch_permutation
from softsync.models import build_model

from helpers import Interrupt, crash_after_checkpoint, epochs, final_weights, metrics

COMMON = dict(dataset="synthetic", quiet=True)


def run(tmp_path, name, synthetic, **options):
    out = tmp_path / name
    summary = train(data=synthetic, out=str(out), **{**COMMON, **options})
    return out, summary


def test_hardsync_lambda_learners_of_mu_equals_one_learner_of_mu_lambda(tmp_path, synthetic):
    hyper = dict(model="mlp", lr=0.05, momentum=0.9, weight_decay=1e-3, epochs=2, seed=3)
    four, four_summary = run(tmp_path, "four", synthetic, protocol="hardsync", learners=4, batch_size=8, **hyper)
    one, one_summary = run(tmp_path, "one", synthetic, protocol="hardsync", learners=1, batch_size=32, **hyper)
    assert four_summary["updates"] == one_summary["updates"] == 2 * (2048 // 32)
    assert four_summary["gradients"] == 4 * one_summary["gradients"]
    assert four_summary["staleness"]["max"] == 0
    difference = (final_weights(four) - final_weights(one)).abs().max().item()
    assert difference < 1e-5, difference  # float summation order only


def test_async_with_one_learner_is_plain_torch_sgd(tmp_path, synthetic):
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    out, summary = run(
        tmp_path,
        "async",
        synthetic,
        protocol="async",
        learners=1,
        batch_size=16,
        model="mlp",
        epochs=2,
        seed=5,
        **hyper,
    )
    model = build_model("mlp", synthetic.input_shape, synthetic.num_classes, seed=5)
    optimizer = torch.optim.SGD(model.parameters(), **hyper)
    steps = 0
    for epoch in range(2):
        order = epoch_permutation(2048, 5, epoch)
        for index in range(2048 // 16):
            samples = order[index * 16 : (index + 1) * 16]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(
                model(synthetic.train.inputs[samples]), synthetic.train.targets[samples]
            ).backward()
            optimizer.step()
            steps += 1
    reference = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert summary["updates"] == summary["gradients"] == steps
    assert torch.allclose(final_weights(out), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("protocol, n", [("1-softsync", 1), ("15-softsync", 15), ("30-softsync", 30), ("hardsync", 0)])
def test_paper_fig1_staleness_facts(tmp_path, synthetic, protocol, n):
    epochs = 40 if protocol == "hardsync" else 8
    _, summary = run(
        tmp_path, protocol, synthetic, protocol=protocol, learners=30, batch_size=4, model="logreg", epochs=epochs
    )
    staleness = summary["staleness"]
    histogram = {int(t): k for t, k in staleness["histogram"].items()}
    total = sum(histogram.values())
    assert total == summary["gradients"] >= 4000
    if protocol == "hardsync":
        assert set(histogram) == {0}
        return
    if n == 1:
        assert set(histogram) <= {0, 1, 2}  # the paper: 1-softsync gives τ ∈ {0, 1, 2}
        assert 0.8 <= staleness["mean"] <= 1.2
    else:
        assert abs(staleness["mean"] - n) <= 0.15 * n
    assert sum(k for t, k in histogram.items() if t > 2 * n) / total < 1e-3


def test_same_seed_replays_bit_for_bit_and_another_seed_does_not(tmp_path, synthetic):
    options = dict(
        protocol="2-softsync",
        learners=6,
        batch_size=8,
        model="mlp",
        epochs=2,
        step_jitter=0.3,
        learner_speeds="1,1,1,0.5,1,2",
        momentum=0.9,
    )
    first, a = run(tmp_path, "a", synthetic, seed=11, **options)
    second, b = run(tmp_path, "b", synthetic, seed=11, **options)
    third, c = run(tmp_path, "c", synthetic, seed=12, **options)
    assert torch.equal(final_weights(first), final_weights(second))
    assert a["staleness"] == b["staleness"] and a["virtual_s"] == b["virtual_s"]

    def without_wall_time(path):
        return [{k: v for k, v in record.items() if k != "wall_s"} for record in metrics(path)]

    assert without_wall_time(first) == without_wall_time(second)
    assert not torch.equal(final_weights(first), final_weights(third))
    assert a["virtual_s"] != c["virtual_s"]


def test_each_epoch_hands_out_every_sample_exactly_once():
    data = DataServer(num_samples=100, batch_size=10, seed=4, epochs=3)
    seen: dict[int, list[int]] = {}
    lost = None
    while (batch := data.take()) is not None:
        if lost is None and batch.epoch == 1 and batch.index == 3:
            lost = batch  # its gradient is lost: it must come back
            data.give_back(batch)
            continue
        seen.setdefault(batch.epoch, []).extend(batch.samples.tolist())
    assert sorted(seen) == [0, 1, 2]
    for epoch, samples in seen.items():
        assert sorted(samples) == list(range(100)), epoch
    assert seen[0] != seen[1]  # a new permutation each epoch


def test_epochs_end_in_order_when_their_gradients_have_arrived():
    data = DataServer(num_samples=40, batch_size=10, seed=0, epochs=3)
    batches = [data.take() for _ in range(8)]
    assert [data.complete(b) for b in batches[:3]] == [[], [], []]
    # a straggler holds the last mini-batch of epoch 0 while epoch 1 finishes
    assert [data.complete(b) for b in batches[4:8]] == [[], [], [], []]
    assert data.complete(batches[3]) == [0, 1]


def test_async_counts_and_the_learning_rate_schedule(tmp_path, synthetic):
    out, summary = run(
        tmp_path,
        "steps",
        synthetic,
        protocol="async",
        learners=3,
        batch_size=32,
        model="logreg",
        epochs=3,
        lr=0.1,
        lr_steps="1,2",
        lr_gamma=0.5,
    )
    records = metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert summary["updates"] == summary["gradients"] == 3 * (2048 // 32)
    assert summary["samples"] == summary["gradients"] * 32
    # lr after epoch k's end is the rate of epoch k+1: 0.1 → 0.05 → 0.025
    assert [r["lr"] for r in records] == pytest.approx([0.05, 0.025, 0.025])
    for key in (
        "epoch",
        "updates",
        "gradients",
        "samples",
        "wall_s",
        "lr",
        "train_loss",
        "test_loss",
        "test_error",
        "staleness_mean",
        "virtual_s",
    ):
        assert key in records[0]


def test_divergence_ends_with_status_diverged(tmp_path, synthetic):
    out, summary = run(
        tmp_path,
        "boom",
        synthetic,
        protocol="async",
        learners=2,
        batch_size=8,
        model="mlp",
        lr=1e6,
        lr_policy="constant",
        momentum=0.9,
        epochs=2,
    )
    assert summary["status"] == "diverged"
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, synthetic, monkeypatch):
    options = dict(
        protocol="3-softsync", learners=6, batch_size=16, model="mlp", epochs=4, momentum=0.9, step_jitter=0.3, seed=2
    )
    whole, whole_summary = run(tmp_path, "whole", synthetic, **options)

    crash_after_checkpoint(monkeypatch, lambda clock, ended: ended == 2)  # right after the epoch-2 checkpoint
    with pytest.raises(Interrupt):
        run(tmp_path, "split", synthetic, **options)
    monkeypatch.undo()
    resumed = train(data=synthetic, resume=str(tmp_path / "split"))
    assert torch.equal(final_weights(whole), final_weights(tmp_path / "split"))
    assert resumed["updates"] == whole_summary["updates"] and resumed["staleness"] == whole_summary["staleness"]
    assert epochs(tmp_path / "split") == [1, 2, 3, 4]


def test_resume_refuses_other_options_and_non_runs(tmp_path, synthetic):
    from softsync.config import ConfigError
    from softsync.errors import RunDirError

    out, _ = run(tmp_path, "done", synthetic, protocol="async", learners=2, model="logreg", epochs=1)
    with pytest.raises(ConfigError, match="--lr"):
        train(data=synthetic, resume=str(out), lr=0.5)
    with pytest.raises(RunDirError, match="not a run directory"):
        train(data=synthetic, resume=str(tmp_path))
    with pytest.raises(ConfigError, match="--model"):
        train(data=synthetic, resume=str(out), model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)))
    more = train(data=synthetic, resume=str(out), epochs=2)  # a finished run given one more epoch
    assert more["gradients"] == 2 * (2048 // 32)


def test_any_nn_module_through_the_python_api(tmp_path, synthetic):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    _, summary = run(
        tmp_path, "custom", synthetic, model=net, protocol="2-softsync", learners=4, batch_size=16, epochs=3, lr=0.05
    )
    assert summary["status"] == "completed" and summary["test_error"] < 0.5


def test_a_rejected_gradient_is_redone_and_its_batch_used_once(tmp_path, synthetic, monkeypatch):
    from softsync.learner import Learner

    original = Learner.gradient
    calls = {"n": 0}

    def sometimes_nan(self, weights, inputs, targets, seed=None):
        gradient, loss = original(self, weights, inputs, targets, seed)
        calls["n"] += 1
        if calls["n"] % 7 == 0:
            gradient[0] = float("nan")
        return gradient, loss

    monkeypatch.setattr(Learner, "gradient", sometimes_nan)
    for protocol in ("hardsync", "2-softsync"):
        _, summary = run(
            tmp_path, protocol, synthetic, protocol=protocol, learners=4, batch_size=16, model="logreg", epochs=2
        )
        assert summary["status"] == "completed"
        assert summary["rejected_gradients"] > 0
        per_epoch = 2048 // 16 if protocol != "hardsync" else (2048 // 64) * 4
        assert summary["gradients"] == 2 * per_epoch  # every mini-batch applied exactly once


def test_hardsync_round_r_gives_learner_l_the_mini_batch_r_lambda_plus_l(tmp_path, synthetic, monkeypatch):
    from softsync.engines.sim import SimEngine

    taken = []
    original = SimEngine.compute

    def record(self, learner, work):
        original(self, learner, work)
        taken.append((self.server.clock, learner, work.batch.epoch, work.batch.index))

    monkeypatch.setattr(SimEngine, "compute", record)
    # speeds and jitter scramble the push order; the assignment must not depend on it
    run(
        tmp_path,
        "order",
        synthetic,
        protocol="hardsync",
        learners=4,
        batch_size=16,
        model="logreg",
        epochs=2,
        step_jitter=0.5,
        learner_speeds="1,0.3,2,0.7",
    )
    rounds_per_epoch = 2048 // (16 * 4)
    assert len(taken) == 2 * rounds_per_epoch * 4
    for clock, learner, epoch, index in taken:
        round_in_epoch = clock - epoch * rounds_per_epoch
        assert index == round_in_epoch * 4 + learner


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path, synthetic, monkeypatch):
    options = dict(
        protocol="2-softsync",
        learners=4,
        batch_size=16,
        model="mlp",
        epochs=3,
        momentum=0.9,
        step_jitter=0.3,
        seed=6,
        checkpoint_every=25,
    )
    whole, _ = run(tmp_path, "whole", synthetic, **options)
    # 64 updates per epoch: the checkpoint at update 75 is inside epoch 2
    saved = crash_after_checkpoint(monkeypatch, lambda clock, ended: clock == 75)
    with pytest.raises(Interrupt):
        run(tmp_path, "split", synthetic, **options)
    monkeypatch.undo()
    assert saved[-1] == (75, 1) and (25, 0) in saved
    train(data=synthetic, resume=str(tmp_path / "split"))
    assert torch.equal(final_weights(whole), final_weights(tmp_path / "split"))
    assert epochs(tmp_path / "split") == [1, 2, 3]


@pytest.mark.parametrize("learners", [1, 8])
def test_the_servers_link_bounds_throughput(tmp_path, synthetic, learners):
    """One learner is compute-bound; eight saturate the link: every pull and push takes bytes/bandwidth on it."""
    step, transfer = 0.01, 0.004  # message_bytes / bandwidth
    _, summary = run(
        tmp_path,
        f"link{learners}",
        synthetic,
        protocol="async",
        learners=learners,
        batch_size=16,
        epochs=2,
        step_time=step,
        step_jitter=0.0,
        latency=0.0,
        bandwidth=1e8,
        message_bytes=400_000,
    )
    per_gradient = step + 2 * transfer if learners == 1 else 2 * transfer
    assert summary["samples_per_s"] == pytest.approx(16 / per_gradient, rel=0.03)


def test_a_finished_run_given_more_epochs_keeps_its_protocols_staleness(tmp_path, synthetic):
    """Issue 9 item 2: every learner takes part in the added epochs (they were idle at the end of the run)."""
    options = dict(protocol="2-softsync", learners=5, batch_size=8, model="mlp", seed=9)
    out, first = run(tmp_path, "short", synthetic, epochs=1, **options)
    train(data=synthetic, resume=str(out), epochs=2)
    records = metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["staleness_mean"] > 1.5 and records[1]["staleness_mean"] == pytest.approx(
        records[0]["staleness_mean"], abs=0.25
    )
    # five learners, not one: the second epoch takes about as long in virtual time as the first
    assert records[1]["virtual_s"] - records[0]["virtual_s"] == pytest.approx(records[0]["virtual_s"], rel=0.25)
