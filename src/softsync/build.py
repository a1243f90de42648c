"""Build a run's components from its config: dataset, model, parameter server, data server, recorder.

Both engines start from here, so a run means the same thing whichever engine drives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .checkpoint import Checkpointer, Stateful
from .config import TrainConfig
from .coordinator import Coordinator, EndEpoch
from .data import DataServer
from .datasets import Dataset, load_dataset
from .errors import ConfigError
from .learner import Learner, evaluate
from .models import build_model
from .recorder import Recorder
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


def load_data(config: TrainConfig) -> Dataset:
    return load_dataset(config.dataset, config.data_dir, seed=config.seed, synthetic_size=config.synthetic_size)


def make_model(config: TrainConfig, dataset: Dataset) -> nn.Module:
    return build_model(config.model, dataset.input_shape, dataset.num_classes, seed=config.seed)


@dataclass
class Components:
    """The server side of a run, before an engine drives it."""

    config: TrainConfig
    out: Path
    dataset: Dataset
    learner: Learner  # its weights are the server's weights: evaluation (and the sim's learners) use them
    server: ParameterServer
    data: DataServer
    recorder: Recorder

    def coordinator(self, end_epoch: EndEpoch) -> Coordinator:
        """The run's coordinator; ``end_epoch`` is the engine's (it evaluates and records)."""
        return Coordinator(self.server, self.data, self.config.learners, end_epoch, self.config.checkpoint_every)

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


def build_components(
    config: TrainConfig, out: Path, module: nn.Module | None = None, dataset: Dataset | None = None
) -> Components:
    """Assemble the server side of a run writing into ``out`` (a checkpoint is restored by the Checkpointer)."""
    dataset = dataset if dataset is not None else load_data(config)
    per_epoch = batches_per_epoch(config, len(dataset.train_y))
    model = module if module is not None else make_model(config, dataset)
    learner = Learner(model)
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
    )
    data = DataServer(len(dataset.train_y), config.batch_size, config.seed, config.epochs, per_epoch)
    test_x, test_y = dataset.test_x, dataset.test_y
    if config.eval_samples:
        test_x, test_y = test_x[: config.eval_samples], test_y[: config.eval_samples]
    recorder = Recorder(
        out, config, lambda: evaluate(model, test_x, test_y), per_epoch * config.epochs, quiet=config.quiet
    )
    return Components(config, out, dataset, learner, server, data, recorder)
