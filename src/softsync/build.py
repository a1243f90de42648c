"""Build a run's components from its config: its task (data, model, loss), parameter server, data server, recorder.

Both engines start from here, so a run means the same thing whichever engine drives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import specs
from .board import Board
from .checkpoint import Checkpointer, Stateful
from .config import TrainConfig
from .coordinator import Coordinator, EndEpoch
from .corrections import make_correction
from .data import DataServer
from .datasets import Dataset, batcher, from_factory, kind_of, load_dataset
from .errors import ConfigError, UserError, first_line
from .learner import LOSSES, Learner, Loss, evaluate
from .models import build_model, seeded
from .recorder import Recorder
from .rundir import TENSORBOARD
from .server import ParameterServer


def batches_per_epoch(config: TrainConfig, num_samples: int) -> int:
    """N//μ mini-batches; hardsync: N//(μλ) rounds of λ mini-batches."""
    per_epoch = num_samples // config.batch_size
    if config.parsed_protocol().blocking:
        per_epoch = (num_samples // (config.batch_size * config.learners)) * config.learners
    if per_epoch < 1:
        raise ConfigError(
            f"--batch-size {config.batch_size} × --learners {config.learners} exceeds the {num_samples} "
            f"training samples of {config.dataset}"
        )
    return per_epoch


@dataclass
class Task:
    """What a run trains: its data, its model (built seeded: every process builds the same weights) and its loss.

    Every process of a run builds its own Task from the config: the model, the dataset and the loss
    are named by built-in names or references (specs.py), which each process resolves itself.
    """

    data: Dataset
    model: nn.Module
    loss: Loss


# Python objects given to softsync.train in place of a config field: "model" a factory of an nn.Module, "dataset"
# a Dataset or a factory of (train, test), "loss" a loss function
Given = dict[str, Any]


def load_data(config: TrainConfig, given: Given | None = None) -> Dataset:
    """The run's dataset: a built-in one, a factory's (called with torch's RNG seeded from --seed), or a given one."""
    source = (given or {}).get("dataset")
    if isinstance(source, Dataset):
        return source
    if source is None and not specs.is_reference(config.dataset):
        _require_loadable(config.dataset, "--dataset", "data")
        return load_dataset(config.dataset, config.data_dir, seed=config.seed, synthetic_size=config.synthetic_size)
    factory = source if source is not None else specs.load(config.dataset, "--dataset")
    with torch.random.fork_rng(devices=[]):  # every process must build the same data
        torch.manual_seed(config.seed)
        try:
            splits = factory()
        except UserError:
            raise
        except Exception as error:
            raise ConfigError(f"--dataset {config.dataset!r}: calling it raised {first_line(error)}") from None
    return from_factory(splits, config.dataset)


def load_task(config: TrainConfig, given: Given | None = None) -> Task:
    """The run's Task from its config (and the objects ``given`` to softsync.train), checked on one mini-batch.

    Every problem is a ConfigError of one line naming the spec, raised before a process starts
    or a run directory is written: a spec that cannot be loaded, a factory that returns the wrong
    thing, data that does not batch, a model that cannot take it, a loss that is not a scalar.
    """
    given = given or {}
    data = load_data(config, given)
    model_source = given.get("model")
    if model_source is None and not specs.is_reference(config.model):
        _require_loadable(config.model, "--model", "model")
        model = build_model(config.model, data.input_shape, data.num_classes, config.seed)
    else:
        factory = model_source if model_source is not None else specs.load(config.model, "--model")
        model = seeded(factory, config.seed, config.model)
    loss = given.get("loss")
    if loss is None:
        _require_loadable(config.loss, "--loss", "loss")
        loss = LOSSES[config.loss] if config.loss in LOSSES else specs.load(config.loss, "--loss")
    task = Task(data, model, loss)
    _try_one_batch(task, config)
    return task


def _try_one_batch(task: Task, config: TrainConfig) -> None:
    """Run the model and the loss on the first mini-batch (in eval mode, without gradients: nothing changes)."""
    model = task.model
    size = min(config.batch_size, len(task.data.train))  # type: ignore[arg-type]
    try:
        inputs, targets = batcher(task.data.train)(torch.arange(size), 0)
    except Exception as error:
        raise ConfigError(
            f"--dataset {config.dataset!r}: its first {size} training items do not batch with default_collate: "
            f"{first_line(error)}"
        ) from None
    model.eval()
    try:
        with torch.no_grad():
            try:
                outputs = model(inputs)
            except Exception as error:
                raise ConfigError(
                    f"--model {config.model!r} cannot take a mini-batch of --dataset {config.dataset!r}: "
                    f"{first_line(error)}"
                ) from None
            try:
                loss = task.loss(outputs, targets)
            except Exception as error:
                raise ConfigError(
                    f"--loss {config.loss!r} failed on the outputs of --model {config.model!r}: {first_line(error)}"
                ) from None
    finally:
        model.train()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else kind_of(loss)
        raise ConfigError(f"--loss {config.loss!r} returned {what}: expected a scalar, the mean over the mini-batch")


def _require_loadable(spec: str, flag: str, what: str) -> None:
    """An object marker (``<...>``) names an object softsync.train was given: without it the run cannot be rebuilt."""
    if specs.is_object(spec):
        raise ConfigError(
            f"{flag} {spec}: this run's {what} was a Python object given to softsync.train(); pass it again "
            "(a run that also resumes from the command line needs a factory: module:callable or file.py:callable)"
        )


@dataclass
class Components:
    """The server side of a run, before an engine drives it."""

    config: TrainConfig
    out: Path
    task: Task
    learner: Learner  # its weights are the server's weights: evaluation (and the sim's learners) use them
    server: ParameterServer
    data: DataServer
    recorder: Recorder

    def coordinator(self, end_epoch: EndEpoch) -> Coordinator:
        """The run's coordinator; ``end_epoch`` is the engine's (it evaluates and records)."""
        config = self.config
        return Coordinator(self.server, self.data, config.learners, end_epoch, config.checkpoint_every, config.ssp)

    def checkpointer(self, coordinator: Coordinator, engine: Stateful) -> Checkpointer:
        """The run's checkpoint: these components, the engine's coordinator and the engine's own state."""
        parts: dict[str, Stateful] = {
            "server": self.server,
            "data": self.data,
            "coordinator": coordinator,
            "engine": engine,
            "recorder": self.recorder,
        }
        return Checkpointer(self.out, self.config, parts)


def build_components(config: TrainConfig, out: Path, task: Task) -> Components:
    """Assemble the server side of a run writing into ``out`` (a checkpoint is restored by the Checkpointer)."""
    per_epoch = batches_per_epoch(config, len(task.data.train))  # type: ignore[arg-type]
    model = task.model
    learner = Learner(model, task.loss)
    server = ParameterServer(
        learner.weights,
        config.parsed_protocol(),
        config.learners,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        lr_policy=config.lr_policy,
        lr_steps=config.lr_steps,
        lr_gamma=config.lr_gamma,
        correction=make_correction(config.correction, config.dc_lambda),
        momentum_correction=config.momentum_correction,
    )
    data = DataServer(len(task.data.train), config.batch_size, config.seed, config.epochs, per_epoch)  # type: ignore[arg-type]
    test, limit = task.data.test, config.eval_samples

    def evaluate_model() -> tuple[float, float | None]:
        return evaluate(model, test, task.loss, limit=limit)

    board = Board(out / TENSORBOARD) if config.tensorboard else None
    recorder = Recorder(out, config, evaluate_model, per_epoch * config.epochs, quiet=config.quiet, board=board)
    return Components(config, out, task, learner, server, data, recorder)
