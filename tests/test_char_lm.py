"""examples/char_lm.py: a character-level GRU language model trained asynchronously with α0/τ on a text file."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import metrics

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "char_lm.py"
# small enough for a test: 8.75 KB of text in windows of 16, μ = 8: 61 updates an epoch. The test loss fell for every
# seed tried by hand, 0 to 7, from 1.89-2.15 to 1.35-1.50 nats/char (seed 0: 2.00 to 1.42)
QUICK = ["--epochs", "2", "--context", "16", "--batch-size", "8", "--lr", "0.1", "--seed", "0", "--quiet"]

PARAGRAPH = (
    "The parameter server keeps the weights and a clock. Each learner pulls the weights, computes a gradient "
    "on its mini-batch and pushes it back. When the gradient arrives late, the server divides the learning "
    "rate by its staleness, so that old news moves the model less than fresh news.\n"
)
VARIANTS = [("weights", "parameters"), ("learner", "worker"), ("late", "after a while"), ("model", "network")]


def english(repeats: int = 30) -> str:
    """The paragraph ``repeats`` times, each repeat with its own subset of the word swaps: deterministic, learnable."""
    parts = []
    for repeat in range(repeats):
        paragraph = PARAGRAPH
        for bit, (word, other) in enumerate(VARIANTS):
            if repeat >> bit & 1:
                paragraph = paragraph.replace(word, other)
        parts.append(paragraph)
    return "".join(parts)


@pytest.fixture(scope="module")
def char_lm():
    """The example, imported by its path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("char_lm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def settings_restored(monkeypatch, char_lm):
    """main() hands the factories their settings in os.environ: undo that after each test."""
    for name in (char_lm.TEXT, char_lm.CONTEXT, char_lm.HIDDEN):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(english(), encoding="utf-8")
    return path


def test_the_windows_are_the_text_and_the_text_shifted_by_one(char_lm, text_file, monkeypatch):
    monkeypatch.setenv(char_lm.TEXT, str(text_file))
    monkeypatch.setenv(char_lm.CONTEXT, "16")
    monkeypatch.setenv(char_lm.HIDDEN, "32")
    text, vocab = char_lm.read_text(str(text_file))
    train, test = char_lm.make_data()
    split = int(0.9 * len(text))
    assert (len(train), len(test)) == ((split - 1) // 16, (len(text) - split - 1) // 16)
    decode = "".join
    inputs, targets = train[1]
    assert decode(vocab[i] for i in inputs) == text[16:32] and decode(vocab[i] for i in targets) == text[17:33]
    inputs, targets = test[0]
    assert decode(vocab[i] for i in inputs) == text[split : split + 16]
    assert inputs.dtype == targets.dtype == torch.long and inputs.shape == targets.shape == (16,)
    logits = char_lm.make_model()(inputs[None])
    assert logits.shape == (1, 16, len(vocab))  # the model's vocabulary is the data's


def test_async_with_staleness_lr_lowers_the_test_loss_under_sim(char_lm, text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert char_lm.main(["--text", str(text_file), "--out", str(out), *QUICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = metrics(out)
    assert summary["status"] == "completed"
    config = summary["config"]
    assert (config["engine"], config["protocol"], config["lr_policy"], config["learners"]) == (
        "sim",
        "async",
        "staleness",
        4,
    )
    assert summary["staleness"]["mean"] > 1  # async: the gradients are stale, and their rates divided by it
    assert [record["test_error"] for record in records] == [None, None]  # (N, T, V) outputs: no classification error
    first, last = records[0]["test_loss"], records[-1]["test_loss"]
    vocabulary = len(set(english()))
    assert last < first < math.log(vocabulary), (first, last)  # below a uniform guess, and falling
    printed = capsys.readouterr().out
    assert f"test loss {last:.4f} nats/char = {last / math.log(2):.4f} bits/char" in printed


@pytest.mark.parametrize(
    "content, expected",
    [
        ("Too short to learn from.\n", "too short for one training and one test window"),
        (b"caf\xe9 au lait " * 100, "is not UTF-8 text"),  # Latin-1, not UTF-8
        (None, "cannot read --text"),  # no such file
    ],
)
def test_a_text_it_cannot_train_on_exits_2_with_one_line(char_lm, tmp_path, capsys, content, expected):
    path = tmp_path / "text.txt"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    assert char_lm.main(["--text", str(path), "--out", str(tmp_path / "run"), *QUICK]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("char_lm.py: error:") and expected in lines[0], captured.err
    assert captured.out == "" and not (tmp_path / "run").exists()


@pytest.mark.dist
def test_the_script_trains_under_dist(text_file, tmp_path):
    """The factories at the top level of the script reach the learner processes; its __main__ block runs once."""
    out = tmp_path / "run"
    command = [sys.executable, str(EXAMPLE), "--text", str(text_file), "--out", str(out), *QUICK]
    result = subprocess.run(
        [*command, "--engine", "dist", "--learners", "2", "--timeout", "60"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["engine"] == "dist"
    assert summary["config"]["model"] == f"{EXAMPLE}:make_model"  # loaded by path in every learner
    records = metrics(out)
    assert [record["test_error"] for record in records] == [None, None]
    assert records[-1]["test_loss"] < records[0]["test_loss"]
    assert result.stdout.count("test loss") == 1
