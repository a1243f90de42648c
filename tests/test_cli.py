"""The command line: every bad value exits 2 with one line, and nothing already written is damaged."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from softsync.cli import main
from softsync.config import ConfigError, make_config

from helpers import fails_with_one_line, metrics

SMALL = ["--dataset", "synthetic", "--model", "logreg", "--epochs", "1", "--quiet"]


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--protocol", "0-softsync"], "0-softsync"),
        (["--protocol", "5-softsync", "--learners", "4"], "5-softsync"),
        (["--learners", "0"], "--learners 0"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--protocol", "sometimes"], "sometimes"),
        (["--lr-policy", "cosine"], "cosine"),
        (["--model", "resnet9000"], "resnet9000"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--learners", "four"], "four"),
        (["--lr", "-1"], "--lr -1"),
        (["--momentum", "1.5"], "--momentum 1.5"),
        (["--epochs", "0"], "--epochs 0"),
        (["--lr-steps", "5,x"], "5,x"),
        (["--learner-speeds", "1,2", "--learners", "3"], "--learner-speeds"),
        (["--engine", "mpi"], "mpi"),
        (["--timeout", "0"], "--timeout 0"),
        (["--threads-per-learner", "0"], "--threads-per-learner 0"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flags_exit_2_with_one_line_naming_the_value(flags, names, capsys, tmp_path):
    line = fails_with_one_line(["train", *SMALL, "--out", str(tmp_path / "run"), *flags], capsys)
    assert names in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_missing_data_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTSYNC_DATA", raising=False)
    line = fails_with_one_line(
        ["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--quiet", "--out", str(tmp_path / "r")], capsys
    )
    assert "mnist" in line.lower() and "--data-dir" in line


def test_an_empty_test_set_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    """Issue 9 item 8: --synthetic-size 3 leaves no test sample; it printed "test error 0.0000"."""
    out = tmp_path / "run"
    line = fails_with_one_line(
        [
            *"train --dataset synthetic --synthetic-size 3 --batch-size 1 --learners 1 --quiet --out".split(),
            str(out),
        ],
        capsys,
    )
    assert "no test samples" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--step-time", "1e308"], "--step-time 1e+308"),  # wrote Infinity (invalid JSON) into metrics and summary
        (["--step-time", "1e-320"], "--step-time"),
        (["--step-time", "nan"], "--step-time"),
        (["--bandwidth", "inf"], "--bandwidth inf"),
        (["--bandwidth", "1e-300"], "--bandwidth"),
        (["--latency", "1e308"], "--latency"),
        (["--lr", "nan"], "--lr nan"),
        (["--lr", "1e300"], "--lr"),
        (["--lr-gamma", "inf"], "--lr-gamma"),
        (["--lr-gamma", "1000", "--lr-steps", "1,2,3"], "--lr-gamma"),  # the schedule reaches α0·10^9
        (["--weight-decay", "1e300"], "--weight-decay"),
        (["--step-jitter", "nan"], "--step-jitter"),
    ],
)
def test_non_finite_or_absurd_float_options_are_refused(flags, names, capsys, tmp_path):
    """Issue 9 item 13: every float option must be finite and in a range whose arithmetic stays finite."""
    out = tmp_path / "run"
    assert names in fails_with_one_line(["train", *SMALL, "--out", str(out), *flags], capsys)
    assert not out.exists()


@pytest.mark.parametrize("speeds", ["1e-300,1", "0.0001,1", "1,2000", "0.01,20", "1,inf", "1,nan"])
def test_learner_speeds_must_lie_in_a_sensible_range(speeds, capsys, tmp_path):
    """Issue 9 item 13: --learner-speeds 1e-300,1 crashed a learner; each in [0.001, 1000], max/min <= 1000."""
    out = tmp_path / "run"
    flags = ["--learners", "2", "--learner-speeds", speeds, "--out", str(out)]
    line = fails_with_one_line(["train", *SMALL, *flags], capsys)
    assert "--learner-speeds" in line and "[0.001, 1000]" in line and "1000 times the slowest" in line
    assert not out.exists()
    assert make_config(learners=2, learner_speeds="0.001,1").learner_speeds == (0.001, 1.0)


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--learners", "1_0"], "1_0"),  # int("1_0") is 10
        (["--epochs", "\u0661"], "--epochs"),  # an Arabic-Indic digit one: int() accepts it too
        (["--lr", "1_0.5"], "1_0.5"),
        (["--lr-steps", "1_0"], "1_0"),
        (["--learner-speeds", "1_0,1", "--learners", "2"], "1_0"),
    ],
)
def test_numbers_must_be_plain_digits(flags, names, capsys, tmp_path):
    """Issue 9 item 13: whole numbers are plain (optionally signed) digits; no underscores, in floats either."""
    out = tmp_path / "run"
    assert names in fails_with_one_line(["train", *SMALL, "--out", str(out), *flags], capsys)
    assert not out.exists()


@pytest.mark.parametrize("text", ["lr-steps = [1.5]", "lr-steps = [1, 2.5]", "lr-steps = [true]", 'lr-steps = ["1_0"]'])
def test_integer_lists_refuse_fractions(tmp_path, capsys, text):
    """Issue 9 item 13: TOML lr-steps = [1.5] was silently truncated to 1."""
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    line = fails_with_one_line(["train", *SMALL, "--config", str(config), "--out", str(tmp_path / "r")], capsys)
    assert "--lr-steps" in line
    assert make_config(lr_steps=[1.0, 2]).lr_steps == (1, 2)  # a whole number written as a float is that number


def test_a_learner_count_the_engine_cannot_hold_is_refused(tmp_path, capsys):
    """Issue 9 item 6: learners = 99999999999999999999 grew the process until the kernel killed it."""
    config = tmp_path / "huge.toml"
    config.write_text('dataset = "synthetic"\nmodel = "logreg"\nlearners = 99999999999999999999\n')
    out = tmp_path / "run"
    assert "--learners" in fails_with_one_line(["train", "--config", str(config), "--quiet", "--out", str(out)], capsys)
    assert not out.exists()
    with pytest.raises(ConfigError, match="--learners 1025: at most 1024"):
        make_config(learners=1025, protocol="async")
    assert make_config(learners=1024, protocol="async").learners == 1024


def test_a_local_dist_launch_is_limited_to_the_processes_the_host_can_start(monkeypatch, capsys, tmp_path):
    """Issue 9 item 6: a local launch starts λ+1 processes; refuse more than the host allows, saying how many.

    It is the launch's limit, not the config's: under torchrun the ranks are spread over the nodes."""
    import resource

    from softsync.engines import launch

    monkeypatch.setattr(launch, "available_memory", lambda: 10**15)
    with pytest.raises(ConfigError, match="1024 processes") as error:
        launch.require_local_processes(1024)
    assert "--learners 1023" in str(error.value)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (8, 8) if which == resource.RLIMIT_NPROC else (-1, -1))
    with pytest.raises(ConfigError, match="ulimit -u") as error:
        launch.require_local_processes(8)
    assert "--learners 7" in str(error.value)
    launch.require_local_processes(7)
    monkeypatch.setattr(launch, "available_memory", lambda: 5 * 10**8)  # 500 MB: a few ranks of torch
    with pytest.raises(ConfigError, match="memory"):
        launch.require_local_processes(7)
    # through the command: one line, nothing started, no run directory
    out = tmp_path / "run"
    line = fails_with_one_line(["train", "--engine", "dist", "--learners", "7", *SMALL, "--out", str(out)], capsys)
    assert "a local dist launch starts" in line and not out.exists()
    assert make_config(engine="dist", learners=7, protocol="async").learners == 7  # a valid config for torchrun


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--synthetic-size", "99999999999999999999"], "--synthetic-size"),  # was a torch overflow traceback
        (["--synthetic-size", "999999999999"], "--synthetic-size"),  # was an allocation traceback
        (["--lr-steps", "99999999999999999999"], "--lr-steps"),
        (["--message-bytes", "99999999999999999999"], "--message-bytes"),
    ],
)
def test_whole_numbers_beyond_what_the_engine_can_hold_are_refused(flags, names, capsys, tmp_path):
    """Issue 9 item 6: no int option overflows into a traceback (or a hang) later."""
    out = tmp_path / "run"
    assert names in fails_with_one_line(["train", *SMALL, "--out", str(out), *flags], capsys)
    assert not out.exists()
    # OMP_NUM_THREADS and torch refused it in every rank
    with pytest.raises(ConfigError, match="--threads-per-learner"):
        make_config(engine="dist", learners=2, threads_per_learner=10**20)


def test_config_file_values_and_flag_override(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        'dataset = "synthetic"\nmodel = "logreg"\nlearners = 2\nprotocol = "async"\nepochs = 1\n'
        "batch-size = 64\nquiet = true\nlr-steps = [1]\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--batch-size", "128", "--out", str(out)]) == 0
    resolved = json.loads((out / "summary.json").read_text())["config"]
    assert resolved["learners"] == 2 and resolved["protocol"] == "async" and resolved["batch_size"] == 128
    assert resolved["lr_steps"] == [1]
    assert "completed: test error" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, names",
    [
        ("learners = [", "cannot be read"),
        ("colour = 3", "colour"),
        ('learners = "many"', "many"),
        ("lr = true", "--lr"),
    ],
)
def test_bad_config_files(tmp_path, capsys, text, names):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    assert names in fails_with_one_line(["train", "--config", str(config)], capsys)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    """Issue 9 item 11: a config TOML in Latin-1 gave a UnicodeDecodeError traceback."""
    config = tmp_path / "latin1.toml"
    config.write_bytes("lr = 0.1  # café\n".encode("latin-1"))
    line = fails_with_one_line(["train", "--config", str(config), "--out", str(tmp_path / "r")], capsys)
    assert str(config) in line and "UTF-8" in line
    assert not (tmp_path / "r").exists()


def test_a_run_directory_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "already holds a run" in fails_with_one_line(["train", *SMALL, "--out", str(out)], capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "--out" in fails_with_one_line(["train", *SMALL, "--out", str(blocker / "run")], capsys)


def test_plot_writes_pngs_and_refuses_a_non_run(tmp_path, capsys):
    runs = []
    for protocol in ("hardsync", "async"):
        out = tmp_path / protocol
        assert main(["train", *SMALL, "--learners", "2", "--protocol", protocol, "--out", str(out)]) == 0
        runs.append(str(out))
    assert main(["plot", *runs, "--out", str(tmp_path / "plots")]) == 0
    for name in ("test-error.png", "staleness.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert "not a run directory" in fails_with_one_line(["plot", str(tmp_path)], capsys)


def test_real_process_errors_have_no_traceback(tmp_path):
    softsync = Path(sys.executable).with_name("softsync")
    for flags in (["--protocol", "31-softsync", "--learners", "30"], ["--batch-size", "-3"]):
        done = subprocess.run(
            [str(softsync), "train", *flags, "--out", str(tmp_path / "r")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_resume_from_the_command_line_adds_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--learners", "2", "--protocol", "async", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "3", "--quiet"]) == 0
    records = metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["config"]["epochs"] == 3
    assert "--lr" in fails_with_one_line(["train", "--resume", str(out), "--lr", "0.5"], capsys)


def test_readme_documents_every_flag():
    from softsync.config import FIELDS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in [*FIELDS, "config"]:
        assert f"`--{name.replace('_', '-')}" in readme, name


def test_host_must_name_an_address(tmp_path, capsys):
    assert "--host" in fails_with_one_line(["train", *SMALL, "--host", " ", "--out", str(tmp_path / "r")], capsys)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from softsync.config import FIELDS, TrainConfig  # noqa: E402

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 200), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FIELDS) + ["colour", "lr-policy"]), VALUES, max_size=5))
def test_any_config_values_give_a_config_or_one_line_config_error(values):
    try:
        config = make_config(**values)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error)
    else:  # an accepted config survives the trip through config.json and --resume unchanged
        assert isinstance(config, TrainConfig)
        assert make_config(**json.loads(json.dumps(config.resolved()))) == config
