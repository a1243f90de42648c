"""A run directory's life: one writer at a time, a failed start can start again, checkpoints that cannot be
written or read. Regression tests of issue 9 (items 4, 9, 10, 11, 13)."""

import errno

import pytest
import torch

from softsync.cli import main
from softsync.config import make_config
from softsync.rundir import RunLock, create_run_dir

from helpers import epochs, fails_with_one_line, snapshot

SMALL = ["--dataset", "synthetic", "--model", "logreg", "--learners", "2", "--protocol", "async", "--quiet"]


@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_a_second_writer_of_a_run_is_refused_and_changes_nothing(finished, capsys):
    """Item 4: while one process holds a run, another --resume (or --out) is refused with one line."""
    before = snapshot(finished)
    with RunLock(finished):  # as a running `softsync train` holds it
        line = fails_with_one_line(["train", "--resume", str(finished), "--epochs", "4"], capsys)
        assert "in use by a running softsync" in line
        line = fails_with_one_line(["train", *SMALL, "--out", str(finished)], capsys)
        assert "in use" in line
    assert snapshot(finished) == before
    assert main(["train", "--resume", str(finished), "--epochs", "3"]) == 0  # free again
    assert epochs(finished) == [1, 2, 3]


def test_a_run_that_stopped_before_its_first_checkpoint_starts_again_in_place(tmp_path, capsys):
    """Item 10: a directory left with only config.json (Ctrl-C during start-up) is neither a dead end nor
    overwritten while its run still holds it."""
    out = tmp_path / "run"
    config = make_config(dataset="synthetic", model="logreg", out=str(out))
    _, lock = create_run_dir(out, config)
    (out / "notes.txt").write_text("mine")  # a file softsync did not write stays
    assert "in use" in fails_with_one_line(["train", *SMALL, "--epochs", "1", "--out", str(out)], capsys)
    lock.release()  # the process died before its first checkpoint
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    assert epochs(out) == [1] and (out / "notes.txt").read_text() == "mine"


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(finished, capsys, monkeypatch):
    """Item 9: the write fails; the previous checkpoint stays intact and no temporary file is left."""
    before = (finished / "checkpoint.pt").read_bytes()

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    assert main(["train", "--resume", str(finished), "--epochs", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write the checkpoint" in err[0] and "No space left on device" in err[0], err
    assert (finished / "checkpoint.pt").read_bytes() == before
    assert not (finished / "checkpoint.pt.tmp").exists()


@pytest.mark.parametrize(
    "part, key",
    [
        ("server", "weights"),
        ("server", "optimizer"),
        ("data", "reissue"),
        ("coordinator", "in_flight"),
        ("engine", "events"),
    ],
)
def test_a_checkpoint_missing_a_part_of_its_state_is_one_line(finished, capsys, part, key):
    """Item 11: a damaged checkpoint (a state without one of its entries) is refused with one line, exit 2."""
    path = finished / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint[part][key]
    torch.save(checkpoint, path)
    line = fails_with_one_line(["train", "--resume", str(finished), "--epochs", "3"], capsys)
    assert "checkpoint.pt is damaged" in line and part in line


def test_a_checkpoint_of_another_format_is_refused(finished, capsys):
    path = finished / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["version"] = 99
    torch.save(checkpoint, path)
    assert "format 99" in fails_with_one_line(["train", "--resume", str(finished)], capsys)


def test_resuming_with_fewer_epochs_than_done_is_refused(finished, capsys):
    """Item 13: `--resume R --epochs 1` on a 2-epoch run would write epochs: 1 beside 2 epochs of metrics."""
    before = snapshot(finished)
    assert "already trained 2 epochs" in fails_with_one_line(
        ["train", "--resume", str(finished), "--epochs", "1"], capsys
    )
    assert snapshot(finished) == before
