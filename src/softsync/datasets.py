"""Dataset loading: Fashion-MNIST, MNIST, CIFAR-10 and a seeded synthetic set.

Every dataset is returned as float32 tensors of shape (N, C, H, W) with pixels
scaled to [0, 1] and the per-pixel mean image of the *training* set subtracted
from both the training and the test images, as in the paper (Caffe's
``mean_file``). Labels are int64.

Where the files are looked for (first hit wins):

1. if ``data_dir`` is given: ``data_dir`` and ``data_dir/<name>/``, and nowhere else: a
   ``data_dir`` that is missing or incomplete is an error, never a silent switch to another copy;
2. otherwise ``$SOFTSYNC_DATA`` and ``$SOFTSYNC_DATA/<name>/``, then, for Fashion-MNIST only,
   :data:`FASHION_MNIST_SYSTEM_DIR` (Debian's ``dataset-fashion-mnist`` package).

Missing or corrupt files raise :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset, default_collate

from .errors import ConfigError, DataError, first_line

__all__ = [
    "DATASETS",
    "FASHION_MNIST_SYSTEM_DIR",
    "DataError",
    "Dataset",
    "Samples",
    "batcher",
    "from_factory",
    "load_dataset",
    "read_idx",
    "resolve_data_dir",
]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic")
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "SOFTSYNC_DATA"

# The four files of the (Fashion-)MNIST release, in the order train x, train y, test x, test y.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_SUBDIRS = ("cifar-10-batches-py", "cifar-10-batches-bin")
CIFAR_PY_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_BIN_FILES = tuple(f"{f}.bin" for f in CIFAR_PY_FILES)
CIFAR_SHAPE = (3, 32, 32)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR_RECORD = 1 + 3 * 32 * 32
NUM_CLASSES = 10

_PRETTY = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10"}


class Samples(TorchDataset):
    """An in-memory split: item i is ``(inputs[i], targets[i])``, and a mini-batch is one indexing of each tensor."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


@dataclass
class Dataset:
    """A run's data: two map-style datasets whose items are ``(input, target)`` pairs."""

    name: str
    train: TorchDataset
    test: TorchDataset
    num_classes: int | None = None  # what a built-in model needs; None when the data does not say

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (C, H, W for images)."""
        return tuple(self.train[0][0].shape)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "  # type: ignore[arg-type]
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


Batcher = Callable[[torch.Tensor, int], tuple[Any, Any]]


def in_memory(split: TorchDataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (inputs, targets) tensors of a split held in memory (Samples, or a TensorDataset of two); else None."""
    if isinstance(split, Samples):
        return split.inputs, split.targets
    if isinstance(split, TensorDataset) and len(split.tensors) == 2:
        return split.tensors[0], split.tensors[1]
    return None


def batcher(split: TorchDataset) -> Batcher:
    """How to collate the mini-batch of ``split`` at some sample indices in some epoch: ``(inputs, targets)``.

    A split in memory is indexed at once; any other is read item by item and batched with
    ``default_collate``, after ``split.set_epoch(epoch)`` where it has one (the DistributedSampler
    convention: a random augmentation then depends on the epoch and the index only, so a resumed or
    replayed run draws the same).
    """
    tensors = in_memory(split)
    if tensors is not None:
        inputs, targets = tensors
        return lambda indices, epoch: (inputs[indices], targets[indices])
    set_epoch = getattr(split, "set_epoch", None)

    def collate(indices: torch.Tensor, epoch: int) -> tuple[Any, Any]:
        if set_epoch is not None:
            set_epoch(epoch)
        inputs, targets = default_collate([split[index] for index in indices.tolist()])
        return inputs, targets

    return collate


def from_factory(splits: Any, spec: str, flag: str = "--dataset") -> Dataset:
    """Check what a dataset factory returned, ``(train, test)``, and name it ``spec``; ConfigError (one line) if wrong.

    Each split must be a non-empty map-style dataset whose items are ``(input, target)`` pairs that
    batch with ``default_collate`` (checked on the first two items of each).
    """
    if not isinstance(splits, (tuple, list)) or len(splits) != 2:
        raise ConfigError(f"{flag} {spec!r} returned {kind_of(splits)}, expected (train, test): two map-style datasets")
    for what, split in zip(("training", "test"), splits, strict=True):
        if not (hasattr(split, "__getitem__") and hasattr(split, "__len__")):
            raise ConfigError(f"{flag} {spec!r}: the {what} set is {kind_of(split)}, not a map-style dataset")
        try:
            size = len(split)
            if size < 1:
                raise ConfigError(f"{flag} {spec!r}: the {what} set is empty")
            items = [split[index] for index in range(min(2, size))]
        except ConfigError:
            raise
        except Exception as error:
            raise ConfigError(f"{flag} {spec!r}: reading the {what} set failed: {first_line(error)}") from None
        if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
            raise ConfigError(
                f"{flag} {spec!r}: item 0 of the {what} set is {kind_of(items[0])}, not an (input, target) pair"
            )
        try:
            default_collate(items)
        except Exception as error:
            raise ConfigError(
                f"{flag} {spec!r}: items of the {what} set do not batch with default_collate: {first_line(error)}"
            ) from None
    train, test = splits
    return Dataset(spec, train, test, _num_classes(train))


def _num_classes(train: TorchDataset) -> int | None:
    """torchvision's ``classes`` list, a ``num_classes`` attribute, or the largest class index + 1 of targets in
    memory; None when the data does not say (only a built-in model needs it)."""
    classes = getattr(train, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        return len(classes)
    count = getattr(train, "num_classes", None)
    if isinstance(count, int) and count > 0:
        return count
    tensors = in_memory(train)
    if tensors is not None and tensors[1].dim() == 1 and not tensors[1].is_floating_point() and len(tensors[1]):
        return int(tensors[1].max()) + 1
    return None


def kind_of(value: Any) -> str:
    """What a user's value is, for a one-line error: `None`, `a str`, `a tuple of 3`."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return "None" if value is None else f"a {type(value).__name__}"


# ----------------------------------------------------------------------------- file formats


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (gzip-compressed or plain) holding unsigned bytes.

    The header is ``0, 0, dtype, ndim`` followed by ``ndim`` big-endian uint32 sizes;
    only dtype 0x08 (uint8) is accepted. Returns a uint8 tensor of those sizes.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number); re-download it")
    dtype, ndim = raw[2], raw[3]
    if dtype != 0x08:
        raise DataError(f"{path}: IDX data type 0x{dtype:02x} is not supported (only uint8 0x08)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; re-download the file")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header {dims} needs {expected} data bytes but the file has "
            f"{len(raw) - header}; the file is truncated or corrupt, re-download it"
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(data.copy())


def _read_bytes(path: Path) -> bytes:
    """Read a whole file, transparently decompressing gzip; errors become DataError."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        problem = "truncated gzip stream" if isinstance(e, EOFError) else str(e) or type(e).__name__
        raise DataError(f"{path}: cannot read ({problem}); re-download the file") from e
    return raw


def _load_cifar_python(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load one batch of the CIFAR-10 python release: (uint8 (N, 3072), int64 (N,)).

    Note: this unpickles the file, so only point it at data you trust (the official release).
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        x = np.asarray(batch[b"data"])
        y = np.asarray(batch[b"labels"], dtype=np.int64)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e}); re-download CIFAR-10") from e
    except Exception as e:  # pickle raises many types on corrupt input
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e}); re-download CIFAR-10") from e
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != CIFAR_RECORD - 1:
        raise DataError(f"{path}: b'data' is {x.dtype} {x.shape}, expected uint8 (N, 3072); re-download CIFAR-10")
    if y.shape != (len(x),):
        raise DataError(f"{path}: {len(x)} images but {y.size} labels; re-download CIFAR-10")
    return x, y


def _load_cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load one batch of the CIFAR-10 binary release (records of 1 label byte + 3072 pixels)."""
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DataError(
            f"{path}: size {len(raw)} is not a positive multiple of the {CIFAR_RECORD}-byte "
            "CIFAR-10 record; the file is truncated or corrupt, re-download CIFAR-10"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return records[:, 1:], records[:, 0].astype(np.int64)


# ----------------------------------------------------------------------------- locating data


def _candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Directories to search, in order (see the module docstring).

    An explicit ``data_dir`` is the only base: the user named the copy to train on, and a run
    on another copy would be recorded in config.json under the wrong path.
    """
    if data_dir:
        bases = [Path(data_dir)]
    else:
        bases = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    dirs = [d for base in bases for d in (base, base / name)]
    if name == "cifar10":
        dirs = [d / sub for d in dirs for sub in ("", *CIFAR_SUBDIRS)]
    if name == "fashion-mnist" and not data_dir:
        dirs.append(Path(FASHION_MNIST_SYSTEM_DIR))
    return list(dict.fromkeys(dirs))  # drop duplicates, keep order


def _find(directory: Path, filename: str) -> Path | None:
    """``directory/filename`` or ``directory/filename.gz``, whichever exists."""
    for candidate in (directory / filename, directory / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_all(directory: Path, filenames: tuple[str, ...], gz: bool) -> bool:
    if gz:
        return all(_find(directory, f) for f in filenames)
    return all((directory / f).is_file() for f in filenames)


def resolve_data_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory holding the files of dataset ``name``.

    Raises :class:`DataError` (one line) naming the places searched and how to fix it.
    """
    _check_name(name)
    if name == "synthetic":
        raise DataError("the synthetic dataset is generated in memory and has no data directory")
    dirs = _candidate_dirs(name, data_dir)
    for d in dirs:
        if name == "cifar10":
            if _has_all(d, CIFAR_PY_FILES, gz=False) or _has_all(d, CIFAR_BIN_FILES, gz=False):
                return d
        elif _has_all(d, IDX_FILES, gz=True):
            return d
    if data_dir:
        raise DataError(_not_in_data_dir(name, Path(data_dir)))
    raise DataError(_not_found_anywhere(name))


def _not_in_data_dir(name: str, data_dir: Path) -> str:
    """The one-line error for an explicit --data-dir that does not hold dataset ``name``."""
    if name == "cifar10":
        files = "cifar-10-batches-py/ or cifar-10-batches-bin/"
    else:
        files = ", ".join(f"{f}.gz" for f in IDX_FILES)
    if not data_dir.is_dir():
        problem = "it does not exist" if not data_dir.exists() else "it is not a directory"
        needs = f"give a directory holding {files}"
    elif name == "cifar10":
        problem, needs = f"nor in its subdirectory {name}/", f"put {files} from {CIFAR_URL} there"
    else:
        # name the files missing from the candidate that holds the most of them
        best = max((data_dir, data_dir / name), key=lambda d: sum(_find(d, f) is not None for f in IDX_FILES))
        missing = [f"{f}.gz" for f in IDX_FILES if _find(best, f) is None]
        problem, needs = f"nor in its subdirectory {name}/", f"{best} lacks {', '.join(missing)}"
    fallbacks = f"${ENV_VAR}"
    if name == "fashion-mnist":
        fallbacks += f" or {FASHION_MNIST_SYSTEM_DIR} ('apt-get install dataset-fashion-mnist')"
    where = f"{_PRETTY[name]} not found in --data-dir {data_dir} ({problem})"
    return f"{where}: {needs}; or leave out --data-dir to use {fallbacks}"


def _not_found_anywhere(name: str) -> str:
    """The one-line error when neither $SOFTSYNC_DATA nor the system directory holds dataset ``name``."""
    where = f" in ${ENV_VAR}={os.environ[ENV_VAR]} (and subdirectory {name}/)" if os.environ.get(ENV_VAR) else ""
    if name == "fashion-mnist":
        where = f"{where}{' or' if where else ' in'} {FASHION_MNIST_SYSTEM_DIR}"
    if not os.environ.get(ENV_VAR):
        where += f" (no --data-dir given and ${ENV_VAR} unset)"
    return f"{_PRETTY[name]} not found{where}: {_how_to_get(name)}"


def _how_to_get(name: str) -> str:
    if name == "cifar10":
        return (
            "pass --data-dir DIR (or set $SOFTSYNC_DATA) holding cifar-10-batches-py/ "
            f"or cifar-10-batches-bin/ from {CIFAR_URL}"
        )
    fix = (
        f"pass --data-dir DIR (or set $SOFTSYNC_DATA) holding {IDX_FILES[0]}.gz, "
        f"{IDX_FILES[1]}.gz, {IDX_FILES[2]}.gz and {IDX_FILES[3]}.gz"
    )
    if name == "fashion-mnist":
        fix = f"install it with 'apt-get install dataset-fashion-mnist' or {fix}"
    return fix


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------- loaders


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    synthetic_size: int = 2048,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`), preprocessed as in the paper.

    ``seed`` and ``synthetic_size`` only affect the synthetic set. Raises ``ConfigError``
    for an unknown name and :class:`DataError` for missing or corrupt files, and for a set
    without test samples (its test error would read 0, a perfect score nothing measured).
    """
    _check_name(name)
    if name == "imagefolder":
        if not data_dir:
            raise ConfigError("--dataset imagefolder needs --data-dir DIR holding train/<class>/ and val/<class>/")
        from .imagefolder import load_imagefolder  # Pillow is an optional dependency: only this dataset needs it

        train, test, classes = load_imagefolder(Path(data_dir), seed)
        return Dataset(name, train, test, len(classes))
    if name == "synthetic":
        if synthetic_size // 4 < 1:
            raise DataError(
                f"--synthetic-size {synthetic_size} leaves no test samples (the test set is a quarter of it, "
                "rounded down): use at least 4"
            )
        return _synthetic(seed, synthetic_size)
    directory = resolve_data_dir(name, data_dir)
    if name == "cifar10":
        train_x, train_y, test_x, test_y = _load_cifar(directory)
    else:
        train_x, train_y, test_x, test_y = _load_idx_split(directory)
    if len(test_y) == 0:
        test_file = "test_batch" if name == "cifar10" else IDX_FILES[2]
        raise DataError(f"{directory / test_file}: no test samples, so no test error could be measured; re-download it")
    return _preprocess(name, train_x, train_y, test_x, test_y, NUM_CLASSES)


def _load_idx_split(directory: Path) -> tuple[torch.Tensor, ...]:
    """Read the four (Fashion-)MNIST files from ``directory`` as uint8 (N,1,H,W) and labels."""
    paths = [_find(directory, f) for f in IDX_FILES]
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)  # type: ignore[arg-type]
    for x, y, px, py in ((train_x, train_y, paths[0], paths[1]), (test_x, test_y, paths[2], paths[3])):
        if x.ndim != 3:
            raise DataError(f"{px}: expected 3-D IDX images (N, H, W), got shape {tuple(x.shape)}")
        if y.ndim != 1:
            raise DataError(f"{py}: expected 1-D IDX labels (N,), got shape {tuple(y.shape)}")
        if len(x) != len(y):
            raise DataError(f"{px} has {len(x)} images but {py} has {len(y)} labels; re-download them")
        _check_labels(y, py)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{paths[0]} holds {tuple(train_x.shape[1:])} images but {paths[2]} holds "
            f"{tuple(test_x.shape[1:])}; both must come from the same dataset"
        )
    return train_x.unsqueeze(1), train_y.long(), test_x.unsqueeze(1), test_y.long()


def _load_cifar(directory: Path) -> tuple[torch.Tensor, ...]:
    """Read CIFAR-10 (python release preferred, else binary) as uint8 (N,3,32,32) and labels."""
    if _has_all(directory, CIFAR_PY_FILES, gz=False):
        files, loader = CIFAR_PY_FILES, _load_cifar_python
    else:
        files, loader = CIFAR_BIN_FILES, _load_cifar_binary
    batches = []
    for f in files:
        x, y = loader(directory / f)
        _check_labels(torch.from_numpy(y), directory / f)
        batches.append((x, y))
    train, (test_x, test_y) = batches[:-1], batches[-1]

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.require(x, requirements=["C", "W"])).reshape(-1, *CIFAR_SHAPE)

    train_x = images(np.concatenate([x for x, _ in train]))
    train_y = torch.from_numpy(np.concatenate([y for _, y in train]))
    return train_x, train_y, images(test_x), torch.from_numpy(test_y)


def _check_labels(y: torch.Tensor, path: Path | None) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise DataError(
            f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found {int(y.min())}..{int(y.max())}; "
            "the file is corrupt, re-download it"
        )


def _preprocess(
    name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
) -> Dataset:
    """Scale uint8 pixels to [0, 1] and subtract the training set's per-pixel mean image."""
    train = train_x.to(torch.float32).div_(255)
    test = test_x.to(torch.float32).div_(255)
    mean = train.mean(dim=0, keepdim=True)
    return Dataset(name, Samples(train.sub_(mean), train_y), Samples(test.sub_(mean), test_y), num_classes)


# ----------------------------------------------------------------------------- synthetic

SYNTHETIC_SHAPE = (1, 8, 8)
SYNTHETIC_CLASSES = 4
SYNTHETIC_NOISE = 0.1  # std of the logit noise, relative to the teacher's logit std


def _synthetic(seed: int, size: int) -> Dataset:
    """A small learnable set: uniform [0,1] 8x8 "images" labelled by a random linear teacher.

    Labels are ``argmax((x - 0.5) @ W + noise)`` with a fixed random ``W``; the small logit
    noise makes a few labels wrong, so logistic regression reaches high but not perfect
    accuracy. The same ``seed`` gives identical tensors. Test size is ``size // 4``.
    """
    if size < 1:
        raise ConfigError(f"synthetic_size must be >= 1, got {size}")
    g = torch.Generator().manual_seed(seed)
    dim = int(np.prod(SYNTHETIC_SHAPE))
    teacher = torch.randn(dim, SYNTHETIC_CLASSES, generator=g)
    n = size + size // 4
    x = torch.rand(n, dim, generator=g)
    logits = (x - 0.5) @ teacher
    logits += SYNTHETIC_NOISE * logits.std() * torch.randn(n, SYNTHETIC_CLASSES, generator=g)
    y = logits.argmax(dim=1)
    x = x.reshape(n, *SYNTHETIC_SHAPE)
    train = x[:size]
    test = x[size:]
    mean = train.mean(dim=0, keepdim=True)
    return Dataset("synthetic", Samples(train - mean, y[:size]), Samples(test - mean, y[size:]), SYNTHETIC_CLASSES)
