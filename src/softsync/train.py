"""softsync.train(): resolve the config (a new run, or one resumed from its checkpoint), then dispatch to an engine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from .checkpoint import load_checkpoint
from .config import TrainConfig, make_config, validate
from .datasets import Dataset
from .errors import ConfigError

# what may change when a run is resumed: the rest is the run's own config
RESUME_OVERRIDES = {"epochs", "quiet", "resume", "timeout"}


def resume_config(run_dir: str, options: dict) -> tuple[TrainConfig, dict]:
    """The config and checkpoint of the run in ``run_dir``, with ``options`` (epochs, timeout, quiet) applied.

    Other options may be given only with the run's own values: a torchrun restart repeats its
    whole command line.
    """
    checkpoint = load_checkpoint(run_dir)
    if options.get("out") is not None and Path(options["out"]).resolve() != Path(run_dir).resolve():
        raise ConfigError(
            f"--resume continues the run in {run_dir!r}: --out {options['out']!r} names another directory"
        )
    saved = {k: v for k, v in checkpoint["config"].items() if k not in ("out", "resume")}
    options = {k: v for k, v in options.items() if k not in ("out", "resume")}
    own, given = make_config(**saved).resolved(), make_config(**{**saved, **options}).resolved()
    changed = sorted(name for name in options if name not in RESUME_OVERRIDES and given[name] != own[name])
    if changed:
        names = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise ConfigError(
            "--resume continues a run with its own config: only --epochs, --timeout and --quiet may be changed "
            f"(got {names})"
        )
    config = make_config(**{**saved, **options, "out": run_dir, "resume": run_dir})
    if config.epochs < checkpoint["epoch"]:
        raise ConfigError(
            f"--epochs {config.epochs}: the run in {run_dir!r} has already trained {checkpoint['epoch']} epochs"
        )
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


def train(
    config: TrainConfig | None = None, *, module: nn.Module | None = None, data: Dataset | None = None, **options
) -> dict | None:
    """Train under ``config`` (or keyword options named like the CLI flags) and return the summary.

    ``module`` may be any ``nn.Module`` taking (N, C, H, W) inputs; ``data`` a loaded
    Dataset (then ``config.dataset`` only names it); both need the sim engine, whose learners
    live in this process. Writes metrics.jsonl, summary.json and checkpoint.pt into
    ``config.out``. ``resume=RUN_DIR`` continues that run in place. A learner rank under
    torchrun returns None (rank 0 holds the summary).
    """
    config, checkpoint = resolve(config, options)
    if config.engine == "dist":
        if module is not None or data is not None:
            raise ConfigError(
                "module= and data= need --engine sim: dist learners build the model and data in their own processes"
            )
        from .engines.launch import run_dist

        return run_dist(config, checkpoint)
    from .engines.sim import run_sim

    return run_sim(config, checkpoint, module, data)
