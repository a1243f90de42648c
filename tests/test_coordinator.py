"""The coordinator, event by event, without transport or time: membership, answers, resume."""

import math

import torch

from softsync.coordinator import Coordinator
from softsync.data import DataServer
from softsync.protocol import parse_protocol
from softsync.server import ParameterServer


def make(protocol="hardsync", learners=3, batches=6, epochs=1, size=4):
    server = ParameterServer(torch.zeros(size), parse_protocol(protocol, learners), learners, lr=0.1, momentum=0.0)
    data = DataServer(batches * 2, 2, seed=0, epochs=epochs, batches_per_epoch=batches)
    ended = []
    coordinator = Coordinator(server, data, learners, lambda epoch, train_loss: ended.append(epoch) or 0.5)
    return coordinator, ended


def push(coordinator, learner, value=1.0, loss=0.5):
    work = coordinator.in_flight[learner]
    gradient = torch.full((coordinator.server.weights.numel(),), value)
    return coordinator.push(learner, gradient, work.timestamp, work.batch.epoch, work.batch.index, loss)


def test_hardsync_answers_a_round_together_in_learner_order():
    coordinator, _ = make()
    assert coordinator.pull(2).answers == [] and coordinator.pull(0).answers == []
    answers = coordinator.pull(1).answers
    assert [(learner, work.batch.index, work.timestamp) for learner, work in answers] == [
        (0, 0, 0),
        (1, 1, 0),
        (2, 2, 0),
    ]
    assert push(coordinator, 0).answers == [] and push(coordinator, 1).answers == []
    outcome = push(coordinator, 2)
    assert outcome.updated and coordinator.server.clock == 1
    assert [(learner, work.batch.index, work.timestamp) for learner, work in outcome.answers] == [
        (0, 3, 1),
        (1, 4, 1),
        (2, 5, 1),
    ]


def test_a_lost_learner_completes_the_round_it_held_up_and_its_batch_goes_to_another():
    coordinator, _ = make()
    coordinator.start()
    push(coordinator, 0)
    push(coordinator, 1)
    lost_batch = coordinator.in_flight[2].batch.index
    outcome = coordinator.lose(2)
    # c is now 2: the round of learners 0 and 1 is applied, and learner 0 gets the lost mini-batch first
    assert coordinator.server.clock == 1 and coordinator.learner_failures == 1
    assert [(learner, work.batch.index) for learner, work in outcome.answers] == [(0, lost_batch), (1, 3)]
    assert coordinator.live == {0, 1}


def test_learners_with_nothing_left_are_parked_while_a_lost_batch_may_come_back_then_stopped():
    coordinator, ended = make(protocol="async", learners=2, batches=3)
    coordinator.start()  # learners 0 and 1 take mini-batches 0 and 1
    outcome = push(coordinator, 0)  # learner 0 takes mini-batch 2, the last
    assert [work.batch.index for _, work in outcome.answers] == [2]
    outcome = push(coordinator, 1)  # nothing left, but learner 0's may come back
    assert outcome.answers == [] and outcome.stops == [] and coordinator.parked == {1}
    outcome = coordinator.lose(0)  # it does: learner 1 takes it
    assert [(learner, work.batch.index) for learner, work in outcome.answers] == [(1, 2)]
    outcome = push(coordinator, 1)
    assert ended == [0] and outcome.stops == [1] and coordinator.finished


def test_a_stopped_learner_does_not_change_c():
    coordinator, _ = make(protocol="2-softsync", learners=4, batches=5)
    coordinator.start()  # four learners take mini-batches 0..3
    push(coordinator, 0)  # takes 4, the last
    outcome = push(coordinator, 1)
    assert coordinator.parked == {1} and outcome.updated  # c = 2: the update of 0 and 1
    assert coordinator.server.protocol.gradients_per_update(coordinator.server.learners) == 2


def test_max_10_or_2_lambda_rejections_in_a_row_diverge_and_stop_everyone():
    coordinator, _ = make(protocol="async", learners=2, batches=50)
    coordinator.start()
    for _ in range(9):
        assert not push(coordinator, 0, value=math.nan).stops and not coordinator.stopping
    outcome = push(coordinator, 0, value=math.nan)
    assert coordinator.status == "diverged" and outcome.stops == [0]
    assert push(coordinator, 1).stops == [1] and coordinator.finished


def test_a_non_finite_loss_at_an_epoch_end_diverges():
    coordinator, _ = make(protocol="async", learners=1, batches=2, epochs=2)
    coordinator.start()
    push(coordinator, 0, loss=0.5)
    outcome = push(coordinator, 0, loss=math.inf)  # ends epoch 0 with a non-finite mean training loss
    assert coordinator.status == "diverged" and outcome.stops == [0] and outcome.answers == []


def test_restart_learners_counts_every_learner_and_hands_out_what_was_being_computed():
    coordinator, _ = make(protocol="2-softsync", learners=4, batches=12)
    coordinator.start()
    push(coordinator, 0)
    coordinator.lose(3)  # c = max(1, 3 // 2) = 1
    state = coordinator.state_dict()
    computing = sorted(work.batch.index for work in coordinator.in_flight.values())

    resumed, _ = make(protocol="2-softsync", learners=4, batches=12)
    resumed.data.load_state_dict(coordinator.data.state_dict())
    resumed.load_state_dict(state)
    resumed.restart_learners()
    assert resumed.live == {0, 1, 2, 3} and resumed.server.learners == 4 and resumed.learner_failures == 1
    assert sorted(index for _, index in resumed.data.reissue) == sorted([3, *computing])
    answers = resumed.start().answers
    assert [learner for learner, _ in answers] == [0, 1, 2, 3]
    assert sorted(work.batch.index for _, work in answers) == sorted([3, *computing])
