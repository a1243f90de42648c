"""ImageNet-style image folders, the paper's ImageNet path: ``DIR/train/<class>/*.jpeg`` and ``DIR/val/<class>/*.jpeg``.

Preprocessing follows Caffe's ImageNet recipe, which the paper used: each image is decoded to RGB,
resized so its shorter side is :data:`RESIZE` (bilinear) and scaled to [0, 1]; a training item is a
random :data:`CROP`×:data:`CROP` crop, flipped left-right half the time, and a validation item is
the center crop. A per-channel mean, measured once at load time on the training split, is
subtracted from both splits.

Images are read lazily, one per ``__getitem__``, because ImageNet does not fit in memory. The
augmentation of item ``i`` depends only on (seed, epoch, i), so a run resumed from a checkpoint,
or an item read in another process or in another order, sees bit-identical tensors.

ImageNet's own validation release is one flat folder: sort it into ``val/<class>/`` first (the
usual ``valprep.sh``), with the same class folder names as ``train/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import mix
from .errors import ConfigError, DataError

__all__ = ["CROP", "RESIZE", "ImageFolderSplit", "load_imagefolder"]

RESIZE = 256  # shorter side after resizing
CROP = 227  # Caffe's AlexNet crop
EXTENSIONS = (".jpeg", ".jpg", ".png")
MEAN_IMAGES = 256  # training images the channel mean is measured on: enough for three numbers


def _pil():
    """Pillow's Image module, imported here so that softsync runs without Pillow until images are used."""
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("--dataset imagefolder needs Pillow: pip install 'softsync[images]'") from None
    return Image


def _decode(path: Path) -> np.ndarray:
    """The image at ``path`` as float32 (H, W, 3) in [0, 1], its shorter side resized to RESIZE."""
    Image = _pil()
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")  # decodes now, so a truncated file fails here
            width, height = image.size
            scale = RESIZE / min(width, height)
            # max(RESIZE, ...) keeps the shorter side exact when rounding would take it below RESIZE
            size = (max(RESIZE, round(width * scale)), max(RESIZE, round(height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.float32) / 255.0
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError... on corrupt files
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read the image ({problem}); replace or remove the file") from e


def _crop(pixels: np.ndarray, top: int, left: int) -> np.ndarray:
    return pixels[top : top + CROP, left : left + CROP]


def _center(pixels: np.ndarray) -> np.ndarray:
    return _crop(pixels, (pixels.shape[0] - CROP) // 2, (pixels.shape[1] - CROP) // 2)


class ImageFolderSplit(Dataset[tuple[torch.Tensor, int]]):
    """One split of an image folder: item ``i`` is (float32 image (3, CROP, CROP), int class index).

    ``augment`` (the training split) takes a random crop and flip drawn from (seed, epoch, i);
    otherwise the item is the center crop. ``mean`` (3,) is subtracted from every image.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], mean: torch.Tensor, augment: bool, seed: int
    ) -> None:
        self.samples = samples  # (path, class index), in a deterministic order
        self.classes = classes  # class index -> folder name (torchvision's convention)
        self.mean = mean
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops and flips of ``epoch`` from now on (DistributedSampler's convention)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        pixels = _decode(path)
        if self.augment:
            # a generator of its own, so the global RNGs are untouched and the draw depends on nothing else
            generator = torch.Generator().manual_seed(mix(self.seed, self.epoch, i))
            top = int(torch.randint(pixels.shape[0] - CROP + 1, (1,), generator=generator))
            left = int(torch.randint(pixels.shape[1] - CROP + 1, (1,), generator=generator))
            pixels = _crop(pixels, top, left)
            if int(torch.randint(2, (1,), generator=generator)):
                pixels = pixels[:, ::-1]
        else:
            pixels = _center(pixels)
        # numpy for the pixel work: single-threaded, where torch's thread pool costs more than it saves on one image
        image = np.ascontiguousarray((pixels - self.mean.numpy()).transpose(2, 0, 1))
        return torch.from_numpy(image), label


def _class_folders(split: Path) -> dict[str, list[Path]]:
    """Class folder name -> its sorted image files; hidden entries (``.DS_Store``, ``.git``) are skipped."""
    if not split.is_dir():
        raise DataError(f"{split}: no such directory; an image folder needs train/<class>/ and val/<class>/")
    folders = sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{split}: no class folders; put each class's images in {split}/<class>/")
    classes = {}
    for folder in folders:
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise DataError(f"{folder}: no images (.jpeg, .jpg or .png) in this class folder")
        classes[folder.name] = files
    return classes


def _channel_mean(files: list[Path]) -> torch.Tensor:
    """Mean of the center crops of at most MEAN_IMAGES files spread evenly over ``files``, per channel."""
    count = min(MEAN_IMAGES, len(files))
    total = np.zeros(3, dtype=np.float64)  # float64: summing 256 crops in float32 would round
    for k in range(count):
        total += _center(_decode(files[k * len(files) // count])).mean(axis=(0, 1), dtype=np.float64)
    return torch.from_numpy((total / count).astype(np.float32))


def load_imagefolder(directory: str | Path, seed: int) -> tuple[ImageFolderSplit, ImageFolderSplit, list[str]]:
    """(train, val, classes) from DIR/train/<class>/*.jpeg and DIR/val/<class>/*.jpeg

    Classes are the train/ folder names, sorted; their index is the label. A val/ class that is
    not in train/ is an error; a train/ class with no val/ folder is allowed. Files ending in
    .jpeg, .jpg or .png (any case) are used. Reads MEAN_IMAGES training images for the channel
    mean; every other image is read when its item is. Bad input raises a one-line DataError
    naming the path.
    """
    _pil()  # fail on a missing Pillow before looking at any file
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (an image folder holds train/<class>/ and val/<class>/)")
    train_folders = _class_folders(directory / "train")
    val_folders = _class_folders(directory / "val")
    classes = list(train_folders)  # sorted by folder name
    index = {name: i for i, name in enumerate(classes)}
    stray = next((name for name in val_folders if name not in index), None)
    if stray is not None:
        raise DataError(f"{directory / 'val' / stray}: class {stray!r} is not in {directory / 'train'}")
    train_samples = [(path, index[name]) for name, files in train_folders.items() for path in files]
    val_samples = [(path, index[name]) for name, files in val_folders.items() for path in files]
    mean = _channel_mean([path for path, _ in train_samples])
    train = ImageFolderSplit(train_samples, classes, mean, augment=True, seed=seed)
    val = ImageFolderSplit(val_samples, classes, mean, augment=False, seed=seed)
    return train, val, classes
