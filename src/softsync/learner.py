"""One learner step: weights + mini-batch -> gradient.

The model's parameters and gradients are views into two flat buffers, so that weights
arrive and gradients leave as one contiguous tensor each, without per-parameter copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from .datasets import batcher
from .errors import ConfigError

Loss = Callable[[Any, Any], torch.Tensor]  # (outputs, targets) -> the mean loss over the mini-batch
LOSSES: dict[str, Loss] = {"cross-entropy": F.cross_entropy, "mse": F.mse_loss}


def flatten_parameters(
    model: nn.Module, weights: torch.Tensor | None = None, gradients: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rebind every parameter of ``model`` (and its gradient) as a view of one flat buffer.

    Returns ``(weights, gradients)``: writing into ``weights`` changes the model; a backward
    pass accumulates into ``gradients``. Pass ``weights``/``gradients`` (e.g. the payload of a
    message buffer) to have the model live there; the model's current values are copied in.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    size = sum(p.numel() for p in params)
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        if weights is None:
            weights = flat
        else:
            weights.copy_(flat)
    if gradients is None:
        gradients = torch.zeros_like(weights)
    if weights.numel() != size or gradients.numel() != size:
        raise ConfigError(
            f"buffers of {weights.numel()} and {gradients.numel()} values for a model of {size} parameters"
        )
    offset = 0
    for p in params:
        count = p.numel()
        p.data = weights[offset : offset + count].view_as(p)
        p.grad = gradients[offset : offset + count].view_as(p)
        offset += count
    return weights, gradients


class Learner:
    """Computes mean mini-batch gradients of ``model`` on the weights it is given."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Loss = F.cross_entropy,
        weights: torch.Tensor | None = None,
        gradients: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.weights, self.gradients = flatten_parameters(model, weights, gradients)

    def gradient(
        self, weights: torch.Tensor, inputs: Any, targets: Any, seed: int | None = None
    ) -> tuple[torch.Tensor, float]:
        """∇ loss(weights; batch), the mean over the batch, and the loss; torch's RNG seeded with ``seed`` if given.

        The returned tensor is the learner's own gradient buffer: it is overwritten by the
        next call, so copy it to keep it.
        """
        if seed is not None:
            torch.manual_seed(seed)
        if weights.data_ptr() != self.weights.data_ptr():
            self.weights.copy_(weights)
        # zero in place: set_to_none would unbind the gradient views
        self.gradients.zero_()
        if not self.model.training:  # evaluation switched it; train() walks every module, so only when needed
            self.model.train()
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        return self.gradients, loss.item()


def is_classification(outputs: Any, targets: Any) -> bool:
    """Whether a mini-batch's outputs are (N, K) logits for targets that are class indices (N,)."""
    return (
        isinstance(outputs, torch.Tensor)
        and isinstance(targets, torch.Tensor)
        and outputs.dim() == 2
        and targets.dim() == 1
        and len(outputs) == len(targets)
        and not targets.is_floating_point()
        and not targets.is_complex()
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, test: TorchDataset, loss_fn: Loss = F.cross_entropy, batch_size: int = 1000, limit: int = 0
) -> tuple[float, float | None]:
    """Mean loss of ``model`` on a split (its first ``limit`` samples if ``limit``), and its error rate when the model
    classifies (see is_classification), else None."""
    model.eval()
    collate = batcher(test)
    count = len(test) if not limit else min(limit, len(test))  # type: ignore[arg-type]
    total_loss, wrong, classifying = 0.0, 0, True
    for start in range(0, count, batch_size):
        indices = torch.arange(start, min(start + batch_size, count))
        inputs, targets = collate(indices, 0)
        outputs = model(inputs)
        total_loss += float(loss_fn(outputs, targets)) * len(indices)  # a loss is the mean over its mini-batch
        classifying = classifying and is_classification(outputs, targets)
        if classifying:
            wrong += int((outputs.argmax(1) != targets).sum())
    count = max(1, count)
    return total_loss / count, wrong / count if classifying else None
