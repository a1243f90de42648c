"""The one config object every component reads, its validation, and TOML loading.

Field names are the CLI flags with dashes turned into underscores; a TOML config uses the
flag names (``batch-size = 16``). Validation raises ConfigError with one line that names the
value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import DATASETS
from .models import MODELS
from .protocol import Protocol, ProtocolError, parse_protocol
from .staleness import POLICIES

ENGINES = ("sim", "dist")
PATHS = ("data_dir", "out", "resume")


class ConfigError(ValueError):
    """A bad option value; the message is one line."""


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """All hyperparameters of a run (defaults are the CLI's)."""

    engine: str = _opt("sim", "sim: deterministic discrete-event simulation in one process; dist: real processes")
    protocol: str = _opt("1-softsync", "hardsync, async, or N-softsync (1 <= N <= learners): c = max(1, learners//N) gradients per update")
    learners: int = _opt(4, "number of learners λ")
    batch_size: int = _opt(32, "mini-batch size μ per learner")
    lr: float = _opt(0.01, "base learning rate α0")
    lr_policy: str = _opt("staleness", "α(τ): staleness (α0/τ, the paper's rule), constant (α0), mean (α0/n)")
    momentum: float = _opt(0.9, "SGD momentum on the server")
    weight_decay: float = _opt(0.0, "SGD weight decay (L2) on the server")
    lr_steps: tuple[int, ...] = _opt((), "epochs at which the learning rate is multiplied by --lr-gamma, e.g. 120,130")
    lr_gamma: float = _opt(0.1, "factor of each learning-rate step")
    epochs: int = _opt(5, "epochs to train")
    dataset: str = _opt("fashion-mnist", "fashion-mnist, mnist, cifar10 or synthetic")
    data_dir: str | None = _opt(None, "where the dataset files are: this directory or its <name>/ subdirectory, nowhere else (without it: $SOFTSYNC_DATA, then /usr/share/datasets/fashion-mnist for Fashion-MNIST)")
    synthetic_size: int = _opt(2048, "training samples of the synthetic dataset; its test set is a quarter as many, so at least 4")
    model: str = _opt("cnn-small", "paper-cifar10, cnn-small, cnn-bench, mlp or logreg")
    seed: int = _opt(0, "seed of the weights, the data order and the simulated step times")
    out: str | None = _opt(None, "run directory (default: runs/<dataset>-<model>-<protocol>-l<λ>-b<μ>-s<seed>)")
    resume: str | None = _opt(None, "continue the run in this directory from its checkpoint")
    # the simulation's step-time model
    step_time: float = _opt(0.01, "sim: mean compute time of one mini-batch gradient, virtual seconds")
    step_jitter: float = _opt(0.1, "sim: relative standard deviation of the compute time")
    learner_speeds: tuple[float, ...] = _opt((), "relative speed of each learner, e.g. 1,1,0.5 (default all 1)")
    bandwidth: float = _opt(1.25e9, "sim: parameter-server link bandwidth, bytes per second (shared by all transfers)")
    latency: float = _opt(5e-5, "sim: one-way message latency, seconds")
    message_bytes: int = _opt(0, "sim: bytes of one pull or push on the link (0: the model's float32 weights); models a bigger network's traffic")
    checkpoint_every: int = _opt(0, "also write checkpoint.pt after every K-th update (0: at epoch ends only)")
    # the dist engine
    host: str = _opt("127.0.0.1", "dist: the address the server listens on for a local launch (gloo is unauthenticated: trusted networks only)")
    timeout: float = _opt(120.0, "dist: seconds any blocking operation may wait before the run fails with an error naming the peer")
    threads_per_learner: int = _opt(1, "dist: torch threads of each learner process")
    eval_samples: int = _opt(0, "evaluate on the first N test samples (0: the whole test set)")
    quiet: bool = _opt(False, "no progress bar")

    def resolved(self) -> dict:
        """The config as plain JSON-able values (for summary.json)."""
        values = dataclasses.asdict(self)
        values["lr_steps"] = list(self.lr_steps)
        values["learner_speeds"] = list(self.learner_speeds)
        return values

    def parsed_protocol(self) -> Protocol:
        return parse_protocol(self.protocol, self.learners)

    def default_out(self) -> str:
        return f"runs/{self.dataset}-{self.model}-{self.protocol}-l{self.learners}-b{self.batch_size}-s{self.seed}"


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _number_list(value, kind, name: str) -> tuple:
    if isinstance(value, str):
        items = [item for item in value.replace(" ", "").split(",") if item]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    try:
        return tuple(kind(item) for item in items)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} = {value!r}: expected a comma-separated list of {kind.__name__}s") from None


def coerce(name: str, value):
    """Convert ``value`` (from a flag or a TOML file) to the type of field ``name``."""
    flag = "--" + name.replace("_", "-")
    if name not in FIELDS:
        raise ConfigError(f"unknown option {name.replace('_', '-')!r}: see 'softsync train --help'")
    default = FIELDS[name].default
    if name == "lr_steps":
        return _number_list(value, int, flag)
    if name == "learner_speeds":
        return _number_list(value, float, flag)
    if value is None:
        if default is None:
            return None
        raise ConfigError(f"{flag} needs a value")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{flag} = {value!r}: expected true or false")
    if isinstance(default, int):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{flag} = {value!r}: expected a whole number")
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{flag} = {value!r}: expected a whole number") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{flag} = {value!r}: expected a number") from None
    if not isinstance(value, str):
        raise ConfigError(f"{flag} = {value!r}: expected a string")
    if name in PATHS:
        return os.path.expanduser(value)
    return value


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """The tables of a TOML file; ConfigError (one line) when it is missing or unparsable."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {error}") from None


def load_toml(path: str | Path) -> dict:
    """Read a config file whose keys are flag names; returns field-name -> coerced value."""
    raw = read_toml(path)
    return {key.replace("-", "_"): coerce(key.replace("-", "_"), value) for key, value in raw.items()}


def make_config(**values) -> TrainConfig:
    """A validated TrainConfig from field values (flag names with underscores)."""
    config = TrainConfig(**{name: coerce(name, value) for name, value in values.items()})
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise ConfigError for the first value that is not allowed."""

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    require(0 <= config.seed < 2**31, f"--seed {config.seed}: must be in [0, 2^31)")
    require(config.engine in ENGINES, f"--engine {config.engine!r} is unknown: use sim or dist")
    require(config.learners >= 1, f"--learners {config.learners}: need at least 1 learner")
    require(config.batch_size >= 1, f"--batch-size {config.batch_size}: need at least 1 sample per mini-batch")
    try:
        config.parsed_protocol()
    except ProtocolError as error:
        raise ConfigError(f"--protocol: {error}") from None
    require(config.lr_policy in POLICIES, f"--lr-policy {config.lr_policy!r} is unknown: use {', '.join(sorted(POLICIES))}")
    require(math.isfinite(config.lr) and config.lr > 0, f"--lr {config.lr}: must be a positive number")
    require(0 <= config.momentum < 1, f"--momentum {config.momentum}: must be in [0, 1)")
    require(math.isfinite(config.weight_decay) and config.weight_decay >= 0, f"--weight-decay {config.weight_decay}: must be >= 0")
    require(all(step >= 1 for step in config.lr_steps), f"--lr-steps {','.join(map(str, config.lr_steps))}: epochs must be >= 1")
    require(list(config.lr_steps) == sorted(set(config.lr_steps)), "--lr-steps: epochs must be increasing")
    require(math.isfinite(config.lr_gamma) and config.lr_gamma > 0, f"--lr-gamma {config.lr_gamma}: must be a positive number")
    require(config.epochs >= 1, f"--epochs {config.epochs}: need at least 1 epoch")
    require(config.dataset in DATASETS, f"--dataset {config.dataset!r} is unknown: use {', '.join(DATASETS)}")
    require(config.synthetic_size >= 1, f"--synthetic-size {config.synthetic_size}: need at least 1 sample")
    require(config.model in MODELS, f"--model {config.model!r} is unknown: use {', '.join(sorted(MODELS))}")
    require(math.isfinite(config.step_time) and config.step_time > 0, f"--step-time {config.step_time}: must be a positive number")
    require(0 <= config.step_jitter < 1, f"--step-jitter {config.step_jitter}: must be in [0, 1)")
    require(config.bandwidth > 0, f"--bandwidth {config.bandwidth}: must be a positive number of bytes per second")
    require(math.isfinite(config.latency) and config.latency >= 0, f"--latency {config.latency}: must be >= 0")
    require(config.message_bytes >= 0, f"--message-bytes {config.message_bytes}: must be >= 0")
    require(0 < config.timeout <= 86400, f"--timeout {config.timeout}: must be a positive number of seconds, at most a day")
    require(config.threads_per_learner >= 1, f"--threads-per-learner {config.threads_per_learner}: need at least 1")
    require(bool(config.host.strip()), "--host: give an address, e.g. 127.0.0.1")
    require(config.checkpoint_every >= 0, f"--checkpoint-every {config.checkpoint_every}: must be >= 0")
    require(config.eval_samples >= 0, f"--eval-samples {config.eval_samples}: must be >= 0")
    if config.learner_speeds:
        require(
            len(config.learner_speeds) == config.learners,
            f"--learner-speeds has {len(config.learner_speeds)} values: give one per learner ({config.learners})",
        )
        require(
            all(math.isfinite(s) and s > 0 for s in config.learner_speeds),
            f"--learner-speeds {','.join(map(str, config.learner_speeds))}: speeds must be positive",
        )
