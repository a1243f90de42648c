"""--tensorboard: RUN_DIR/tensorboard/ says what metrics.jsonl says, at the server's clock; train/* every K updates."""

import itertools
import sys
import time

import numpy as np
import pytest

from softsync import train
from softsync.board import Board
from softsync.recorder import Recorder

from helpers import Interrupt, fails_with_one_line, metrics

K = 10  # --log-every
# async: every gradient is an update, so the clock passes every multiple of K; 64 updates per epoch
SMALL = dict(dataset="synthetic", model="mlp", protocol="async", epochs=2, batch_size=32, quiet=True)
EPOCH_TAGS = ("test_loss", "test_error", "train_loss", "lr")
LEARNER_TAGS = ("samples_per_s", "staleness_mean", "compute_fraction")
TRAIN_TAGS = ("samples_per_s", "staleness_mean", "rejected_gradients", "dropped_gradients")


def read_events(run):
    """Every event of a run's tensorboard/ directory, as TensorBoard reads it (nothing sampled away)."""
    accumulator_module = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator_module.EventAccumulator(
        str(run / "tensorboard"), size_guidance=dict.fromkeys(accumulator_module.DEFAULT_SIZE_GUIDANCE, 0)
    )
    events.Reload()
    return events


def float32(value: float) -> float:
    """A scalar as an event file holds it."""
    return float(np.float32(value))


def everything(events) -> dict:
    """Every scalar and histogram point: {tag: [(step, wall time, value)]}."""
    points = {tag: [(e.step, e.wall_time, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in events.Tags()["histograms"]:
        points[tag] = [(e.step, e.wall_time, e.histogram_value) for e in events.Histograms(tag)]
    return points


def check_events(run, learners: int, every: int, sim: bool) -> None:
    """The event files against metrics.jsonl: one point per epoch at its updates (and its virtual_s under sim, its
    wall_s under dist), each learner's rows, train/* at every multiple of ``every``, the epoch's staleness."""
    records = metrics(run)
    events = read_events(run)
    updates = [record["updates"] for record in records]
    walltimes = [record["virtual_s" if sim else "wall_s"] for record in records]
    tags = set(events.Tags()["scalars"])
    expected = {f"epoch/{name}" for name in EPOCH_TAGS} | {f"train/{name}" for name in TRAIN_TAGS}
    expected |= {f"learner/{learner}/{name}" for learner in range(learners) for name in LEARNER_TAGS}
    assert tags == expected
    for name in EPOCH_TAGS:
        points = events.Scalars(f"epoch/{name}")
        assert [p.step for p in points] == updates, name
        assert [p.wall_time for p in points] == walltimes, name
        assert [p.value for p in points] == [float32(record[name]) for record in records], name
    for learner in range(learners):
        for name in LEARNER_TAGS:
            points = events.Scalars(f"learner/{learner}/{name}")
            assert [p.step for p in points] == updates
            assert [p.value for p in points] == [float32(record["learners"][learner][name]) for record in records]
    for name in TRAIN_TAGS:
        points = events.Scalars(f"train/{name}")
        assert [p.step for p in points] == list(range(every, updates[-1] + 1, every)), name
        assert all(a.wall_time < b.wall_time for a, b in itertools.pairwise(points))
        assert points[-1].wall_time <= walltimes[-1]
    assert all(p.value == 0 for p in events.Scalars("train/rejected_gradients"))
    assert all(p.value > 0 for p in events.Scalars("train/samples_per_s"))
    histograms = events.Histograms("epoch/staleness")
    assert [h.step for h in histograms] == updates
    assert [h.wall_time for h in histograms] == walltimes
    gradients = [record["gradients"] for record in records]
    epoch_gradients = [now - before for now, before in zip(gradients, [0, *gradients[:-1]], strict=True)]
    assert [h.histogram_value.num for h in histograms] == epoch_gradients
    assert [sum(h.histogram_value.bucket) for h in histograms] == epoch_gradients
    means = [h.histogram_value.sum / h.histogram_value.num for h in histograms]
    assert means == pytest.approx([record["staleness_mean"] for record in records])


def test_sim_run_writes_what_metrics_says(tmp_path):
    out = tmp_path / "run"
    train(**SMALL, learners=3, tensorboard=True, log_every=K, out=str(out))
    check_events(out, learners=3, every=K, sim=True)
    assert len(list((out / "tensorboard").iterdir())) == 1


def test_without_the_flag_there_is_no_tensorboard_directory(tmp_path):
    out = tmp_path / "run"
    train(**{**SMALL, "epochs": 1}, learners=2, out=str(out))
    assert not (out / "tensorboard").exists()


def test_a_crashed_and_resumed_run_shows_what_an_uninterrupted_run_shows(tmp_path, monkeypatch):
    options = dict(SMALL, learners=3, tensorboard=True, log_every=K, checkpoint_every=20)
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(**options, out=str(whole))

    # the process dies at update 95, inside epoch 2, 15 updates after its last checkpoint (80), without closing its
    # event file: what it flushed at the end of epoch 1 is there
    original = Recorder.gradient_applied

    def crash_at_95(self, server, virtual_s=None):
        if server.clock == 95:
            raise Interrupt
        original(self, server, virtual_s)

    left_open: list[Board] = []
    monkeypatch.setattr(Recorder, "gradient_applied", crash_at_95)
    monkeypatch.setattr(Board, "close", lambda board: left_open.append(board))
    with pytest.raises(Interrupt):
        train(**options, out=str(split))
    monkeypatch.undo()
    crashed = read_events(split)
    assert [p.step for p in crashed.Scalars("epoch/test_loss")] == [64]
    assert [h.step for h in crashed.Histograms("epoch/staleness")] == [64]
    assert [p.step for p in crashed.Scalars("train/samples_per_s")][:6] == [10, 20, 30, 40, 50, 60]
    for board in left_open:
        board.close()  # train/* at 90, written after the checkpoint, reaches the file: the resumed run must hide it
    assert 90 in [p.step for p in read_events(split).Scalars("train/samples_per_s")]

    # event files are read in name order, which starts with the second they were opened in
    started = int(time.time())
    while int(time.time()) == started:
        time.sleep(0.05)
    train(resume=str(split))
    assert len(list((split / "tensorboard").iterdir())) == 2
    assert everything(read_events(split)) == everything(read_events(whole))


def test_a_run_started_again_in_place_drops_the_event_files_of_its_first_try(tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = Recorder.gradient_applied

    def crash_at_15(self, server, virtual_s=None):
        if server.clock == 15:
            raise Interrupt
        original(self, server, virtual_s)

    monkeypatch.setattr(Recorder, "gradient_applied", crash_at_15)
    with pytest.raises(Interrupt):  # before the first checkpoint: nothing to resume
        train(**{**SMALL, "epochs": 1}, learners=2, tensorboard=True, log_every=K, out=str(out))
    monkeypatch.undo()
    assert [p.step for p in read_events(out).Scalars("train/samples_per_s")] == [10]  # closed on the failure
    (out / "tensorboard" / "notes.txt").write_text("mine")
    train(**{**SMALL, "epochs": 1}, learners=2, tensorboard=True, log_every=K, out=str(out))
    assert sorted(path.name.startswith("events.") for path in (out / "tensorboard").iterdir()) == [False, True]
    check_events(out, learners=2, every=K, sim=True)


@pytest.mark.parametrize("engine", ["sim", "dist"])
def test_without_the_package_one_line_and_nothing_written(tmp_path, capsys, monkeypatch, engine):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import torch.utils.tensorboard` fails
    out = tmp_path / "run"
    flags = ["--engine", engine, "--dataset", "synthetic", "--model", "mlp", "--learners", "2", "--epochs", "1"]
    line = fails_with_one_line(["train", *flags, "--tensorboard", "--quiet", "--out", str(out)], capsys)
    assert line == "softsync: error: --tensorboard needs the tensorboard package: pip install 'softsync[tensorboard]'"
    assert not out.exists()


def test_log_every_must_be_positive(tmp_path, capsys):
    line = fails_with_one_line(["train", "--log-every", "0", "--out", str(tmp_path / "run")], capsys)
    assert line == "softsync: error: --log-every 0: must be >= 1 (updates between train/* scalars)"
    assert not (tmp_path / "run").exists()


@pytest.mark.dist
def test_dist_run_writes_what_metrics_says(tmp_path):
    out = tmp_path / "run"
    train(**SMALL, engine="dist", learners=2, tensorboard=True, log_every=K, timeout=60, out=str(out))
    check_events(out, learners=2, every=K, sim=False)
