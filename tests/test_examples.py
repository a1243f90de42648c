"""The examples of examples/ run as their docstrings say (on a subset of Fashion-MNIST, to stay quick)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from softsync.datasets import FASHION_MNIST_SYSTEM_DIR
from softsync.engines.launch import free_port

EXAMPLES = Path(__file__).parents[1] / "examples"
BIN = Path(sys.executable).parent

needs_fashion_mnist = pytest.mark.skipif(
    not Path(FASHION_MNIST_SYSTEM_DIR).is_dir() and not os.environ.get("SOFTSYNC_DATA"),
    reason="Fashion-MNIST is not installed (make setup installs it)",
)


@needs_fashion_mnist
@pytest.mark.dist
def test_train_mine_under_torchrun(tmp_path):
    command = [str(BIN / "torchrun"), "--nproc-per-node", "3", "--master-port", str(free_port())]
    command += [str(EXAMPLES / "train_mine.py"), "--engine", "dist", "--learners", "2", "--epochs", "2"]
    command += ["--subset", "4096", "--out", str(tmp_path / "run")]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["gradients"] == 2 * (4096 // 32)
    assert summary["config"]["model"] == f"{EXAMPLES / 'train_mine.py'}:make_model"
    assert summary["test_error"] < 0.4  # ten classes: far better than chance after 8192 samples
    assert result.stdout.count("completed: test error") == 1  # rank 0 alone reports
