"""Beyond α0/τ: policies, weight versions, corrections, bounded staleness (--ssp) and --momentum-correction.

The oracles: a correction at τ = 0 changes nothing (hardsync ends with exactly the weights of
--correction none), DC-ASGD with λ = 0 changes nothing under async, a corrected run resumes bit for
bit, and each formula is checked against its hand computation on the server alone.
"""

import json
import math
import os
import signal
import time

import pytest
import torch

from softsync import train
from softsync.cli import main
from softsync.coordinator import Coordinator
from softsync.corrections import DelayCompensation, GapAware, make_correction
from softsync.data import DataServer
from softsync.protocol import parse_protocol
from softsync.server import ParameterServer
from softsync.staleness import get_policy

from helpers import Interrupt, crash_after_checkpoint, fails_with_one_line, final_weights

COMMON = dict(dataset="synthetic", quiet=True, model="mlp", batch_size=16, momentum=0.9, seed=1)


def run(tmp_path, name, synthetic, **options):
    out = tmp_path / name
    return out, train(data=synthetic, out=str(out), **{**COMMON, **options})


# -- policies ------------------------------------------------------------------------------------------
def test_policy_values_with_parameters_and_defaults():
    assert [get_policy("poly", 4)(tau) for tau in (0, 3, 8)] == [1.0, 0.5, 1 / 3]
    assert [get_policy("poly:a=1", 4)(tau) for tau in (0, 1, 3)] == [1.0, 0.5, 0.25]
    assert [get_policy("exponential:beta=0.5", 4)(tau) for tau in (0, 2)] == [1.0, math.exp(-1.0)]
    assert get_policy("exponential", 4)(10) == math.exp(-1.0)  # β = 0.1
    assert [get_policy("adaptive", 4)(tau) for tau in (0, 4, 8)] == [1.0, 1.0, 0.5]  # k = n
    assert [get_policy("adaptive:k=2", 30)(tau) for tau in (2, 3, 8)] == [1.0, 2 / 3, 0.25]
    assert [get_policy("drop", 3)(tau) for tau in (0, 5, 6)] == [1.0, 1.0, None]  # r = 2n
    assert [get_policy("drop:r=1", 3)(tau) for tau in (0, 1)] == [1.0, None]


# -- the server alone: formulas ------------------------------------------------------------------------
def async_server(correction="none", learners=2, lr=0.5, momentum=0.0, policy="constant", **extra):
    weights = torch.tensor([1.0, -2.0, 3.0])
    protocol = parse_protocol("async", learners)
    correct = make_correction(correction, **extra)
    return ParameterServer(weights, protocol, learners, lr=lr, momentum=momentum, lr_policy=policy, correction=correct)


G1, G2 = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, -1.0, 0.5])


def one_stale_push(server):
    """Learners 0 and 1 pull θ0; 1 pushes G1 (θ1); 0 pushes G2, one update stale. Returns (θ0, θ1)."""
    _, first = server.pull()
    theta0 = server.weights.clone()
    server.pull()
    server.push(G1.clone(), first, learner=1)
    assert server.versions.peak == 1  # θ0 was copied: learner 0 still computes on it
    theta1 = server.weights.clone()
    server.push(G2.clone(), first, learner=0)  # τ = 1
    assert server.versions.holders == {} and server.versions.copies == {}  # nothing out: nothing kept
    return theta0, theta1


def test_dc_asgd_adds_lambda_g_g_times_the_gap_to_the_exact_weights_it_was_computed_on():
    server = async_server("dc-asgd", dc_lambda=0.5)
    theta0, theta1 = one_stale_push(server)
    corrected = G2 + 0.5 * G2 * G2 * (theta1 - theta0)
    assert torch.equal(server.weights, theta1 - 0.5 * corrected)


def test_dc_asgd_adaptive_divides_lambda_by_the_root_mean_square():
    server = async_server("dc-asgd-adaptive", dc_lambda=2.0)
    theta0, theta1 = one_stale_push(server)
    mean_square = 0.95 * (0.05 * G1 * G1) + 0.05 * G2 * G2
    corrected = G2 + 2.0 / torch.sqrt(mean_square + 1e-7) * G2 * G2 * (theta1 - theta0)
    assert torch.allclose(server.weights, theta1 - 0.5 * corrected, rtol=1e-6, atol=0)


def test_gap_aware_divides_by_one_plus_the_gap_over_the_step_reach():
    server = async_server("gap-aware", momentum=0.5)
    theta0, theta1 = one_stale_push(server)
    mean_square = (0.999 * 0.001 * G1 * G1 + 0.001 * G2 * G2) / (1 - 0.999**2)  # bias-corrected mean of g²
    reach = 0.5 * (mean_square.sqrt() + 1e-8) / (1 - 0.5)
    corrected = G2 / (1 + (theta1 - theta0).abs() / reach)
    momentum_buffer = 0.5 * G1 + corrected
    assert torch.allclose(server.weights, theta1 - 0.5 * momentum_buffer, rtol=1e-6, atol=0)


def test_a_fresh_gradient_is_not_corrected_but_updates_the_statistics():
    for correction in (DelayCompensation(0.5, adaptive=True), GapAware()):
        gradient = torch.tensor([3.0, -1.0])
        correction.correct(gradient, None, lr=0.1, momentum=0.9)
        assert torch.equal(gradient, torch.tensor([3.0, -1.0]))
        assert correction.mean_square is not None and correction.mean_square.abs().sum() > 0


def test_a_correction_is_given_the_momentum_of_the_update():
    server = async_server("gap-aware", momentum=0.9)
    server.momentum_correction = True
    server.stats.add(4)  # ⟨τ⟩ = 4: implicit momentum 0.75, the update's is 0.15
    given = []
    correct = server.correction.correct
    server.correction.correct = lambda gradient, gap, lr, momentum: (
        given.append(momentum) or correct(gradient, gap, lr, momentum)
    )
    _, first = server.pull()
    server.push(torch.ones(3), first, learner=0)
    assert given == [pytest.approx(0.15)]


@pytest.mark.parametrize("correction", ["dc-asgd", "dc-asgd-adaptive", "gap-aware"])
def test_a_correction_never_applies_a_non_finite_gradient(correction):
    server = async_server(correction, dc_lambda=1.0)
    _, first = server.pull()
    server.pull()
    server.push(torch.ones(3), first, learner=1)
    server.push(torch.tensor([1e20, -1e20, 1e20]), first, learner=0)  # g⊙g overflows: the gap times it is inf
    assert torch.isfinite(server.weights).all()
    if correction == "dc-asgd":
        assert server.rejected_gradients == 1  # refused, not applied


def test_drop_does_not_apply_the_gradient_and_counts_it():
    server = async_server(policy="drop:r=1")
    _, first = server.pull()
    server.pull()
    server.push(torch.ones(3), first, learner=1)
    before = server.weights.clone()
    result = server.push(torch.ones(3), first, learner=0)  # τ = 1 ≥ r
    assert result.dropped and not result.accepted and result.reason == ""
    assert torch.equal(server.weights, before) and server.dropped_gradients == 1 and server.clock == 1


# -- the version store through the coordinator -----------------------------------------------------------
def versions_match_the_gradients_in_flight(coordinator):
    versions = coordinator.server.versions
    timestamps = [work.timestamp for work in coordinator.in_flight.values()]
    assert versions.holders == {t: timestamps.count(t) for t in set(timestamps)}
    assert set(versions.copies) <= set(timestamps) - {coordinator.server.clock}
    assert len(versions.copies) <= len(set(timestamps))


def coordinated(protocol, learners, correction="dc-asgd", batches=24, **server_options):
    server = ParameterServer(
        torch.zeros(5),
        parse_protocol(protocol, learners),
        learners,
        lr=0.1,
        momentum=0.0,
        correction=make_correction(correction),
        **server_options,
    )
    data = DataServer(batches * 2, 2, seed=0, epochs=1, batches_per_epoch=batches)
    return Coordinator(server, data, learners, lambda epoch, loss: 0.5)


def push(coordinator, learner, value=1.0):
    work = coordinator.in_flight[learner]
    gradient = torch.full((5,), value)
    return coordinator.push(learner, gradient, work.timestamp, work.batch.epoch, work.batch.index, 0.5)


def test_one_version_after_a_hardsync_round_and_no_copy():
    coordinator = coordinated("hardsync", 3)
    coordinator.start()
    for learner in range(3):
        push(coordinator, learner)
    versions = coordinator.server.versions
    assert versions.holders == {1: 3} and versions.copies == {} and versions.peak == 0


def test_async_never_keeps_more_copies_than_distinct_timestamps_in_flight():
    coordinator = coordinated("async", 4, batches=40)
    coordinator.start()
    order = [3, 1, 1, 0, 2, 3, 3, 1, 0, 2, 2, 2, 0, 1, 3]
    for step in range(30):
        learner = order[step % len(order)]
        if learner in coordinator.in_flight:
            push(coordinator, learner, value=0.1 * step)
        versions_match_the_gradients_in_flight(coordinator)
    assert coordinator.server.versions.peak >= 2
    lost = min(coordinator.in_flight)
    coordinator.lose(lost)  # a lost learner's weights are released
    versions_match_the_gradients_in_flight(coordinator)
    coordinator.restart_learners()
    assert coordinator.server.versions.holders == {} and coordinator.server.versions.copies == {}


def test_ssp_bounds_the_lead_of_any_learner_and_releases_when_the_slowest_catches_up():
    coordinator = coordinated("async", 3, correction="none", batches=40)
    coordinator.gate.ssp = 1
    coordinator.start()
    assert push(coordinator, 0).answers  # 1 ahead: may go on
    assert push(coordinator, 0).answers == []  # 2 ahead of learners 1 and 2: waits
    assert coordinator.gate.waiting == {0}
    assert push(coordinator, 1).answers[0][0] == 1  # learner 2 is still at 0
    released = push(coordinator, 2).answers
    assert [learner for learner, _ in released] == [0, 2]  # the slowest caught up: 0 goes on, in learner order
    assert coordinator.gate.ahead_max == 2  # s + 1


# -- whole runs under sim ----------------------------------------------------------------------------------
@pytest.mark.parametrize("correction", ["dc-asgd", "dc-asgd-adaptive", "gap-aware"])
def test_under_hardsync_every_correction_ends_with_the_weights_of_none(tmp_path, synthetic, correction):
    options = dict(protocol="hardsync", learners=3, epochs=1, dc_lambda=2.0)
    none, _ = run(tmp_path, "none", synthetic, **options)
    corrected, summary = run(
        tmp_path, correction, synthetic, correction=correction, momentum_correction=True, **options
    )
    assert torch.equal(final_weights(none), final_weights(corrected))
    assert summary["weight_versions"] == 0 and summary["momentum"] == 0.9


def test_dc_asgd_with_lambda_zero_changes_nothing_under_async(tmp_path, synthetic):
    options = dict(protocol="async", learners=4, epochs=1, lr=0.02)
    none, _ = run(tmp_path, "none", synthetic, **options)
    zero, summary = run(tmp_path, "zero", synthetic, correction="dc-asgd", dc_lambda=0.0, **options)
    assert torch.equal(final_weights(none), final_weights(zero))
    assert 1 <= summary["weight_versions"] <= 4  # copies kept all the same: at most the timestamps in flight
    corrected, _ = run(tmp_path, "corrected", synthetic, correction="dc-asgd", dc_lambda=1.0, **options)
    assert not torch.equal(final_weights(none), final_weights(corrected))  # the correction does act


def test_a_corrected_run_resumes_bit_for_bit(tmp_path, synthetic, monkeypatch):
    options = dict(
        protocol="2-softsync", learners=4, epochs=2, correction="gap-aware", checkpoint_every=20, step_jitter=0.3
    )
    whole, whole_summary = run(tmp_path, "whole", synthetic, **options)
    crash_after_checkpoint(monkeypatch, lambda clock, ended: clock == 80)  # inside epoch 2, gradients in flight
    with pytest.raises(Interrupt):
        run(tmp_path, "split", synthetic, **options)
    monkeypatch.undo()
    resumed = train(data=synthetic, resume=str(tmp_path / "split"))
    assert torch.equal(final_weights(whole), final_weights(tmp_path / "split"))
    assert resumed["weight_versions"] == whole_summary["weight_versions"]


def test_drop_never_applies_a_gradient_that_stale_and_still_uses_every_mini_batch_once(tmp_path, synthetic, capsys):
    speeds = (1.0, 1.0, 1.0, 0.25)
    out, summary = run(
        tmp_path, "drop", synthetic, protocol="async", learners=4, epochs=2, lr_policy="drop:r=4", learner_speeds=speeds
    )
    assert summary["dropped_gradients"] > 0 and summary["status"] == "completed"
    assert summary["staleness"]["max"] < 4
    assert summary["gradients"] == 2 * (2048 // 16)  # every mini-batch applied exactly once per epoch
    assert sum(row["dropped"] for row in summary["learners"]) == summary["dropped_gradients"]
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    assert f"{summary['dropped_gradients']} dropped" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert "dropped gradients" in (out / "report.html").read_text()


@pytest.mark.parametrize("ssp", [0, 2])
def test_ssp_keeps_every_learner_within_s_plus_one_pushes(tmp_path, synthetic, ssp):
    speeds = (1.0, 1.0, 0.3, 1.0)
    _, free = run(tmp_path, "free", synthetic, protocol="async", learners=4, epochs=1, learner_speeds=speeds)
    _, bounded = run(
        tmp_path, f"ssp{ssp}", synthetic, protocol="async", learners=4, epochs=1, learner_speeds=speeds, ssp=ssp
    )
    assert free["pushes_ahead_max"] is None
    assert bounded["pushes_ahead_max"] <= ssp + 1 and bounded["gradients"] == 2048 // 16
    assert bounded["staleness"]["max"] < free["staleness"]["max"]  # the straggler's gradients are fresher


def test_momentum_correction_subtracts_the_implicit_momentum(tmp_path, synthetic):
    _, summary = run(tmp_path, "corrected", synthetic, protocol="async", learners=4, epochs=1, momentum_correction=True)
    mean = summary["staleness"]["mean"]
    assert mean > 1
    assert summary["momentum"] == pytest.approx(max(0.0, 0.9 - (1 - 1 / mean)))


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--ssp", "-1"], "--ssp -1"),
        (["--ssp", "x"], "--ssp"),
        (["--ssp", "2", "--protocol", "hardsync"], "hardsync"),
        (["--lr-policy", "poly:a=x"], "poly:a=x"),
        (["--lr-policy", "drop:r=0"], "r = '0'"),
        (["--lr-policy", "poly:b=1"], "not a parameter"),
        (["--correction", "dc"], "--correction 'dc' is unknown"),
        (["--dc-lambda", "-1"], "--dc-lambda"),
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, flags, words):
    line = fails_with_one_line(["train", "--dataset", "synthetic", "--out", str(tmp_path / "run"), *flags], capsys)
    assert words in line
    assert not (tmp_path / "run").exists()


# -- the same under dist (real processes) ------------------------------------------------------------------
DIST = dict(engine="dist", dataset="synthetic", model="mlp", batch_size=16, quiet=True, timeout=60)


@pytest.mark.dist
def test_dist_hardsync_with_every_method_on_equals_sim_hardsync_without(tmp_path, synthetic):
    options = dict(protocol="hardsync", learners=3, epochs=2, seed=4, momentum=0.9, lr=0.05)
    methods = dict(correction="gap-aware", momentum_correction=True, lr_policy="drop:r=1")
    dist_summary = train(out=str(tmp_path / "dist"), **{**DIST, **options, **methods})
    train(out=str(tmp_path / "sim"), **{**DIST, **options, "engine": "sim"})
    difference = (final_weights(tmp_path / "dist") - final_weights(tmp_path / "sim")).abs().max().item()
    assert difference < 1e-5, difference
    assert dist_summary["weight_versions"] == 0 and dist_summary["dropped_gradients"] == 0


@pytest.mark.dist
def test_dist_async_with_ssp_a_correction_and_drop_applies_every_mini_batch_once(tmp_path):
    summary = train(
        out=str(tmp_path / "run"),
        protocol="async",
        learners=3,
        epochs=2,
        ssp=0,
        correction="dc-asgd",
        lr_policy="drop:r=2",
        learner_speeds=(1.0, 1.0, 0.25),
        **DIST,
    )
    assert summary["status"] == "completed" and summary["gradients"] == 2 * (2048 // 16)
    assert summary["pushes_ahead_max"] <= 1  # s + 1
    assert summary["staleness"]["max"] < 2  # drop:r=2
    assert summary["weight_versions"] >= 1


@pytest.mark.dist
def test_dist_ssp_survives_a_killed_learner(tmp_path):
    from test_dist import error_lines, start

    process, processes = start(
        tmp_path / "run", *"--learners 3 --protocol async --ssp 1 --epochs 30 --learner-speeds 0.1,0.1,0.1".split()
    )
    time.sleep(0.5)  # mid-run
    os.kill(next(p for p in processes if p["rank"] == 2)["pid"], signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert len(error_lines(err)) == 1 and "learner 1 (rank 2) was lost" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["learner_failures"] == 1
    assert summary["gradients"] == 30 * (2048 // 16) and summary["pushes_ahead_max"] <= 2


def test_drop_does_not_hand_a_straggler_its_own_dropped_mini_batch_again(tmp_path, synthetic):
    speeds = (1.0, 1.0, 1.0, 0.25)  # the straggler's τ ≈ 12 ≥ r = 8: every gradient of it is dropped
    out, summary = run(
        tmp_path, "drop", synthetic, protocol="async", learners=4, epochs=3, lr_policy="drop", learner_speeds=speeds
    )
    updates = [json.loads(line)["updates"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["dropped_gradients"] > 0 and updates == sorted(set(updates))  # each epoch ends at its own time


def test_ssp_inf_as_a_toml_float_is_unbounded(tmp_path, synthetic):
    _, summary = run(tmp_path, "inf", synthetic, protocol="async", learners=2, epochs=1, ssp=math.inf)
    assert summary["pushes_ahead_max"] is None


def test_a_policy_parameter_given_twice_is_refused(tmp_path, capsys):
    line = fails_with_one_line(
        ["train", "--dataset", "synthetic", "--lr-policy", "poly:a=0.5,a=2", "--out", str(tmp_path / "run")], capsys
    )
    assert "a is given twice" in line


def test_a_pull_while_stopping_releases_the_weights_it_held():
    coordinator = coordinated("async", 2, batches=10)
    coordinator.start()
    coordinator.stopping = True
    coordinator.pull(0)  # a confused learner asks again while its gradient is out: the run is ending
    assert 0 not in coordinator.in_flight
    assert coordinator.server.versions.holders == {coordinator.in_flight[1].timestamp: 1}
