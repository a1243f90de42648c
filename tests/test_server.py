"""The parameter-server core against the update rule of docs/design.md §1, by hand."""

import math

import pytest
import torch

from softsync.protocol import ProtocolError, gradients_per_update, parse_protocol
from softsync.server import ParameterServer, learning_rate
from softsync.staleness import POLICIES, StalenessStats, get_policy


def test_gradients_per_update_is_max_1_floor_lambda_over_n():
    assert gradients_per_update(30, 1) == 30
    assert gradients_per_update(30, 15) == 2
    assert gradients_per_update(30, 30) == 1
    assert gradients_per_update(30, 7) == 4
    assert gradients_per_update(4, 4) == 1
    assert parse_protocol("async", 8).gradients_per_update(8) == 1
    assert parse_protocol("hardsync", 8).gradients_per_update(8) == 8
    assert parse_protocol("hardsync", 8).gradients_per_update(5) == 5  # live learners only
    assert parse_protocol("3-softsync", 8).gradients_per_update(8) == 2


@pytest.mark.parametrize("text", ["0-softsync", "9-softsync", "softsync", "sync", "-1-softsync"])
def test_bad_protocols_are_refused(text):
    with pytest.raises(ProtocolError):
        parse_protocol(text, 8)


def test_policy_values():
    assert [get_policy("staleness", 4)(tau) for tau in (0, 1, 2, 5)] == [1.0, 1.0, 0.5, 0.2]
    assert [get_policy("constant", 4)(tau) for tau in (0, 1, 7)] == [1.0, 1.0, 1.0]
    assert [get_policy("mean", 4)(tau) for tau in (0, 3, 9)] == [0.25, 0.25, 0.25]
    assert {"staleness", "constant", "mean"} <= set(POLICIES)


def test_step_schedule():
    assert learning_rate(0.1, 0, (2, 4), 0.1) == 0.1
    assert math.isclose(learning_rate(0.1, 2, (2, 4), 0.1), 0.01)
    assert math.isclose(learning_rate(0.1, 5, (2, 4), 0.5), 0.025)


def make_server(protocol="2-softsync", learners=4, policy="staleness", momentum=0.0, weight_decay=0.0):
    weights = torch.zeros(3)
    return ParameterServer(
        weights,
        parse_protocol(protocol, learners),
        learners,
        lr=0.5,
        momentum=momentum,
        weight_decay=weight_decay,
        lr_policy=policy,
    )


def test_update_is_the_papers_rule_with_tau_from_the_clock():
    # 2-softsync with λ = 4: c = 2, θ ← θ − (1/c) Σ α(τ_l) g_l, α(τ) = α0/τ
    server = make_server()
    g = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 0.0, -2.0]), torch.tensor([2.0, 2.0, 2.0])]
    assert server.push(g[0].clone(), 0, learner=0).updated is False
    result = server.push(g[1].clone(), 0, learner=1)
    assert result.updated and result.staleness == 0 and server.clock == 1
    expected = -(0.5 / 2) * (g[0] + g[1])
    assert torch.allclose(server.weights, expected)
    # a gradient computed on θ_0 arriving at clock 1 has τ = 1; at clock 3, τ = 3
    server.push(g[2].clone(), 0, learner=2)
    server.push(g[2].clone(), 1, learner=3)
    assert server.clock == 2
    expected = expected - (0.5 / 2) * (1.0 * g[2] + 1.0 * g[2])
    assert torch.allclose(server.weights, expected)
    server.clock = 3
    server.push(g[0].clone(), 0, learner=0)  # τ = 3: α = α0/3
    server.push(g[1].clone(), 3, learner=1)  # τ = 0: α = α0
    assert torch.allclose(server.weights, expected - (0.5 / 2) * (g[0] / 3 + g[1]))
    assert server.stats.histogram == {0: 4, 1: 1, 3: 1}


def test_constant_policy_ignores_staleness_and_mean_divides_by_n():
    for policy, factor in (("constant", 1.0), ("mean", 1 / 4)):
        server = make_server("async", learners=4, policy=policy)
        server.clock = 5
        server.push(torch.ones(3), 1, learner=0)  # τ = 4
        assert torch.allclose(server.weights, torch.full((3,), -0.5 * factor))


def test_momentum_and_weight_decay_go_through_torch_sgd():
    server = make_server("async", learners=1, momentum=0.9, weight_decay=0.1)
    reference = torch.zeros(3, requires_grad=True)
    with torch.no_grad():
        server.weights.fill_(1.0)
        reference.fill_(1.0)
    optimizer = torch.optim.SGD([reference], lr=0.5, momentum=0.9, weight_decay=0.1)
    for step in range(4):
        gradient = torch.tensor([1.0, -1.0, 0.5]) * (step + 1)
        server.push(gradient.clone(), server.clock, learner=0)
        reference.grad = gradient.clone()
        optimizer.step()
    assert torch.allclose(server.weights, reference.detach(), atol=1e-6, rtol=0)


def test_non_finite_future_and_wrong_size_gradients_are_rejected_and_counted():
    server = make_server("async", learners=2)
    for bad, timestamp in (
        (torch.tensor([1.0, float("nan"), 0.0]), 0),
        (torch.tensor([float("inf"), 0.0, 0.0]), 0),
        (torch.ones(3), 1),
        (torch.ones(4), 0),
    ):
        result = server.push(bad, timestamp, learner=0)
        assert not result.accepted and result.reason
    assert server.rejected_gradients == 4 and server.accepted_gradients == 0 and server.clock == 0
    assert torch.equal(server.weights, torch.zeros(3))


def test_hardsync_waits_for_every_learner_and_refuses_a_second_push():
    server = make_server("hardsync", learners=3)
    assert not server.push(torch.ones(3), 0, learner=0).updated
    assert not server.push(torch.ones(3), 0, learner=0).accepted
    assert not server.push(torch.ones(3), 0, learner=1).updated
    assert server.push(torch.ones(3), 0, learner=2).updated
    assert server.clock == 1 and server.rejected_gradients == 1


def test_staleness_statistics():
    stats = StalenessStats()
    for tau in [0] * 50 + [1] * 30 + [2] * 19 + [9]:
        stats.add(tau)
    assert stats.count == 100 and stats.max == 9
    assert math.isclose(stats.mean, (30 + 38 + 9) / 100)
    assert stats.quantile(0.99) == 2 and stats.quantile(0.5) == 0 and stats.quantile(1.0) == 9
    assert stats.fraction_above(2) == 0.01
    assert stats.summary()["histogram"] == {"0": 50, "1": 30, "2": 19, "9": 1}


def test_state_dict_round_trip_continues_identically():
    a = make_server("2-softsync", learners=4, momentum=0.9)
    b = make_server("2-softsync", learners=4, momentum=0.9)
    gradients = [torch.randn(3, generator=torch.Generator().manual_seed(k)) for k in range(7)]
    for k, g in enumerate(gradients[:5]):
        a.push(g.clone(), a.clock, learner=k % 4)
    b.load_state_dict(a.state_dict())
    for k, g in enumerate(gradients[5:]):
        a.push(g.clone(), a.clock, learner=k)
        b.push(g.clone(), b.clock, learner=k)
    assert torch.equal(a.weights, b.weights) and a.clock == b.clock
