"""softsync.train(): resolve the config, then hand the run to an engine."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from .build import batches_per_epoch, build_run, load_data
from .config import ConfigError, TrainConfig, make_config, validate
from .datasets import Dataset
from .engines.sim import SimEngine, StepTimeModel
from .runlog import load_checkpoint, open_run_dir

# what may change when a run is resumed: the rest is the run's own config
RESUME_OVERRIDES = {"epochs", "quiet", "resume", "timeout"}


def resume_config(run_dir: str, options: dict) -> tuple[TrainConfig, dict]:
    """The config and checkpoint of the run in ``run_dir``, with ``options`` (epochs, quiet) applied.

    Other options may be given only with the run's own values: a torchrun restart repeats its
    whole command line.
    """
    checkpoint = load_checkpoint(run_dir)
    if options.get("out") is not None and Path(options["out"]).resolve() != Path(run_dir).resolve():
        raise ConfigError(f"--resume continues the run in {run_dir!r}: --out {options['out']!r} names another directory")
    saved = {k: v for k, v in checkpoint["config"].items() if k not in ("out", "resume")}
    options = {k: v for k, v in options.items() if k not in ("out", "resume")}
    own, given = make_config(**saved).resolved(), make_config(**{**saved, **options}).resolved()
    changed = sorted(name for name in options if name not in RESUME_OVERRIDES and given[name] != own[name])
    if changed:
        names = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise ConfigError(f"--resume continues a run with its own config: only --epochs, --timeout and --quiet may be changed (got {names})")
    config = make_config(**{**saved, **options, "out": run_dir, "resume": run_dir})
    return config, checkpoint


def resolve(config: TrainConfig | None, options: dict) -> tuple[TrainConfig, dict | None]:
    """The validated config of a new or resumed run, and the checkpoint to resume from."""
    resume = options.get("resume") or (config.resume if config is not None else None)
    if resume:
        return resume_config(str(resume), options)
    if config is None:
        return make_config(**options), None
    config = dataclasses.replace(config, **options)
    validate(config)
    return config, None


def train(config: TrainConfig | None = None, *, module: nn.Module | None = None, data: Dataset | None = None, **options) -> dict:
    """Train under ``config`` (or keyword options named like the CLI flags) and return the summary.

    ``module`` may be any ``nn.Module`` taking (N, C, H, W) inputs; ``data`` a loaded
    Dataset (then ``config.dataset`` only names it); both need the sim engine, whose learners
    live in this process. Writes metrics.jsonl, summary.json and checkpoint.pt into
    ``config.out``. ``resume=RUN_DIR`` continues that run in place.
    """
    config, checkpoint = resolve(config, options)
    if config.engine == "dist":
        if module is not None or data is not None:
            raise ConfigError("module= and data= need --engine sim: dist learners build the model and data in their own processes")
        from .engines.launch import run_dist

        return run_dist(config, checkpoint)

    torch.set_num_threads(1)  # the sim runs one gradient at a time; one thread is the fair unit
    dataset = data if data is not None else load_data(config)
    batches_per_epoch(config, len(dataset.train_y))  # refuse a bad batch size before the run directory exists
    config, out = open_run_dir(config, checkpoint)
    run = build_run(config, out, module, dataset, checkpoint)
    times = StepTimeModel(
        step_time=config.step_time,
        jitter=config.step_jitter,
        speeds=config.learner_speeds or (1.0,) * config.learners,
        bandwidth=config.bandwidth,
        latency=config.latency,
        message_bytes=config.message_bytes or run.learner.weights.numel() * run.learner.weights.element_size(),
        seed=config.seed,
    )
    engine = SimEngine(run.server, run.learner, run.data, run.dataset.train_x, run.dataset.train_y, times, run.recorder, config.learners, config.checkpoint_every)
    if checkpoint is not None:
        engine.load_state_dict(checkpoint["engine"])
    run.recorder.status = engine.run()
    return run.recorder.finish(run.server, virtual_s=engine.now)
