"""One learner step: weights + mini-batch -> gradient.

The model's parameters and gradients are views into two flat buffers, so that weights
arrive and gradients leave as one contiguous tensor each, without per-parameter copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


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
        loss_fn=F.cross_entropy,
        weights: torch.Tensor | None = None,
        gradients: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.weights, self.gradients = flatten_parameters(model, weights, gradients)

    def gradient(
        self, weights: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """∇ loss(weights; batch), the mean over the batch, and the loss.

        The returned tensor is the learner's own gradient buffer: it is overwritten by the
        next call, so copy it to keep it.
        """
        if weights.data_ptr() != self.weights.data_ptr():
            self.weights.copy_(weights)
        # zero in place: set_to_none would unbind the gradient views
        self.gradients.zero_()
        if not self.model.training:  # evaluation switched it; train() walks every module, so only when needed
            self.model.train()
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        return self.gradients, loss.item()


@torch.no_grad()
def evaluate(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 1000, loss_fn=F.cross_entropy
) -> tuple[float, float]:
    """Mean loss and error rate of ``model`` on a dataset split."""
    model.eval()
    total_loss, wrong = 0.0, 0
    for start in range(0, len(targets), batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        logits = model(x)
        total_loss += loss_fn(logits, y, reduction="sum").item()
        wrong += (logits.argmax(1) != y).sum().item()
    count = max(1, len(targets))
    return total_loss / count, wrong / count
