"""softsync.train(): assemble data, model, parameter server and an engine from one config."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, TrainConfig, make_config, validate
from .data import DataServer
from .datasets import Dataset, load_dataset
from .engines.sim import SimEngine, StepTimeModel
from .learner import Learner, evaluate
from .models import build_model
from .runlog import Recorder, keep_metrics_up_to, load_checkpoint, prepare_run_dir
from .server import ParameterServer

# what may change when a run is resumed: the rest is the run's own config
RESUME_OVERRIDES = {"epochs", "quiet", "resume"}


def batches_per_epoch(config: TrainConfig, num_samples: int) -> int:
    """N//μ mini-batches; hardsync: N//(μλ) rounds of λ mini-batches."""
    if config.parsed_protocol().blocking:
        return (num_samples // (config.batch_size * config.learners)) * config.learners
    return num_samples // config.batch_size


def resume_config(run_dir: str, options: dict) -> tuple[TrainConfig, dict]:
    """The config and checkpoint of the run in ``run_dir``, with ``options`` (epochs, quiet) applied."""
    changed = sorted(set(options) - RESUME_OVERRIDES)
    if changed:
        names = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise ConfigError(f"--resume continues a run with its own config: only --epochs and --quiet may be given (got {names})")
    checkpoint = load_checkpoint(run_dir)
    saved = {k: v for k, v in checkpoint["config"].items() if k != "resume"}
    config = make_config(**{**saved, **options, "out": run_dir, "resume": run_dir})
    return config, checkpoint


def train(config: TrainConfig | None = None, *, module: nn.Module | None = None, data: Dataset | None = None, **options) -> dict:
    """Train under ``config`` (or keyword options named like the CLI flags) and return the summary.

    ``module`` may be any ``nn.Module`` taking (N, C, H, W) inputs; ``data`` a loaded
    Dataset (then ``config.dataset`` only names it). Writes metrics.jsonl, summary.json and
    checkpoint.pt into ``config.out``. ``resume=RUN_DIR`` continues that run in place.
    """
    checkpoint = None
    resume = options.get("resume") or (config.resume if config is not None else None)
    if resume:
        config, checkpoint = resume_config(str(resume), options)
    elif config is None:
        config = make_config(**options)
    else:
        config = dataclasses.replace(config, **options)
        validate(config)
    if config.engine != "sim":
        raise ConfigError("--engine dist is not built yet: use --engine sim")
    dataset = data
    if dataset is None:
        dataset = load_dataset(config.dataset, config.data_dir, seed=config.seed, synthetic_size=config.synthetic_size)
    num_samples = len(dataset.train_y)
    per_epoch = batches_per_epoch(config, num_samples)
    if per_epoch < 1:
        raise ConfigError(
            f"--batch-size {config.batch_size} × --learners {config.learners} exceeds the {num_samples} training samples of {config.dataset}"
        )

    torch.set_num_threads(1)  # the sim runs one gradient at a time; one thread is the fair unit
    model = module
    if model is None:
        model = build_model(config.model, dataset.input_shape, dataset.num_classes, seed=config.seed)
    learner = Learner(model)
    if checkpoint is not None and checkpoint["server"]["weights"].shape != learner.weights.shape:
        raise ConfigError(
            f"--resume {config.out!r}: its checkpoint holds {checkpoint['server']['weights'].numel()} weights, "
            f"the model {learner.weights.numel()}"
        )
    out = Path(config.out) if checkpoint is not None else prepare_run_dir(config.out or config.default_out())
    config = dataclasses.replace(config, out=str(out))

    server = ParameterServer(
        learner.weights,  # the sim's learners compute on the server's own weights (see engines/sim.py)
        config.parsed_protocol(),
        config.learners,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        lr_policy=config.lr_policy,
        lr_steps=config.lr_steps,
        lr_gamma=config.lr_gamma,
    )
    data_server = DataServer(num_samples, config.batch_size, config.seed, config.epochs, per_epoch)
    test_x, test_y = dataset.test_x, dataset.test_y
    if config.eval_samples:
        test_x, test_y = test_x[: config.eval_samples], test_y[: config.eval_samples]
    recorder = Recorder(out, config, lambda: evaluate(model, test_x, test_y), per_epoch * config.epochs, quiet=config.quiet)
    times = StepTimeModel(
        step_time=config.step_time,
        jitter=config.step_jitter,
        speeds=config.learner_speeds or (1.0,) * config.learners,
        bandwidth=config.bandwidth,
        latency=config.latency,
        message_bytes=learner.weights.numel() * learner.weights.element_size(),
        seed=config.seed,
    )
    engine = SimEngine(server, learner, data_server, dataset.train_x, dataset.train_y, times, recorder, config.learners)
    if checkpoint is not None:
        server.load_state_dict(checkpoint["server"])
        data_server.load_state_dict(checkpoint["data"])
        engine.load_state_dict(checkpoint["engine"])
        recorder.load_state_dict(checkpoint["recorder"])
        recorder.progress.update(checkpoint["epoch"] * per_epoch)
        keep_metrics_up_to(out, checkpoint["epoch"])
    recorder.status = engine.run()
    return recorder.finish(server, virtual_s=engine.now)
