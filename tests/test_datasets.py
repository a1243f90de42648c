"""Tests for softsync.datasets: tiny files in the real formats, no downloads."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from softsync import datasets
from softsync.datasets import DataError, Dataset, load_dataset, read_idx, resolve_data_dir

# ----------------------------------------------------------------------------- writers


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: 0, 0, 0x08, ndim, big-endian uint32 dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_mnist(directory: Path, n_train: int = 6, n_test: int = 3, gz: bool = True, seed: int = 0):
    """Write a tiny (Fashion-)MNIST release; returns the raw uint8 arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    for name, array in zip(datasets.IDX_FILES, arrays, strict=True):
        write_idx(directory / name, array, gz)
    return arrays


def make_cifar(directory: Path, fmt: str, per_batch: int = 2, seed: int = 0):
    """Write a tiny CIFAR-10 python or binary release; returns (train_x, train_y, test_x, test_y)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).astype(np.int64)
        xs.append(x)
        ys.append(y)
        stem = datasets.CIFAR_PY_FILES[i]
        if fmt == "py":
            batch = {b"batch_label": b"x", b"labels": [int(v) for v in y], b"data": x, b"filenames": []}
            with open(directory / stem, "wb") as f:
                pickle.dump(batch, f)
        else:
            records = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
            (directory / f"{stem}.bin").write_bytes(records.tobytes())
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No $SOFTSYNC_DATA and no system Fashion-MNIST unless a test sets them."""
    monkeypatch.delenv("SOFTSYNC_DATA", raising=False)
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-dir"))


def expected_preprocessing(train_raw: np.ndarray, test_raw: np.ndarray, shape):
    train = torch.from_numpy(train_raw.astype(np.float32) / 255).reshape(-1, *shape)
    test = torch.from_numpy(test_raw.astype(np.float32) / 255).reshape(-1, *shape)
    mean = train.mean(0, keepdim=True)
    return train - mean, test - mean


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, gz)
    t = read_idx(path)
    assert t.dtype == torch.uint8 and t.shape == (2, 3, 4)
    assert torch.equal(t, torch.from_numpy(array))


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\0", "corrupt"),
        (lambda b: b"\x08\x03" + b[2:], "magic"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "data type"),
        (lambda b: b[:6], "header"),
    ],
)
def test_read_idx_corrupt(tmp_path, mutate, problem):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(np.zeros((4, 5, 5), np.uint8))))
    with pytest.raises(DataError, match=problem) as e:
        read_idx(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_read_idx_truncated_and_bad_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    truncated = tmp_path / "t.gz"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "g.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    for path in (truncated, garbage, tmp_path / "missing"):
        with pytest.raises(DataError) as e:
            read_idx(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- (Fashion-)MNIST


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_load_mnist_like(tmp_path, name, gz):
    train_x, train_y, test_x, test_y = make_mnist(tmp_path, gz=gz)
    d = load_dataset(name, data_dir=tmp_path)
    assert isinstance(d, Dataset) and d.name == name and d.num_classes == 10
    assert d.input_shape == (1, 28, 28)
    assert d.train.inputs.shape == (6, 1, 28, 28) and d.test.inputs.shape == (3, 1, 28, 28)
    assert d.train.inputs.dtype == torch.float32 and d.train.targets.dtype == torch.int64
    assert d.train.targets.tolist() == train_y.tolist() and d.test.targets.tolist() == test_y.tolist()
    want_train, want_test = expected_preprocessing(train_x, test_x, (1, 28, 28))
    torch.testing.assert_close(d.train.inputs, want_train)
    torch.testing.assert_close(d.test.inputs, want_test)
    # Per-pixel training mean is zero; the test set uses the *training* mean.
    assert d.train.inputs.mean(0).abs().max() < 1e-6
    assert d.test.inputs.mean(0).abs().max() > 1e-3


def test_dataset_subdirectory_is_found(tmp_path):
    make_mnist(tmp_path / "mnist")
    assert resolve_data_dir("mnist", tmp_path) == tmp_path / "mnist"
    assert len(load_dataset("mnist", tmp_path).train.targets) == 6


def test_search_order(tmp_path, monkeypatch):
    given, env, system = tmp_path / "given", tmp_path / "env", tmp_path / "system"
    make_mnist(given, n_train=4)
    make_mnist(env / "fashion-mnist", n_train=5)
    make_mnist(system, n_train=7)
    monkeypatch.setenv("SOFTSYNC_DATA", str(env))
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(system))
    # data_dir beats $SOFTSYNC_DATA beats the system directory.
    assert resolve_data_dir("fashion-mnist", given) == given
    assert len(load_dataset("fashion-mnist", given).train.targets) == 4
    assert resolve_data_dir("fashion-mnist") == env / "fashion-mnist"
    monkeypatch.delenv("SOFTSYNC_DATA")
    assert resolve_data_dir("fashion-mnist") == system
    assert len(load_dataset("fashion-mnist").train.targets) == 7
    # The system directory is only for Fashion-MNIST.
    with pytest.raises(DataError):
        resolve_data_dir("mnist")


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10"])
def test_missing_data_is_one_line_error(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_dataset(name, data_dir=tmp_path / "empty")
    message = str(e.value)
    assert "\n" not in message and "not found" in message and "--data-dir" in message
    assert str(tmp_path / "empty") in message
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.parametrize("damage", ["missing", "lacks a file"])
def test_an_explicit_data_dir_is_the_only_place_looked_in(tmp_path, monkeypatch, damage):
    """Issue 9 item 5: a bad --data-dir never falls back to $SOFTSYNC_DATA or the system copy."""
    env, system, given = tmp_path / "env", tmp_path / "system", tmp_path / "given"
    make_mnist(env)
    make_mnist(system)
    monkeypatch.setenv("SOFTSYNC_DATA", str(env))
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(system))
    if damage == "lacks a file":
        make_mnist(given)
        (given / "t10k-labels-idx1-ubyte.gz").unlink()
    for name in ("fashion-mnist", "mnist"):
        with pytest.raises(DataError) as e:
            resolve_data_dir(name, given)
        message = str(e.value)
        assert "\n" not in message and f"not found in --data-dir {given}" in message
        if damage == "lacks a file":
            assert "t10k-labels-idx1-ubyte" in message
        with pytest.raises(DataError):
            load_dataset(name, given)
    assert resolve_data_dir("fashion-mnist") == env  # without --data-dir the fallbacks still apply


def test_an_explicit_cifar_data_dir_is_the_only_place_looked_in(tmp_path, monkeypatch):
    """Issue 9 item 5, CIFAR-10: $SOFTSYNC_DATA is not searched when --data-dir is given."""
    make_cifar(tmp_path / "env" / "cifar10" / "cifar-10-batches-py", "py")
    monkeypatch.setenv("SOFTSYNC_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError, match="given"):
        load_dataset("cifar10", tmp_path / "given")


def test_incomplete_directory_is_not_used(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", tmp_path)


def test_truncated_idx_in_dataset(tmp_path):
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as e:
        load_dataset("mnist", tmp_path)
    assert "\n" not in str(e.value)


def test_image_label_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), gz=True)
    with pytest.raises(DataError, match="6 images but .* 5 labels"):
        load_dataset("mnist", tmp_path)


def test_out_of_range_label(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 10], np.uint8), gz=True)
    with pytest.raises(DataError, match="labels must lie in 0..9"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("fmt, sub", [("py", "cifar-10-batches-py"), ("bin", "cifar-10-batches-bin"), ("py", "")])
def test_load_cifar(tmp_path, fmt, sub):
    train_x, train_y, test_x, test_y = make_cifar(tmp_path / sub if sub else tmp_path, fmt)
    d = load_dataset("cifar10", data_dir=tmp_path)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10
    assert d.train.inputs.shape == (10, 3, 32, 32) and d.test.inputs.shape == (2, 3, 32, 32)
    assert d.train.targets.dtype == torch.int64
    assert d.train.targets.tolist() == train_y.tolist() and d.test.targets.tolist() == test_y.tolist()
    want_train, want_test = expected_preprocessing(train_x, test_x, (3, 32, 32))
    torch.testing.assert_close(d.train.inputs, want_train)
    torch.testing.assert_close(d.test.inputs, want_test)
    assert d.train.inputs.mean(0).abs().max() < 1e-6


def test_cifar_channel_layout(tmp_path):
    """The 3072 bytes are the R, G and B planes in turn, each a row-major 32x32 image."""
    zeros = np.zeros((1, 3073), np.uint8)
    for stem in datasets.CIFAR_PY_FILES[:5]:
        (tmp_path / f"{stem}.bin").write_bytes(zeros.tobytes())
    record = zeros.copy()
    record[0, 0] = 7  # label
    record[0, 1 + 1024 + 32 * 2 + 3] = 255  # green channel, row 2, column 3
    (tmp_path / "test_batch.bin").write_bytes(record.tobytes())
    d = load_dataset("cifar10", tmp_path)  # all-zero training set: mean image is 0
    expected = torch.zeros(1, 3, 32, 32)
    expected[0, 1, 2, 3] = 1.0
    assert torch.equal(d.test.inputs, expected) and d.test.targets.tolist() == [7]


def test_cifar_env_var(tmp_path, monkeypatch):
    make_cifar(tmp_path / "cifar10" / "cifar-10-batches-bin", "bin")
    monkeypatch.setenv("SOFTSYNC_DATA", str(tmp_path))
    assert load_dataset("cifar10").train.inputs.shape == (10, 3, 32, 32)


def test_cifar_truncated_binary(tmp_path):
    make_cifar(tmp_path, "bin")
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="test_batch.bin") as e:
        load_dataset("cifar10", tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content",
    [
        b"garbage",
        pickle.dumps({b"labels": [1]}),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}),
    ],
)
def test_cifar_corrupt_pickle(tmp_path, content):
    make_cifar(tmp_path, "py")
    (tmp_path / "data_batch_3").write_bytes(content)
    with pytest.raises(DataError, match="data_batch_3") as e:
        load_dataset("cifar10", tmp_path)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism():
    a = load_dataset("synthetic", seed=3, synthetic_size=256)
    b = load_dataset("synthetic", seed=3, synthetic_size=256)
    c = load_dataset("synthetic", seed=4, synthetic_size=256)
    assert a.train.inputs.shape == (256, *a.input_shape) and a.test.inputs.shape == (64, *a.input_shape)
    assert a.train.inputs.dtype == torch.float32 and a.train.targets.dtype == torch.int64
    for split in ("train", "test"):
        for field in ("inputs", "targets"):
            assert torch.equal(getattr(getattr(a, split), field), getattr(getattr(b, split), field))
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert not torch.equal(a.train.targets, c.train.targets)
    assert a.train.inputs.mean(0).abs().max() < 1e-5
    assert set(a.train.targets.tolist()) == set(range(a.num_classes))


def test_synthetic_is_learnable():
    d = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = torch.nn.Linear(int(np.prod(d.input_shape)), d.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = d.train.inputs.flatten(1), d.train.targets
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    accuracy = (model(d.test.inputs.flatten(1)).argmax(1) == d.test.targets).float().mean().item()
    assert accuracy > 0.85


def test_a_dataset_without_test_samples_is_refused(tmp_path):
    """Issue 9 item 8: no test samples would report a perfect test error of 0; refuse instead."""
    with pytest.raises(DataError, match="--synthetic-size 3") as e:
        load_dataset("synthetic", synthetic_size=3)  # the test set is a quarter of it: none
    assert "\n" not in str(e.value)
    assert len(load_dataset("synthetic", synthetic_size=4).test.targets) == 1
    make_mnist(tmp_path, n_test=0)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte") as e:
        load_dataset("mnist", tmp_path)
    assert "no test samples" in str(e.value)


def test_synthetic_has_no_data_dir():
    with pytest.raises(DataError):
        resolve_data_dir("synthetic", None)


# ----------------------------------------------------------------------------- real data


def test_real_fashion_mnist(monkeypatch):
    system = Path("/usr/share/datasets/fashion-mnist")
    if not (system / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(system))
    d = load_dataset("fashion-mnist")
    assert d.train.inputs.shape == (60000, 1, 28, 28) and d.test.inputs.shape == (10000, 1, 28, 28)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert sorted(d.train.targets.unique().tolist()) == list(range(10))
    assert d.train.inputs.mean(0).abs().max() < 1e-5
