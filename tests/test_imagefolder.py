"""Tests for softsync.imagefolder on a tiny image folder written with Pillow: 3 classes, 4 + 2 images each."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from softsync import imagefolder
from softsync.data import mix
from softsync.errors import ConfigError, DataError
from softsync.imagefolder import CROP, load_imagefolder

Image = pytest.importorskip("PIL.Image")

CLASSES = ("zebra", "ant", "moth")  # written in this order; the index order is sorted: ant, moth, zebra
SIZES = ((40, 30), (30, 50))  # (width, height): landscape and portrait, both far below RESIZE
RESIZED = {(40, 30): (341, 256), (30, 50): (256, 427)}  # shorter side 256, the other round(side * 256 / shorter)
EXTENSIONS = (".jpeg", ".JPG", ".png", ".jpg")  # every accepted kind, in both cases


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tests compare a few 3×227×227 tensors: on a busy 2-core machine torch's thread pool makes that 50× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_image(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    width, height = size
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """DIR/train/<class>/ with 4 images and DIR/val/<class>/ with 2, mixed sizes and extensions."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, count in (("train", 4), ("val", 2)):
        for name in CLASSES:
            directory = root / split / name
            directory.mkdir(parents=True)
            for k in range(count):
                write_image(directory / f"img{k}{EXTENSIONS[k % 4]}", SIZES[k % 2], rng)
            (directory / "notes.txt").write_text("not an image")  # ignored
    return root


def center_crop_by_hand(path: Path, mean: torch.Tensor) -> torch.Tensor:
    """What the val item of ``path`` must be: resized to the size worked out above, center-cropped, mean off."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image = image.resize(RESIZED[image.size], Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255
    top, left = (pixels.shape[0] - CROP) // 2, (pixels.shape[1] - CROP) // 2
    crop = torch.from_numpy(pixels[top : top + CROP, left : left + CROP].transpose(2, 0, 1).copy())
    return crop - mean.view(3, 1, 1)


def find_crop(item: torch.Tensor, full: torch.Tensor) -> tuple[int, int, bool] | None:
    """(top, left, flipped) of the window of ``full`` that ``item`` is, or None."""
    for flipped in (False, True):
        image = item.flip(2) if flipped else item
        # candidates: where the window's top-left pixel matches, then the whole window is compared
        corner = (full == image[:, :1, :1]).all(dim=0)
        corner[full.shape[1] - CROP + 1 :, :] = False
        corner[:, full.shape[2] - CROP + 1 :] = False
        for top, left in corner.nonzero().tolist():
            if torch.equal(full[:, top : top + CROP, left : left + CROP], image):
                return top, left, flipped
    return None


# ----------------------------------------------------------------------------- items


def test_items_are_float32_crops_with_int_labels_of_their_folder(folder):
    train, val, classes = load_imagefolder(folder, seed=0)
    assert (len(train), len(val)) == (12, 6)  # the .txt files are not images
    for split in (train, val):
        for i in range(len(split)):
            image, label = split[i]
            assert image.shape == (3, CROP, CROP) and image.dtype == torch.float32
            assert type(label) is int
            assert classes[label] == split.samples[i][0].parent.name


def test_classes_are_the_sorted_train_folder_names_on_both_splits(folder):
    train, val, classes = load_imagefolder(folder, seed=0)
    assert classes == ["ant", "moth", "zebra"]
    assert train.classes == val.classes == classes
    assert [label for _, label in train.samples] == [0] * 4 + [1] * 4 + [2] * 4


def test_a_val_folder_may_lack_a_train_class(folder):
    for path in (folder / "val" / "moth").iterdir():
        path.unlink()
    (folder / "val" / "moth").rmdir()
    _, val, classes = load_imagefolder(folder, seed=0)
    assert classes == ["ant", "moth", "zebra"]
    assert sorted({label for _, label in val.samples}) == [0, 2]


def test_val_items_are_the_center_crop_every_time(folder):
    _, val, _ = load_imagefolder(folder, seed=0)
    for i in range(len(val)):
        first = val[i][0]
        val.set_epoch(5)
        assert torch.equal(first, val[i][0])
        assert torch.allclose(first, center_crop_by_hand(val.samples[i][0], val.mean), atol=1e-6)


def test_the_training_mean_is_subtracted(folder):
    train, val, _ = load_imagefolder(folder, seed=0)
    assert torch.all(train.mean > 0.3) and torch.equal(train.mean, val.mean)  # noise images: about 0.5
    train.augment = False  # the center crops the mean was measured on (all 12: fewer than MEAN_IMAGES)
    crops = torch.stack([train[i][0] for i in range(len(train))])
    assert torch.allclose(crops.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_the_mean_is_measured_on_images_spread_over_the_sorted_list(folder, monkeypatch):
    monkeypatch.setattr(imagefolder, "MEAN_IMAGES", 4)
    train, _, _ = load_imagefolder(folder, seed=0)
    expected = torch.stack(
        [center_crop_by_hand(train.samples[i][0], torch.zeros(3)) for i in (0, 3, 6, 9)]  # 12 files, every 3rd
    ).mean(dim=(0, 2, 3))
    assert torch.allclose(train.mean, expected, atol=1e-6)


# ----------------------------------------------------------------------------- augmentation


def test_a_training_item_is_a_window_of_the_resized_image_maybe_flipped(folder):
    train, _, _ = load_imagefolder(folder, seed=0)
    seen = set()
    for epoch in range(4):
        train.set_epoch(epoch)
        for i in (0, 1):  # a landscape and a portrait image
            full = torch.from_numpy(imagefolder._decode(train.samples[i][0])).permute(2, 0, 1)
            assert full.shape[1:] == RESIZED[SIZES[i]][::-1]
            where = find_crop(train[i][0], full - train.mean.view(3, 1, 1))
            assert where is not None, (epoch, i)
            seen.add(where)
    assert len(seen) > 1 and {flipped for _, _, flipped in seen} == {False, True}


def test_training_crops_depend_only_on_seed_epoch_and_index(folder):
    a, _, _ = load_imagefolder(folder, seed=3)
    b, _, _ = load_imagefolder(folder, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    order = list(range(len(a)))
    first = {i: a[i][0] for i in order}
    b[5]  # another item read first changes nothing
    assert all(torch.equal(b[i][0], first[i]) for i in reversed(order))
    b.set_epoch(3)
    assert any(not torch.equal(b[i][0], first[i]) for i in order)
    c, _, _ = load_imagefolder(folder, seed=4)
    c.set_epoch(2)
    assert any(not torch.equal(c[i][0], first[i]) for i in order)


def test_reading_items_leaves_the_global_rngs_alone(folder):
    train, _, _ = load_imagefolder(folder, seed=0)
    torch.manual_seed(0)
    random.seed(0)
    before = (torch.rand(1), random.random())
    torch.manual_seed(0)
    random.seed(0)
    for i in range(3):
        train[i]
    assert (torch.rand(1), random.random()) == before


def test_the_seed_hash_is_stable():
    """The mix must not change between releases or processes: checkpoints resume on it."""
    assert mix(0, 0, 0) == mix(0, 0, 0)
    assert len({mix(s, e, i) for s in range(3) for e in range(3) for i in range(3)}) == 27
    assert mix(1, 2, 3) == 7510213797696614745
    assert 0 <= mix(-1, 2**70, 5) < 2**63


# ----------------------------------------------------------------------------- errors


def remove_tree(path: Path) -> None:
    for child in path.iterdir():
        remove_tree(child) if child.is_dir() else child.unlink()
    path.rmdir()


def no_class_folders(root: Path) -> Path:
    for name in CLASSES:
        remove_tree(root / "train" / name)
    return root / "train"


def empty_class(root: Path) -> Path:
    (root / "train" / "owl").mkdir()
    (root / "train" / "owl" / "readme.txt").write_text("no images here")
    return root / "train" / "owl"


def stray_val_class(root: Path) -> Path:
    (root / "val" / "yak").mkdir()
    write_image(root / "val" / "yak" / "a.jpeg", (30, 30), np.random.default_rng(1))
    return root / "val" / "yak"


def corrupt_train_image(root: Path) -> Path:
    path = root / "train" / "ant" / "img9.jpeg"
    path.write_bytes(b"this is not a jpeg" * 10)
    return path


@pytest.mark.parametrize(
    "damage",
    [
        lambda root: root / "missing",
        lambda root: (remove_tree(root / "train"), root / "train")[1],
        lambda root: (remove_tree(root / "val"), root / "val")[1],
        no_class_folders,
        empty_class,
        stray_val_class,
        corrupt_train_image,  # the mean reads every training image of so small a split: fails at load
    ],
    ids=["no-directory", "no-train", "no-val", "no-class-folders", "empty-class", "stray-val-class", "corrupt-train"],
)
def test_bad_folders_raise_one_line_naming_the_path(folder, damage):
    path = damage(folder)
    with pytest.raises(DataError) as error:
        load_imagefolder(path if path.name == "missing" else folder, seed=0)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and str(path) in message, message


@pytest.mark.parametrize("content", [b"\xff\xd8garbage bytes" * 20, "truncated"], ids=["garbage", "truncated"])
def test_a_corrupt_val_image_fails_when_read_naming_the_file(folder, content):
    path = folder / "val" / "ant" / "img0.jpeg"
    if content == "truncated":
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    _, val, _ = load_imagefolder(folder, seed=0)  # val images are only read as items
    index = next(i for i, (p, _) in enumerate(val.samples) if p == path)
    val[index + 1]  # the others are fine
    with pytest.raises(DataError) as error:
        val[index]
    message = str(error.value)
    assert len(message.splitlines()) == 1 and str(path) in message, message


def test_without_pillow_the_error_says_how_to_install_it(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'softsync\[images\]'"):
        load_imagefolder(folder, seed=0)


# ----------------------------------------------------------------------------- training on a folder

RUN = dict(dataset="imagefolder", lr=0.01, momentum=0.9, epochs=2, quiet=True, timeout=120)


def final_weights(run_dir: Path) -> torch.Tensor:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["server"]["weights"]


@pytest.mark.slow
def test_hardsync_on_random_crops_is_one_learner_of_mu_lambda(folder, tmp_path):
    """The crop of a sample depends on (seed, epoch, index) only, not on which learner draws it or with whom."""
    from softsync import train

    options = dict(RUN, data_dir=str(folder), model="cnn-small", protocol="hardsync")
    two = train(learners=2, batch_size=2, out=str(tmp_path / "two"), **options)
    one = train(learners=1, batch_size=4, out=str(tmp_path / "one"), **options)
    assert two["updates"] == one["updates"] == 2 * 3 and 0 <= two["test_error"] <= 1
    difference = (final_weights(tmp_path / "two") - final_weights(tmp_path / "one")).abs().max().item()
    assert difference < 1e-5, difference


@pytest.mark.slow
def test_alexnet_trains_on_the_folder_from_the_cli(folder, tmp_path, capsys):
    from softsync.cli import main

    code = main(
        ["train", "--dataset=imagefolder", f"--data-dir={folder}", "--model=alexnet", "--protocol=hardsync"]
        + ["--learners=1", "--batch-size=4", "--epochs=1", "--quiet", f"--out={tmp_path / 'run'}"]
    )
    assert code == 0 and "completed: test error" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["updates"] == 3 and summary["config"]["model"] == "alexnet"


@pytest.mark.dist
def test_dist_learners_read_the_folder_themselves_and_compute_what_the_sim_does(folder, tmp_path):
    from softsync import train

    options = dict(RUN, data_dir=str(folder), model="cnn-small", protocol="hardsync", learners=2, batch_size=2)
    train(engine="dist", out=str(tmp_path / "dist"), **options)
    train(engine="sim", out=str(tmp_path / "sim"), **options)
    difference = (final_weights(tmp_path / "dist") - final_weights(tmp_path / "sim")).abs().max().item()
    assert difference < 1e-5, difference


def test_imagefolder_without_data_dir_is_one_line(capsys):
    from helpers import fails_with_one_line

    line = fails_with_one_line(["train", "--dataset=imagefolder", "--quiet"], capsys)
    assert "--dataset imagefolder needs --data-dir" in line
