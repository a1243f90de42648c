"""softsync sweep: the grid runs, finished runs are skipped, results and figures are written."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from softsync.cli import main
from softsync.config import ConfigError
from softsync.plots import plot_series, plot_staleness, plot_test_error
from softsync.sweep import load_experiment, sweep

from helpers import crash_after_checkpoint, epochs

TINY = """
[base]
dataset = "synthetic"
model = "logreg"
epochs = 1
batch_size = 16
lr = 0.05
quiet = true

[grid]
protocol = ["1-softsync", "async"]
learners = [1, 2]

[[figure]]
kind = "staleness"

[[figure]]
kind = "test-error"
per = "protocol"

[[figure]]
kind = "final"
x = "learners"
y = "speedup"
ideal = true

[[figure]]
kind = "final"
name = "tradeoff"
x = "samples_per_s"
by = ["protocol"]
"""


def write(tmp_path, text, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_sweep_runs_the_grid_and_skips_finished_runs(tmp_path):
    experiment, out = write(tmp_path, TINY), tmp_path / "out"
    lines = []
    rows = sweep(experiment, out, jobs=2, log=lines.append)

    names = sorted(row["run"] for row in rows)
    assert names == sorted(f"protocol={p},learners={l}" for p in ("1-softsync", "async") for l in (1, 2))
    table = read_csv(out / "results.csv")
    assert len(table) == 4 and all(row["status"] == "completed" for row in table)
    for row in table:  # the table reports what the run wrote
        summary = json.loads((out / "runs" / row["run"] / "summary.json").read_text())
        assert float(row["test_error"]) == pytest.approx(summary["test_error"], abs=1e-4)
        assert (
            summary["config"]["learners"] == int(row["learners"]) and summary["config"]["protocol"] == row["protocol"]
        )
        assert int(row["epochs"]) == 1
    markdown = (out / "results.md").read_text().strip().splitlines()
    assert len(markdown) == 2 + 4 and markdown[0].startswith("| protocol | learners | status | test_error")
    for figure in ["staleness.png", "test-error-1-softsync.png", "test-error-async.png", "final.png", "tradeoff.png"]:
        assert (out / figure).stat().st_size > 1000, figure

    finished = {row["run"]: (out / "runs" / row["run"] / "summary.json").stat().st_mtime_ns for row in table}
    lines.clear()
    sweep(experiment, out, jobs=2, log=lines.append)
    assert sum("skipped" in line for line in lines) == 4
    assert all((out / "runs" / name / "summary.json").stat().st_mtime_ns == mtime for name, mtime in finished.items())
    assert len(read_csv(out / "results.csv")) == 4


SMALL = TINY.replace("learners = [1, 2]", "learners = [2]")


def test_a_run_stopped_before_its_first_checkpoint_is_run_again(tmp_path):
    experiment, out = write(tmp_path, SMALL), tmp_path / "out"
    sweep(experiment, out, log=lambda line: None)
    stopped = out / "runs" / "protocol=async,learners=2"
    for name in ("summary.json", "checkpoint.pt", "metrics.jsonl"):
        (stopped / name).unlink()
    lines = []
    sweep(experiment, out, log=lines.append)
    assert [line for line in lines if "skipped" not in line and line.startswith("[")] == [
        next(line for line in lines if "protocol=async,learners=2" in line)
    ]
    assert json.loads((stopped / "summary.json").read_text())["status"] == "completed"


def test_a_changed_experiment_is_refused_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    sweep(write(tmp_path, SMALL), out, log=lambda line: None)
    before = {path: path.read_bytes() for path in (out / "runs").rglob("*") if path.is_file()}
    changed = write(tmp_path, SMALL.replace("lr = 0.05", "lr = 0.1"), "changed.toml")
    assert main(["sweep", str(changed), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "lr = 0.05, not 0.1" in error
    assert before == {path: path.read_bytes() for path in (out / "runs").rglob("*") if path.is_file()}


def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path):
    text = TINY.replace('protocol = ["1-softsync", "async"]', 'protocol = "async"').replace(
        "learners = [1, 2]", 'learners = [2]\ndataset = ["synthetic", "mnist"]\ndata_dir = "/nonexistent"'
    )
    rows = sweep(write(tmp_path, text), tmp_path / "out", log=lambda line: None)
    by_dataset = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row["status"])
    assert by_dataset["synthetic"] == ["completed"]
    assert all(status.startswith("failed (exit 2): softsync: error:") for status in by_dataset["mnist"])


def test_bundles_set_several_options_under_one_label(tmp_path):
    text = TINY.replace(
        "learners = [1, 2]",
        'cost = [{label = "small", step_time = 0.01}, {label = "big", step_time = 1.0, message_bytes = 1000000}]',
    )
    experiment = load_experiment(write(tmp_path, text.replace('x = "learners"', 'x = "mu_lambda"')))
    big = next(run for run in experiment.runs if run.labels["cost"] == "big")
    assert big.options["step_time"] == 1.0 and big.options["message_bytes"] == 1_000_000
    assert big.name.endswith("cost=big")


@pytest.mark.parametrize(
    "text, names",
    [
        ("[base]\nlearners = 0\n", "--learners 0"),
        ("[grid]\nprotocol = ['hardsync', 'sometimes']\n", "sometimes"),
        ("[grid]\nlearners = [1, 'two']\n", "'two'"),
        ("[bases]\nlr = 1\n", "unknown table 'bases'"),
        ("[base]\nout = 'x'\n", "set by the sweep"),
        ("[grid]\nlr = [0.1]\n[[figure]]\nkind = 'pie'\n", "'pie'"),
        ("[grid]\nprotocol = ['async']\n[[figure]]\nkind = 'final'\nx = 'protocol'\n", "x = 'protocol'"),
        ("[grid]\nlr = [0.1]\n[[figure]]\nkind = 'final'\nx = 'lr'\ny = 'beauty'\n", "'beauty'"),
        ("[grid\n", "cannot be read"),
    ],
)
def test_bad_experiment_files_exit_2_with_one_line(tmp_path, capsys, text, names):
    code = main(["sweep", str(write(tmp_path, text)), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and names in error, error
    assert not (tmp_path / "out").exists()


def test_load_experiment_of_every_shipped_experiment():
    """The files in experiments/ parse, and every run's config is valid."""
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.joinpath("experiments").glob("*.toml"))
    assert files
    for path in files:
        if path.name == "theorem.toml":  # read by experiments/theorem.py, which needs the iterates
            continue
        assert load_experiment(path).runs, path


def test_the_theorem_experiment_plans_valid_runs():
    import importlib.util
    import tomllib
    from pathlib import Path

    from softsync.config import make_config

    experiments = Path(__file__).parent.parent / "experiments"
    spec = importlib.util.spec_from_file_location("theorem", experiments / "theorem.py")
    theorem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theorem)
    runs = theorem.plan(tomllib.loads((experiments / "theorem.toml").read_text()))
    assert len(runs) == 6 * (1 + 4 * 3)  # T values × (hardsync + 4 softsync levels × 3 variants)
    for _, options in runs:
        make_config(**options)


def test_figure_functions_write_pngs(tmp_path):
    records = [{"epoch": e, "test_error": 0.5 / e} for e in (1, 2, 3)]
    paths = [
        plot_test_error({"a": records, "b": records[:2]}, tmp_path / "error.png"),
        plot_staleness({"1-softsync": {"0": 3, "1": 40, "2": 2}, "async": {5: 1, 6: 9}}, tmp_path / "staleness.png"),
        plot_series(
            {"90K": [(1, 1.0), (2, 1.9), (4, 3.5)]}, tmp_path / "speedup.png", "λ", "speedup", logx=True, ideal=True
        ),
    ]
    for path in paths:
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="--jobs 0"):
        sweep(write(tmp_path, TINY), tmp_path / "out", jobs=0)


def test_a_run_stopped_after_a_checkpoint_is_resumed_to_the_same_weights(tmp_path, monkeypatch):
    import torch

    from softsync import train

    text = SMALL.replace("epochs = 1", "epochs = 2").replace('protocol = ["1-softsync", "async"]', 'protocol = "async"')
    experiment = write(tmp_path, text)
    (run,) = load_experiment(experiment).runs
    # the run's process dies right after its epoch-1 checkpoint: a checkpoint, no summary
    crash_after_checkpoint(monkeypatch, lambda clock, ended: ended == 1, KeyboardInterrupt)
    stopped = tmp_path / "out" / "runs" / run.name
    with pytest.raises(KeyboardInterrupt):
        train(**{**run.options, "out": str(stopped)})
    monkeypatch.undo()
    assert not (stopped / "summary.json").exists() and (stopped / "checkpoint.pt").exists()

    lines = []
    sweep(experiment, tmp_path / "out", log=lines.append)
    assert "completed" in lines[0]
    assert epochs(stopped) == [1, 2]
    sweep(experiment, tmp_path / "uninterrupted", log=lambda line: None)
    weights = [
        torch.load(out / "runs" / run.name / "checkpoint.pt", weights_only=False)["server"]["weights"]
        for out in (tmp_path / "out", tmp_path / "uninterrupted")
    ]
    assert torch.equal(*weights)


ONE_RUN = SMALL.replace('protocol = ["1-softsync", "async"]', 'protocol = "async"')


@pytest.mark.parametrize("content", [b"garbage", b"[1]", b"\xff\xfe"])
def test_a_run_directory_with_a_garbage_config_json_is_refused_with_one_line(tmp_path, capsys, content):
    """Issue 9 item 11: a garbage config.json gave a traceback. The sweep cannot tell whose run the directory
    holds, so it refuses, before anything runs, with one line naming the file; nothing changes."""
    experiment, out = write(tmp_path, ONE_RUN), tmp_path / "out"
    (run,) = load_experiment(experiment).runs
    config = out / "runs" / run.name / "config.json"
    config.parent.mkdir(parents=True)
    config.write_bytes(content)
    assert main(["sweep", str(experiment), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(config) in error and "Traceback" not in error, error
    assert [path.name for path in config.parent.iterdir()] == ["config.json"] and config.read_bytes() == content


@pytest.mark.parametrize("content", [b"garbage", b"[1, 2]", b'{"status": "completed"}', b"\xff\xfe"])
def test_a_garbage_summary_json_marks_its_row_and_the_sweep_goes_on(tmp_path, capsys, content):
    """Issue 9 item 11: a garbage summary.json gave a traceback. The run's row says the summary is damaged
    (results.csv and results.md are still written); nothing in its directory changes."""
    from softsync.config import make_config

    experiment, out = write(tmp_path, ONE_RUN), tmp_path / "out"
    (run,) = load_experiment(experiment).runs
    run_dir = out / "runs" / run.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(make_config(**run.options, out=str(run_dir)).resolved()))
    (run_dir / "summary.json").write_bytes(content)
    assert main(["sweep", str(experiment), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    (row,) = read_csv(out / "results.csv")
    assert row["status"].startswith("damaged") and "summary.json" in row["status"]
    assert "damaged" in captured.out and "Traceback" not in captured.err
    assert (run_dir / "summary.json").read_bytes() == content


SLOW = """
[base]
dataset = "synthetic"
model = "logreg"
engine = "sim"
epochs = 100000
batch_size = 1
quiet = true
[grid]
protocol = ["async"]
"""


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (PID 1 of a container may never reap an orphan)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_sweep_takes_its_training_children_with_it(tmp_path, signum):
    """Issue 9 item 4: a SIGKILLed or SIGTERMed sweep left its `softsync train` child running as an orphan."""
    experiment, out = write(tmp_path, SLOW), tmp_path / "out"
    command = [sys.executable, "-m", "softsync.cli", "sweep", str(experiment), "--out", str(out)]
    sweep_process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        child = wait_until(lambda: next(iter(children_of(sweep_process.pid)), None), timeout=120)
        assert child, "the sweep started no run"
        assert wait_until(lambda: (out / "runs" / "protocol=async" / "config.json").exists(), timeout=120)
        os.kill(sweep_process.pid, signum)
        _, err = sweep_process.communicate(timeout=30)
        assert wait_until(lambda: not alive(child), timeout=15), "the run outlived the sweep"
        if signum == signal.SIGTERM:  # the sweep ended its run and itself cleanly
            assert sweep_process.returncode == 128 + signum and b"Traceback" not in err, err
    finally:
        with contextlib.suppress(ProcessLookupError):  # the sweep's process group: the sweep and any orphan it left
            os.killpg(sweep_process.pid, signal.SIGKILL)
        sweep_process.wait(timeout=30)
