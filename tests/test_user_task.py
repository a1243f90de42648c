"""A model, a dataset and a loss of the user's own, by reference and through the Python API, under both engines."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import user_task
from softsync import train
from softsync.cli import main
from softsync.engines.launch import free_port
from softsync.errors import ConfigError
from softsync.models import seeded

from helpers import Interrupt, crash_after_checkpoint, fails_with_one_line, final_weights, metrics

USER_FILE = Path(__file__).with_name("user_task.py")
BIN = Path(sys.executable).parent
QUICK = dict(batch_size=16, epochs=2, lr=0.1, momentum=0.9, seed=1, quiet=True)


@pytest.fixture
def task_file(tmp_path) -> Path:
    """user_task.py copied where nothing imports it from: only its path finds it."""
    path = tmp_path / "project" / "mytask.py"
    path.parent.mkdir()
    shutil.copy(USER_FILE, path)
    return path


def flags(options: dict) -> list[str]:
    return [f"--{name.replace('_', '-')}={value}" for name, value in options.items() if value is not True] + [
        f"--{name.replace('_', '-')}" for name, value in options.items() if value is True
    ]


def test_file_specs_on_the_cli_train_what_the_python_callables_train(tmp_path, task_file):
    options = dict(protocol="async", learners=3, **QUICK)
    code = main(
        [
            "train",
            *flags(options),
            f"--model={task_file}:make_model",
            f"--dataset={task_file}:make_data",
            f"--loss={task_file}:smooth_loss",
            f"--out={tmp_path / 'cli'}",
        ]
    )
    assert code == 0
    assert main(["train", f"--resume={tmp_path / 'cli'}", "--epochs=3"]) == 0  # the specs load again from the config
    assert [record["epoch"] for record in metrics(tmp_path / "cli")] == [1, 2, 3]
    summary = train(
        model=user_task.make_model,
        data=user_task.make_data,
        loss=user_task.smooth_loss,
        out=str(tmp_path / "api"),
        **options,
    )
    assert summary["config"]["model"] == "user_task:make_model"  # a reference the learners could import
    resumed = train(resume=str(tmp_path / "api"), epochs=3)
    assert torch.equal(final_weights(tmp_path / "cli"), final_weights(tmp_path / "api"))
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert cli["config"]["model"] == f"{task_file}:make_model"
    assert cli["test_error"] == resumed["test_error"] < 0.2  # the classes are linearly separable


def test_hardsync_oracle_holds_for_a_user_model_and_dataset(tmp_path, task_file):
    specs = dict(model=f"{task_file}:make_model", dataset=f"{task_file}:make_data", epochs=2, lr=0.1, momentum=0.9)
    four = train(protocol="hardsync", learners=4, batch_size=8, out=str(tmp_path / "four"), quiet=True, **specs)
    one = train(protocol="hardsync", learners=1, batch_size=32, out=str(tmp_path / "one"), quiet=True, **specs)
    assert four["updates"] == one["updates"] == 2 * (480 // 32)
    difference = (final_weights(tmp_path / "four") - final_weights(tmp_path / "one")).abs().max().item()
    assert difference < 1e-5, difference


def test_a_dataset_read_item_by_item_trains_exactly_as_one_in_memory(tmp_path):
    common = dict(protocol="2-softsync", learners=4, model=user_task.make_model, **QUICK)
    items = train(data=user_task.make_data, out=str(tmp_path / "items"), **common)
    tensors = train(data=user_task.make_tensor_data, out=str(tmp_path / "tensors"), **common)
    assert torch.equal(final_weights(tmp_path / "items"), final_weights(tmp_path / "tensors"))
    assert items["staleness"] == tensors["staleness"]


def test_dropout_replays_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    options = dict(model=user_task.make_dropout_model, data=user_task.make_data, protocol="async", learners=3)
    options.update(QUICK, epochs=3, step_jitter=0.3)
    whole = train(out=str(tmp_path / "whole"), **options)
    again = train(out=str(tmp_path / "again"), **options)
    assert torch.equal(final_weights(tmp_path / "whole"), final_weights(tmp_path / "again"))
    crash_after_checkpoint(monkeypatch, lambda clock, ended: ended == 1)
    with pytest.raises(Interrupt):
        train(out=str(tmp_path / "split"), **options)
    monkeypatch.undo()
    resumed = train(resume=str(tmp_path / "split"), model=options["model"], data=options["data"])
    assert torch.equal(final_weights(tmp_path / "whole"), final_weights(tmp_path / "split"))
    assert resumed["staleness"] == whole["staleness"] == again["staleness"]


def test_regression_with_mse_has_no_test_error_and_a_falling_test_loss(tmp_path, task_file):
    summary = train(
        model=f"{task_file}:make_regressor",
        data=f"{task_file}:make_regression_data",
        loss="mse",
        protocol="async",
        learners=2,
        out=str(tmp_path / "run"),
        **{**QUICK, "epochs": 3, "lr": 0.005},
    )
    records = metrics(tmp_path / "run")
    assert [r["test_error"] for r in records] == [None, None, None]
    assert summary["test_error"] is None and summary["test_loss"] == records[-1]["test_loss"]
    assert records[-1]["test_loss"] < 0.5 * records[0]["test_loss"]


def test_objects_work_under_sim_and_are_refused_under_dist(tmp_path):
    by_factory = train(model=user_task.make_model, data=user_task.make_data, out=str(tmp_path / "factory"), **QUICK)
    instance = seeded(user_task.make_model, QUICK["seed"], "instance")  # the weights the factory run starts from
    by_object = train(model=instance, data=user_task.make_data(), out=str(tmp_path / "object"), **QUICK)
    assert by_object["config"]["model"] == "<Sequential object>" and by_object["config"]["dataset"] == "<data>"
    assert torch.equal(final_weights(tmp_path / "object"), final_weights(tmp_path / "factory"))
    assert by_object["test_error"] == by_factory["test_error"]
    for given in (dict(model=user_task.make_model()), dict(model=lambda: user_task.make_model())):
        with pytest.raises(ConfigError, match="pass a factory defined at the top level") as error:
            train(engine="dist", data=user_task.make_data, out=str(tmp_path / "dist"), **given, **QUICK)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="data=<data>: under engine dist"):
        train(engine="dist", model=user_task.make_model, data=user_task.make_data(), out=str(tmp_path / "d"), **QUICK)
    assert not (tmp_path / "dist").exists() and not (tmp_path / "d").exists()


def test_a_run_of_a_lambda_resumes_only_when_given_it_again(tmp_path):
    out = tmp_path / "run"
    train(model=lambda: user_task.make_model(), data=user_task.make_data, out=str(out), **QUICK)
    with pytest.raises(ConfigError, match="pass it again"):
        train(resume=str(out), epochs=3)
    resumed = train(model=lambda: user_task.make_model(), data=user_task.make_data, resume=str(out), epochs=3)
    assert [r["epoch"] for r in metrics(out)] == [1, 2, 3] and resumed["status"] == "completed"


BAD_SPECS = [
    ("--model", "{dir}/absent.py:make_model", "no such file"),
    ("--model", "no_such_module_anywhere:make_model", "no module named 'no_such_module_anywhere'"),
    ("--model", "{file}:missing", "has no 'missing'"),
    ("--model", "{file}:NOT_CALLABLE", "is a int, not a callable"),
    ("--model", "{file}:returns_a_string", "returned a str, not an nn.Module"),
    ("--model", "{file}:raises", "calling it raised RuntimeError: the factory failed"),
    ("--model", "{file}:wrong_width_model", "cannot take a mini-batch"),
    ("--model", "{file}:", "expected a built-in name, package.module:callable or path/to/file.py:callable"),
    ("--model", "{dir}/broken.py:make_model", "running broken.py failed: SyntaxError"),
    ("--dataset", "{file}:returns_one_split", "expected (train, test)"),
    ("--dataset", "{file}:returns_unpaired_items", "not an (input, target) pair"),
    ("--dataset", "{file}:returns_ragged_items", "do not batch with default_collate"),
    ("--dataset", "{file}:raises", "calling it raised RuntimeError"),
    ("--loss", "{file}:per_sample_loss", "expected a scalar"),
    ("--loss", "hinge", "--loss 'hinge' is unknown"),
]


@pytest.mark.parametrize("engine", ["sim", "dist"])
@pytest.mark.parametrize("flag, spec, expected", BAD_SPECS)
def test_a_bad_spec_exits_2_with_one_line_before_anything_starts(
    tmp_path, capsys, task_file, engine, flag, spec, expected
):
    (task_file.parent / "broken.py").write_text("def make_model(:\n")
    spec = spec.format(file=task_file, dir=task_file.parent)
    good = {"--model": f"{task_file}:make_model", "--dataset": f"{task_file}:make_data"}
    argv = ["train", f"--engine={engine}", "--learners=2", "--quiet", f"--out={tmp_path / 'run'}"]
    argv += [f"{name}={value}" for name, value in good.items() if name != flag] + [f"{flag}={spec}"]
    line = fails_with_one_line(argv, capsys)
    assert expected in line and flag in line, line
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- real processes

SCRIPT = '''
"""A user's training script: its data factory is its own function, its model comes from the file beside it."""
import json
import sys

import softsync
from mytask import make_model, smooth_loss  # beside this script: on no one's sys.path but the script's


def make_data():
    from mytask import make_data as data

    return data()


if __name__ == "__main__":
    out, learners, protocol = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    summary = softsync.train(
        model=make_model, data=make_data, loss=smooth_loss, engine="dist", learners=learners, protocol=protocol,
        batch_size=16, epochs=2, lr=0.1, momentum=0.9, seed=1, quiet=True, timeout=60, out=out,
    )
    if summary is not None:  # rank 0 (a learner rank under torchrun returns None)
        print("SUMMARY " + json.dumps(summary))
'''


def run_script(command: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return [result]


@pytest.mark.dist
@pytest.mark.parametrize("protocol, learners", [("hardsync", 3), ("async", 2)])
def test_the_cli_trains_a_user_model_under_dist(tmp_path, task_file, protocol, learners):
    # dropout: each mini-batch draws its masks from its own seed, so hardsync under dist is still the sim's computation
    specs = [
        f"--model={task_file}:make_dropout_model",
        f"--dataset={task_file}:make_data",
        f"--loss={task_file}:smooth_loss",
    ]
    options = dict(protocol=protocol, learners=learners, timeout=60, **QUICK)
    command = ["train", *specs, *flags(options)]
    run_script([str(BIN / "softsync"), *command, "--engine=dist", f"--out={tmp_path / 'dist'}"], cwd=tmp_path)
    assert main([*command, "--engine=sim", f"--out={tmp_path / 'sim'}"]) == 0
    summary = json.loads((tmp_path / "dist" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["gradients"] == 2 * ((480 // (16 * learners)) * learners)
    if protocol == "hardsync":  # the same computation as the sim's
        difference = (final_weights(tmp_path / "dist") - final_weights(tmp_path / "sim")).abs().max().item()
        assert difference < 1e-5, difference


@pytest.mark.dist
def test_a_script_with_factories_in_itself_and_in_a_plain_file_beside_it_runs_under_dist(tmp_path, task_file):
    script = task_file.parent / "train_mine.py"
    script.write_text(SCRIPT)
    elsewhere = tmp_path / "elsewhere"  # not the script's directory: only its sys.path finds mytask.py
    elsewhere.mkdir()
    (result,) = run_script([sys.executable, str(script), str(tmp_path / "run"), "2", "async"], cwd=elsewhere)
    summary = json.loads(result.stdout.split("SUMMARY ", 1)[1])
    assert summary["status"] == "completed" and summary["gradients"] == 2 * (480 // 16)
    assert summary["config"]["model"] == "mytask:make_model"
    assert summary["config"]["dataset"] == f"{script}:make_data"  # a function of __main__, by its file
    assert summary["test_error"] < 0.2


@pytest.mark.dist
@pytest.mark.parametrize("how", ["script", "cli"])
def test_a_user_model_under_torchrun_with_two_nodes_on_loopback(tmp_path, task_file, how):
    script = task_file.parent / "train_mine.py"
    script.write_text(SCRIPT)
    if how == "script":  # the DDP convention: every rank runs the user's script
        program = [str(script), str(tmp_path / "run"), "3", "hardsync"]
    else:  # every rank runs softsync's entry point, which loads the specs
        options = dict(protocol="hardsync", learners=3, out=tmp_path / "run", timeout=60, **QUICK)
        specs = [f"--model={task_file}:make_model", f"--dataset={task_file}:make_data"]
        program = ["-m", "softsync.torchrun", *specs, f"--loss={task_file}:smooth_loss", *flags(options)]
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [
                str(BIN / "torchrun"),
                *f"--nnodes 2 --node-rank {node} --nproc-per-node 2 --master-addr 127.0.0.1 --master-port".split(),
                port,
                *program,
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for node in (0, 1)
    ]
    results = [node.communicate(timeout=180) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    if how == "script":
        assert json.loads(results[0][0].split("SUMMARY ", 1)[1]) == summary
        assert "SUMMARY" not in results[1][0]  # node 1 holds learners only
    assert summary["status"] == "completed" and summary["gradients"] == 2 * ((480 // 48) * 3)
    # hardsync under torchrun computes what one learner of μλ computes in the sim
    train(
        model=user_task.make_model,
        data=user_task.make_data,
        loss=user_task.smooth_loss,
        protocol="hardsync",
        learners=1,
        out=str(tmp_path / "one"),
        **{**QUICK, "batch_size": 48},
    )
    difference = (final_weights(tmp_path / "run") - final_weights(tmp_path / "one")).abs().max().item()
    assert difference < 1e-5, difference


def test_a_sweep_of_a_regression_reports_its_test_loss_and_plots_it(tmp_path, task_file, monkeypatch):
    from softsync import plots
    from softsync.sweep import sweep

    experiment = tmp_path / "regression.toml"
    experiment.write_text(
        f'[base]\nmodel = "{task_file}:make_regressor"\ndataset = "{task_file}:make_regression_data"\n'
        'loss = "mse"\nepochs = 2\nbatch_size = 16\nlr = 0.005\nquiet = true\n\n'
        '[grid]\nprotocol = ["hardsync", "async"]\nlearners = [2]\n\n[[figure]]\nkind = "test-error"\n\n'
        '[[figure]]\nkind = "final"\nx = "learners"\ny = "test_loss"\n'
    )
    plotted = []
    original = plots.plot_series
    monkeypatch.setattr(
        plots,
        "plot_series",
        lambda series, path, x, y, *a, **k: plotted.append((y, series)) or original(series, path, x, y, *a, **k),
    )
    rows = sweep(experiment, tmp_path / "out", jobs=1, log=lambda line: None)
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert all(row["test_error"] is None and row["test_loss"] > 0 for row in rows)
    (y, series), (final_y, _) = plotted
    assert y == "test loss" and all(all(loss is not None for _, loss in points) for points in series.values())
    assert final_y == "test_loss"
