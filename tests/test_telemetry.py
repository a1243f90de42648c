"""Per-learner telemetry and `softsync status`: who is the straggler, how stale, what a run is doing now."""

import json
import os
import signal
import time

import pytest

from softsync import train
from softsync.status import describe
from softsync.telemetry import LearnerCounts, Telemetry

from helpers import Interrupt, crash_after_checkpoint, metrics

STRAGGLER = dict(dataset="synthetic", model="logreg", protocol="async", learners=3, learner_speeds="1,1,0.25")


def test_counts_and_rows():
    telemetry = Telemetry(2)
    telemetry.applied(0, 2)
    telemetry.applied(0, 4)
    telemetry.applied(1, 1)
    telemetry.rejected(1)
    telemetry.timed(0, compute_s=3.0, wait_s=1.0)
    start = telemetry.snapshot()
    telemetry.applied(0, 1)
    telemetry.dropped(1)
    telemetry.lose(1)
    total, interval = telemetry.rows(2.0, batch_size=10), telemetry.rows(1.0, batch_size=10, since=start)
    assert total[0] == {
        "learner": 0,
        "gradients": 3,
        "samples_per_s": 15.0,
        "staleness_mean": 7 / 3,
        "staleness_max": 4,
        "compute_fraction": 0.75,
        "wait_fraction": 0.25,
        "rejected": 0,
        "dropped": 0,
        "failures": 0,
    }
    assert (interval[0]["gradients"], interval[0]["staleness_mean"], interval[0]["staleness_max"]) == (1, 1.0, 0)
    assert (interval[1]["rejected"], interval[1]["failures"], total[1]["failures"]) == (0, 1, 1)
    assert (interval[1]["dropped"], total[1]["dropped"], total[1]["rejected"]) == (1, 1, 1)
    restored = Telemetry(2)
    restored.load_state_dict(json.loads(json.dumps(telemetry.state_dict())))
    assert restored.counts == telemetry.counts and restored.lost == {1}
    assert LearnerCounts(gradients=5).minus(LearnerCounts(gradients=2)).gradients == 3


def test_a_straggler_shows_in_the_summary_and_every_epoch_under_sim(tmp_path):
    summary = train(epochs=2, quiet=True, out=str(tmp_path / "run"), **STRAGGLER)
    learners = summary["learners"]
    assert sum(learner["gradients"] for learner in learners) == summary["gradients"]
    fast = (learners[0]["samples_per_s"] + learners[1]["samples_per_s"]) / 2
    assert 0.2 < learners[2]["samples_per_s"] / fast < 0.3  # a quarter of the speed: a quarter of the samples
    assert learners[2]["compute_fraction"] == max(learner["compute_fraction"] for learner in learners)
    assert learners[2]["staleness_mean"] > 2 * learners[0]["staleness_mean"]  # its gradients wait longest
    assert sum(learner["samples_per_s"] for learner in learners) == pytest.approx(summary["samples_per_s"])
    for record in metrics(tmp_path / "run"):
        assert sum(learner["gradients"] for learner in record["learners"]) == 2048 // 32
        assert sum(learner["samples_per_s"] for learner in record["learners"]) > 0


def test_telemetry_resumes_exactly_under_sim(tmp_path, monkeypatch):
    options = dict(epochs=3, quiet=True, step_jitter=0.3, **STRAGGLER)
    whole = train(out=str(tmp_path / "whole"), **options)
    crash_after_checkpoint(monkeypatch, lambda clock, ended: ended == 1)
    with pytest.raises(Interrupt):
        train(out=str(tmp_path / "split"), **options)
    monkeypatch.undo()
    resumed = train(resume=str(tmp_path / "split"))
    assert resumed["learners"] == whole["learners"]
    assert [r["learners"] for r in metrics(tmp_path / "split")] == [r["learners"] for r in metrics(tmp_path / "whole")]


def test_status_of_a_finished_and_of_a_killed_run(tmp_path):
    train(epochs=1, quiet=True, out=str(tmp_path / "run"), **STRAGGLER)
    text = describe(tmp_path / "run")
    assert text.splitlines()[0].endswith(": completed")
    assert "epoch 1/1" in text and all(f"      {l}  stopped" in text for l in range(3))
    # a run whose writer died while it said "running"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (tmp_path / "run" / "status.json").write_text(json.dumps({**status, "state": "running", "pid": dead}))
    assert "ended without finishing" in describe(tmp_path / "run").splitlines()[0]


def test_status_of_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    from helpers import fails_with_one_line

    line = fails_with_one_line(["status", str(tmp_path)], capsys)
    assert "is not a run directory" in line


@pytest.mark.dist
def test_status_of_a_dist_run_with_a_straggler_and_a_killed_learner(tmp_path):
    from test_dist import assert_all_gone, start

    out = tmp_path / "run"
    # compute must outweigh messages for a slowdown to show: cnn-bench, not logreg
    flags = "--learners 4 --protocol async --epochs 15 --model cnn-bench --learner-speeds 1,1,0.25,1".split()
    process, processes = start(out, *flags)
    time.sleep(3.0)  # a status refresh or two
    running = describe(out)
    assert running.splitlines()[0].endswith(": running"), running
    assert all(f"      {l}  live" in running for l in range(4)), running
    assert "rank   4 learner" in running and running.count(": alive") == 5, running
    os.kill(next(p for p in processes if p["rank"] == 4)["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while "      3  lost" not in describe(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    after = describe(out)
    assert "      3  lost" in after and ": gone" in after, after
    out_text, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    learners = summary["learners"]
    fast = (learners[0]["samples_per_s"] + learners[1]["samples_per_s"]) / 2
    assert 0.1 < learners[2]["samples_per_s"] / fast < 0.45, learners  # about a quarter (real time is noisy)
    assert learners[2]["compute_fraction"] == max(learner["compute_fraction"] for learner in learners[:3])
    assert learners[3]["failures"] == 1
    assert describe(out).splitlines()[0].endswith(": completed")
    assert_all_gone(processes)
