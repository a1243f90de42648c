"""Model registry (the built-in models, by name) and the seeded call of a model factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, first_line

# builder(input_shape (C, H, W), num_classes) -> nn.Module
MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {}


def register_model(name: str):
    """Decorator that adds a model builder to the registry under ``name``."""

    def add(builder):
        MODELS[name] = builder
        return builder

    return add


def _classifier_input(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape)).numel()


@register_model("paper-cifar10")
def paper_cifar10(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Caffe's cifar10_full, the network of the paper: 89,578 parameters on 32×32×3.

    Pooling is 3/2 with Caffe's ceil rounding (32→16→8→4); LRN is PyTorch's across-channel
    form with Caffe's local_size 3, α 5e-5, β 0.75.
    """
    channels = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.ReLU(),
        nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75),
        nn.Conv2d(32, 32, 5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(),
    )
    return nn.Sequential(features, nn.Linear(_classifier_input(features, input_shape), num_classes))


ALEXNET_MIN_SIDE = 39  # the smallest side that leaves pool5 an output (39 → 8 → 4 → 2 → 1)


@register_model("alexnet")
def alexnet(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Caffe's bvlc_alexnet as one tower (no groups), the paper's ImageNet network.

    62,378,344 parameters on 227×227×3 with 1000 classes (Caffe's two-tower original, whose groups
    halve conv2, conv4 and conv5, has 60,965,224).

    Pooling is 3/2 with Caffe's ceil rounding (227→55→27→13→6); LRN is local_size 5, α 1e-4, β 0.75.
    """
    channels, height, width = input_shape
    if min(height, width) < ALEXNET_MIN_SIDE:
        raise ConfigError(
            f"--model alexnet needs inputs of at least {ALEXNET_MIN_SIDE}×{ALEXNET_MIN_SIDE}, not {height}×{width} "
            "(it is made for 227×227: --dataset imagefolder)"
        )
    features = nn.Sequential(
        nn.Conv2d(channels, 96, 11, stride=4),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(96, 256, 5, padding=2),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(),
    )
    return nn.Sequential(
        features,
        nn.Linear(_classifier_input(features, input_shape), 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )


@register_model("cnn-small")
def cnn_small(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A fast two-layer CNN (3×3×16, 3×3×32, each ReLU and max-pool 2)."""
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(features, nn.Linear(_classifier_input(features, input_shape), num_classes))


@register_model("cnn-bench")
def cnn_bench(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The scaling benchmark's CNN: 5×5×32 → max-pool 2 → 5×5×64 → max-pool 2 → linear."""
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
    )
    return nn.Sequential(features, nn.Linear(_classifier_input(features, input_shape), num_classes))


@register_model("mlp")
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: int = 128) -> nn.Module:
    """One hidden layer of 128 ReLU units."""
    inputs = input_shape[0] * input_shape[1] * input_shape[2]
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


@register_model("logreg")
def logreg(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Multinomial logistic regression."""
    inputs = input_shape[0] * input_shape[1] * input_shape[2]
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, num_classes))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int | None, seed: int = 0) -> nn.Module:
    """Build a registered model with weights initialised from ``seed`` (global RNG untouched)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: use one of {', '.join(sorted(MODELS))}")
    if len(input_shape) != 3 or num_classes is None:
        raise ConfigError(
            f"--model {name} takes images (C, H, W) in classes: this dataset's inputs have shape "
            f"{tuple(input_shape)} and it names {num_classes or 'no'} classes (give its training set a `classes` "
            "list), or use a model of your own (--model module:callable)"
        )
    channels, height, width = input_shape  # a plain tuple, whatever sequence was given
    return seeded(lambda: MODELS[name]((channels, height, width), num_classes), seed, name)


def seeded(factory: Callable[[], Any], seed: int, spec: str) -> nn.Module:
    """``factory()`` with torch's RNG seeded from ``seed`` (global RNG untouched), so that every process builds the
    same initial weights; ConfigError (one line naming ``spec``) unless it returns an nn.Module."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory()
        except Exception as error:
            raise ConfigError(f"--model {spec!r}: calling it raised {first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
