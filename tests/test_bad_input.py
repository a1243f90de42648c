"""The bad-input battery through `softsync train`, under both engines: one line, exit 2, nothing damaged."""

import gzip

import pytest
import torch

from softsync.cli import main

from helpers import epochs, fails_with_one_line, snapshot
from test_datasets import make_mnist

ENGINES = ["sim", "dist"]


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def corrupt_gzip(path):
    path.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 8)


def wrong_magic(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x42  # an IDX type byte that does not exist
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("damage", [truncate, corrupt_gzip, wrong_magic, lambda path: path.unlink()])
def test_damaged_dataset_files(tmp_path, capfd, engine, damage):
    data = tmp_path / "mnist"
    make_mnist(data, n_train=64, n_test=16)
    damage(data / "train-images-idx3-ubyte.gz")
    out = tmp_path / "run"
    line = fails_with_one_line(
        [
            "train",
            "--engine",
            engine,
            *"--dataset mnist --data-dir".split(),
            str(data),
            *"--learners 2 --batch-size 8 --model logreg --quiet --out".split(),
            str(out),
        ],
        capfd,
    )
    assert "train-images-idx3-ubyte" in line  # the damaged or missing file, by name
    assert not out.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert (
        main(
            [
                *"train --dataset synthetic --model logreg --epochs 1 --learners 2 --quiet --out".split(),
                str(out),
            ]
        )
        == 0
    )
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_resume_a_model_that_does_not_match(tmp_path, capfd, finished_run, engine):
    run = tmp_path / "run"
    run.mkdir()
    for path in finished_run.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    checkpoint["config"].update(model="mlp", engine=engine)  # as if the file came from another run
    torch.save(checkpoint, run / "checkpoint.pt")
    before = snapshot(run)
    line = fails_with_one_line(["train", "--resume", str(run), "--epochs", "2", "--quiet"], capfd)
    assert "checkpoint holds" in line and "weights" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, None])
def test_resume_from_a_damaged_or_missing_checkpoint(tmp_path, capfd, finished_run, content):
    run = tmp_path / "run"
    run.mkdir()
    for path in finished_run.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    if content is None:
        (run / "checkpoint.pt").unlink()
    else:
        (run / "checkpoint.pt").write_bytes(content)
    before = snapshot(run)
    line = fails_with_one_line(["train", "--resume", str(run), "--epochs", "2", "--quiet"], capfd)
    assert "checkpoint.pt" in line
    assert snapshot(run) == before


def test_resume_from_a_directory_that_is_not_a_run(tmp_path, capfd):
    (tmp_path / "notes.txt").write_text("mine")
    assert "not a run directory" in fails_with_one_line(["train", "--resume", str(tmp_path), "--quiet"], capfd)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("engine", ENGINES)
def test_unwritable_out(tmp_path, capfd, engine):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = fails_with_one_line(
        [
            "train",
            "--engine",
            engine,
            *"--dataset synthetic --model logreg --learners 2 --quiet --out".split(),
            str(blocker / "run"),
        ],
        capfd,
    )
    assert "--out" in line and "not writable" in line
    assert blocker.read_text() == "x"


def test_a_run_directory_under_dist_is_never_overwritten(tmp_path, capfd, finished_run):
    before = snapshot(finished_run)
    line = fails_with_one_line(
        [
            *"train --engine dist --dataset synthetic --model logreg --learners 2 --quiet --out".split(),
            str(finished_run),
        ],
        capfd,
    )
    assert "already holds a run" in line
    assert snapshot(finished_run) == before


def test_resume_skips_metrics_lines_that_are_not_records(tmp_path, capfd, finished_run):
    """Issue 9 item 11: a metrics.jsonl line that is JSON but not a record ([1, 2], {"epoch": "x"}) gave a traceback.

    Such a line is skipped like a line cut short by a crash, and the resumed run rewrites the file without it.
    """
    run = tmp_path / "run"
    run.mkdir()
    for path in finished_run.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    with open(run / "metrics.jsonl", "ab") as handle:
        handle.write(b'[1, 2]\n{"epoch": "x"}\n"text"\n{"epoch": true}\n\xff\xfe\n')
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert "Traceback" not in capfd.readouterr().err
    assert epochs(run) == [1, 2]
