"""One learner step: weights + mini-batch -> gradient.

The model's parameters and gradients are views into two flat buffers, so that weights
arrive and gradients leave as one contiguous tensor each, without per-parameter copies.

On a GPU (``--device cuda``) the model lives in two flat device buffers, and the learner keeps
two host buffers (pinned) for the transport: a step copies the weights in and the gradient out,
one contiguous copy each. On the CPU the model lives in the host buffers themselves: no copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from .datasets import batcher
from .errors import ConfigError

Loss = Callable[[Any, Any], torch.Tensor]  # (outputs, targets) -> the mean loss over the mini-batch
LOSSES: dict[str, Loss] = {"cross-entropy": F.cross_entropy, "mse": F.mse_loss}
DEVICES = ("cpu", "cuda")


def require_device(name: str, where: str = "this machine") -> None:
    """ConfigError (one line) unless this process can compute on the device ``name`` (--device); ``where`` names
    the process's host in the message."""
    if name not in DEVICES:
        raise ConfigError(f"--device {name!r} is unknown: use cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device cuda: {where} has no CUDA device torch can use (torch.cuda.is_available() is False); "
            "use --device cpu"
        )


def learner_device(name: str, index: int, where: str = "this machine") -> torch.device:
    """Where learner ``index`` of this host computes: the CPU, or GPU ``index`` mod the GPUs torch sees."""
    require_device(name, where)
    if name == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", index % torch.cuda.device_count())


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it moved to ``device``: a tensor, or lists, tuples and dicts of them, nested
    (a collated mini-batch); anything else is left as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        moved = {key: to_device(item, device) for key, item in value.items()}
        try:
            return type(value)(moved)  # type: ignore[call-arg]
        except TypeError:  # a mapping that cannot be built from a dict (defaultdict, ...): a dict
            return moved
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(to_device(item, device) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


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
    """Computes mean mini-batch gradients of ``model`` on the weights it is given.

    ``weights`` and ``gradients`` are host buffers (the transport's, or new ones): the weights a
    step is given and the gradient it returns are host tensors whatever the ``device``. On the
    CPU the model lives in them. On a GPU the model is moved there and lives in ``device_weights``
    and ``device_gradients``; the host buffers are then pinned (new ones are allocated pinned; the
    caller pins the ones it gives).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Loss = F.cross_entropy,
        weights: torch.Tensor | None = None,
        gradients: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.device = torch.device(device)
        if self.device.type == "cpu":
            self.weights, self.gradients = flatten_parameters(model, weights, gradients)
            self.device_weights, self.device_gradients = self.weights, self.gradients
            return
        model.to(self.device)
        self.device_weights, self.device_gradients = flatten_parameters(model)
        size = self.device_weights.numel()
        self.weights = torch.empty(size, pin_memory=True) if weights is None else weights
        self.gradients = torch.zeros(size, pin_memory=True) if gradients is None else gradients
        if self.weights.numel() != size or self.gradients.numel() != size:
            raise ConfigError(
                f"buffers of {self.weights.numel()} and {self.gradients.numel()} values for a model of {size} "
                "parameters"
            )
        self.weights.copy_(self.device_weights)  # as on the CPU: the buffer holds the model's weights

    def gradient(
        self, weights: torch.Tensor, inputs: Any, targets: Any, seed: int | None = None
    ) -> tuple[torch.Tensor, float]:
        """∇ loss(weights; batch), the mean over the batch, and the loss; torch's RNG seeded with ``seed`` if given.

        ``weights`` is a host tensor. The returned tensor is the learner's own (host) gradient
        buffer: it is overwritten by the next call, so copy it to keep it.
        """
        if seed is not None:
            # the CPU's generator alone: torch.manual_seed also seeds every accelerator backend, ~140 µs a step
            torch.default_generator.manual_seed(seed)
            if self.device.type == "cuda":
                with torch.cuda.device(self.device):  # this learner's GPU, not the current one
                    torch.cuda.manual_seed(seed)
        on_gpu = self.device.type != "cpu"
        if on_gpu:
            # from pinned memory (the transport's buffer) the copy runs asynchronously; the stream orders it
            # before the forward pass, and the synchronize below before the buffer can be overwritten
            self.device_weights.copy_(weights, non_blocking=True)
            inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
        elif weights.data_ptr() != self.weights.data_ptr():
            self.weights.copy_(weights)
        # zero in place: set_to_none would unbind the gradient views
        self.device_gradients.zero_()
        if not self.model.training:  # evaluation switched it; train() walks every module, so only when needed
            self.model.train()
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        if on_gpu:
            self.gradients.copy_(self.device_gradients, non_blocking=True)
            torch.cuda.synchronize(self.device)  # the gradient is in the host buffer before anyone sends it
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
