"""--device cpu|cuda: where the learners compute (issue 14, item 5).

This machine has no GPU: the CUDA path's tests at the end are skipped without one. What runs here:
the refusal of --device cuda (for real, and with torch.cuda.is_available patched, so that it also
runs on a machine with a GPU), the CPU path unchanged (bit for bit, and no copy), the device of
each learner, and the helper that moves a collated mini-batch.
"""

import collections
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from softsync import train
from softsync.build import build_components, load_task
from softsync.config import ConfigError, make_config
from softsync.engines import dist as dist_engine
from softsync.engines.dist import HEADER, DistLearner
from softsync.engines.sim import SimEngine, StepTimeModel
from softsync.learner import Learner, learner_device, require_device, to_device

from helpers import fails_with_one_line, final_weights

SMALL = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--batch-size", "16", "--quiet"]
OPTIONS = dict(dataset="synthetic", model="mlp", batch_size=16, quiet=True)
NO_GPU = "--device cuda: this machine has no CUDA device torch can use (torch.cuda.is_available() is False)"
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def threads():
    """DistLearner sets torch's threads (a learner process's own): give the test process its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine without a GPU, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -- refusing --device cuda without a GPU ------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU: the patched test below covers the refusal")
@pytest.mark.parametrize("engine", ["sim", "dist"])
def test_device_cuda_on_this_machine_without_a_gpu_exits_2_with_one_line(engine, tmp_path, capsys):
    out = tmp_path / "run"
    line = fails_with_one_line(["train", *SMALL, "--engine", engine, "--device", "cuda", "--out", str(out)], capsys)
    assert NO_GPU in line and "use --device cpu" in line
    assert not out.exists()  # before the run directory is written (and, under dist, before any process starts)


@pytest.mark.parametrize("engine", ["sim", "dist"])
def test_device_cuda_without_cuda_exits_2_with_one_line_before_anything_starts(engine, tmp_path, capsys, no_cuda):
    out = tmp_path / "run"
    line = fails_with_one_line(["train", *SMALL, "--engine", engine, "--device", "cuda", "--out", str(out)], capsys)
    assert line == f"softsync: error: {NO_GPU}; use --device cpu"
    assert not out.exists()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_the_softsync_command_refuses_device_cuda_here(tmp_path):
    """The real command, in a process of its own: exit 2, one line on stderr, nothing written."""
    out = tmp_path / "run"
    command = [str(Path(sys.executable).parent / "softsync"), "train", *SMALL, "--device", "cuda", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"softsync: error: {NO_GPU}; use --device cpu"]
    assert not out.exists()


def test_a_learner_rank_checks_its_own_node(no_cuda, threads):
    """Under torchrun the launching node may have no GPU where a learner's node has one: each learner rank checks
    at its start, before loading anything."""
    config = make_config(engine="dist", device="cuda", **OPTIONS)  # the config itself is valid anywhere
    with pytest.raises(ConfigError, match=r"^--device cuda: the host of rank 1 \(.+\) has no CUDA device"):
        DistLearner(config, 0)


@pytest.mark.dist
@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_a_torchrun_learner_rank_without_a_gpu_exits_2_naming_its_host(tmp_path):
    """A learner rank as torchrun starts it (RANK, WORLD_SIZE): it fails before it joins the process group, and
    names its host (which node of a run has no GPU)."""
    environment = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("SOFTSYNC_SUPERVISED", None)
    command = [sys.executable, "-m", "softsync.torchrun", *SMALL, "--learners", "1", "--device", "cuda"]
    command += ["--out", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 2, result.stderr
    host = socket.gethostname()
    assert result.stderr.strip().splitlines() == [
        f"softsync: error: --device cuda: the host of rank 1 ({host}) has no CUDA device torch can use "
        "(torch.cuda.is_available() is False); use --device cpu"
    ]
    assert not (tmp_path / "run").exists()  # rank 0 writes the run directory; a learner rank never does


@pytest.mark.parametrize("name", ["gpu", "cuda:1", "CUDA", "mps", ""])
def test_an_unknown_device_exits_2_with_one_line_naming_cpu_and_cuda(name, tmp_path, capsys):
    line = fails_with_one_line(["train", *SMALL, "--device", name, "--out", str(tmp_path / "run")], capsys)
    assert f"--device {name!r} is unknown: use cpu or cuda" in line
    assert not (tmp_path / "run").exists()


def test_require_device():
    require_device("cpu")
    with pytest.raises(ConfigError, match="use cpu or cuda"):
        require_device("tpu")


# -- the CPU path is unchanged -----------------------------------------------------------------


def test_device_cpu_is_bit_identical_to_no_flag(tmp_path):
    options = dict(OPTIONS, protocol="2-softsync", learners=4, epochs=2, seed=7, momentum=0.9, step_jitter=0.3)
    plain = train(out=str(tmp_path / "plain"), **options)
    cpu = train(out=str(tmp_path / "cpu"), device="cpu", **options)
    assert torch.equal(final_weights(tmp_path / "plain"), final_weights(tmp_path / "cpu"))
    assert plain["test_loss"] == cpu["test_loss"] and plain["staleness"] == cpu["staleness"]
    assert cpu["config"]["device"] == "cpu" and plain["config"]["device"] == "cpu"


def test_on_the_cpu_the_sim_learner_computes_in_the_servers_weights(tmp_path):
    """No device learner and no copy: the learner's model lives in the server's weights, as before --device."""
    config = make_config(out=str(tmp_path / "run"), learners=2, **OPTIONS)
    parts = build_components(config, tmp_path / "run", load_task(config))
    engine = SimEngine(parts, StepTimeModel.from_config(config, parts.learner.weights))
    assert engine.learner is parts.learner
    assert engine.learner.weights.data_ptr() == parts.server.weights.data_ptr()
    assert engine.learner.device_weights is engine.learner.weights
    assert engine.learner.device_gradients is engine.learner.gradients


def test_on_the_cpu_a_dist_learner_computes_inside_its_message_buffers(threads):
    """The model's parameters are views of the receive buffer, its gradients of the send buffer: unpinned, no copy."""
    config = make_config(engine="dist", **OPTIONS)
    learner = DistLearner(config, 0)
    inbox, outbox = learner.inbox, learner.outbox
    assert not inbox.is_pinned() and not outbox.is_pinned()
    weights_at = inbox.data_ptr() + (HEADER + config.batch_size) * inbox.element_size()
    assert learner.learner.weights.data_ptr() == weights_at
    assert learner.learner.gradients.data_ptr() == outbox.data_ptr() + HEADER * outbox.element_size()
    start, end = inbox.data_ptr(), inbox.data_ptr() + inbox.numel() * inbox.element_size()
    for parameter in learner.learner.model.parameters():
        assert parameter.device.type == "cpu"
        assert start <= parameter.data_ptr() < end
    inputs, targets = learner.batch(torch.arange(16), 0)
    gradient, _ = learner.learner.gradient(learner.learner.weights, inputs, targets, seed=1)
    assert gradient.data_ptr() == learner.learner.gradients.data_ptr()  # the send buffer itself
    assert gradient.abs().sum() > 0


# -- which device a learner computes on --------------------------------------------------------


def test_learner_device_spreads_learners_over_the_gpus(monkeypatch):
    assert learner_device("cpu", 5) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [learner_device("cuda", index) for index in range(5)] == [
        torch.device("cuda", index) for index in (0, 1, 2, 0, 1)
    ]


@pytest.mark.parametrize("local_rank, index", [(None, 4), ("2", 2)])
def test_a_dist_learner_takes_its_gpu_from_local_rank_else_its_learner_id(local_rank, index, monkeypatch, threads):
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    asked: list[tuple[str, int]] = []

    def recording(name: str, at: int, where: str) -> torch.device:
        asked.append((name, at))
        return torch.device("cpu")

    monkeypatch.setattr(dist_engine, "learner_device", recording)
    DistLearner(make_config(engine="dist", learners=5, device="cuda", **OPTIONS), 4)
    assert asked == [("cuda", index)]


# -- moving a collated mini-batch ----------------------------------------------------------------


Pair = collections.namedtuple("Pair", "tokens lengths")


def test_to_device_moves_every_tensor_of_a_nested_structure_and_leaves_the_rest():
    meta = torch.device("meta")  # a device every torch build has: tensors must move there, the rest stay
    name, count = "batch", 3
    batch = {
        "image": torch.zeros(2, 3),
        "parts": [torch.ones(2), (torch.arange(3), name, count, None)],
        "pair": Pair(torch.zeros(4), [5, 6]),
        "ordered": collections.OrderedDict(mask=torch.ones(2, dtype=torch.bool)),
        "counts": collections.defaultdict(int, words=torch.ones(1)),
    }
    moved = to_device(batch, meta)
    assert type(moved) is dict and list(moved) == list(batch)
    assert moved["image"].device == meta and moved["image"].shape == (2, 3)
    assert type(moved["parts"]) is list and type(moved["parts"][1]) is tuple
    assert moved["parts"][0].device == meta and moved["parts"][1][0].device == meta
    assert moved["parts"][1][0].dtype == torch.int64
    assert moved["parts"][1][1] is name and moved["parts"][1][2] is count and moved["parts"][1][3] is None
    assert type(moved["pair"]) is Pair and moved["pair"].tokens.device == meta and moved["pair"].lengths == [5, 6]
    assert type(moved["ordered"]) is collections.OrderedDict and moved["ordered"]["mask"].device == meta
    assert moved["counts"]["words"].device == meta  # a defaultdict becomes a dict of the moved values
    assert batch["image"].device.type == "cpu"  # the original is left alone
    assert to_device("text", meta) == "text" and to_device(7, meta) == 7 and to_device(None, meta) is None


def test_to_device_on_the_same_device_returns_the_same_tensors():
    tensor = torch.zeros(3)
    assert to_device(tensor, torch.device("cpu")) is tensor
    assert to_device([tensor], torch.device("cpu"))[0] is tensor


# -- the CUDA path (skipped without a GPU: not run on the machine this was written on) ------------

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: torch.cuda.is_available() is False")
HARDSYNC = dict(OPTIONS, protocol="hardsync", learners=3, epochs=2, seed=4, momentum=0.9, weight_decay=1e-3, lr=0.05)
TOLERANCE = 1e-4


def batch_norm_net() -> nn.Module:
    """A model with buffers (batch norm's running statistics), which evaluation reads; 1×8×8 synthetic inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))


@needs_cuda
def test_a_cuda_learner_computes_the_cpu_learners_gradient_through_host_buffers():
    torch.manual_seed(0)
    cpu_model = batch_norm_net()
    gpu_model = batch_norm_net()
    gpu_model.load_state_dict(cpu_model.state_dict())
    cpu = Learner(cpu_model)
    gpu = Learner(gpu_model, device=torch.device("cuda", 0))
    assert gpu.device_weights.is_cuda and gpu.device_gradients.is_cuda
    assert not gpu.weights.is_cuda and gpu.weights.is_pinned() and gpu.gradients.is_pinned()
    assert torch.equal(gpu.weights, cpu.weights)  # the host buffer starts with the model's weights
    weights = cpu.weights.clone() + 0.01  # weights from elsewhere (the server's), on the host
    inputs, targets = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    expected, expected_loss = cpu.gradient(weights, inputs, targets, seed=3)
    gradient, loss = gpu.gradient(weights, inputs, targets, seed=3)
    assert gradient.data_ptr() == gpu.gradients.data_ptr() and not gradient.is_cuda
    assert torch.allclose(gradient, expected, atol=TOLERANCE) and abs(loss - expected_loss) < TOLERANCE
    assert torch.equal(gpu.device_weights.cpu(), weights)


@needs_cuda
def test_to_device_moves_a_batch_to_the_gpu():
    moved = to_device({"x": [torch.zeros(2)], "y": 1}, torch.device("cuda", 0))
    assert moved["x"][0].is_cuda and moved["y"] == 1


@needs_cuda
def test_sim_hardsync_on_cuda_equals_the_cpu_run(tmp_path):
    cpu = train(out=str(tmp_path / "cpu"), **HARDSYNC)
    gpu = train(out=str(tmp_path / "cuda"), device="cuda", **HARDSYNC)
    difference = (final_weights(tmp_path / "cuda") - final_weights(tmp_path / "cpu")).abs().max().item()
    assert difference < TOLERANCE, difference
    assert final_weights(tmp_path / "cuda").device.type == "cpu"  # the server stays on the CPU
    assert abs(gpu["test_loss"] - cpu["test_loss"]) < TOLERANCE
    assert gpu["updates"] == cpu["updates"] and gpu["staleness"] == cpu["staleness"]


@needs_cuda
def test_sim_on_cuda_evaluates_with_the_learners_batch_norm_statistics(tmp_path, synthetic):
    """The sim's GPU learner is a copy of the model: its buffers reach the evaluated model at every epoch end."""
    options = dict(HARDSYNC, model=batch_norm_net, data=synthetic)
    options.pop("dataset")
    cpu = train(out=str(tmp_path / "cpu"), **options)
    gpu = train(out=str(tmp_path / "cuda"), device="cuda", **options)
    difference = (final_weights(tmp_path / "cuda") - final_weights(tmp_path / "cpu")).abs().max().item()
    assert difference < TOLERANCE, difference
    assert abs(gpu["test_loss"] - cpu["test_loss"]) < TOLERANCE, (gpu["test_loss"], cpu["test_loss"])


@needs_cuda
@pytest.mark.dist
def test_dist_hardsync_on_cuda_equals_the_cpu_run(tmp_path):
    options = dict(HARDSYNC, engine="dist", timeout=120)
    cpu = train(out=str(tmp_path / "cpu"), **options)
    gpu = train(out=str(tmp_path / "cuda"), device="cuda", **options)
    difference = (final_weights(tmp_path / "cuda") - final_weights(tmp_path / "cpu")).abs().max().item()
    assert difference < TOLERANCE, difference
    assert gpu["status"] == "completed" and gpu["updates"] == cpu["updates"]
    assert set(gpu["staleness"]["histogram"]) == {"0"}
