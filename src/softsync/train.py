"""softsync.train(): resolve the config (a new run, or one resumed from its checkpoint), then dispatch to an engine."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import nn

from . import specs
from .checkpoint import load_checkpoint
from .config import SPECS, TrainConfig, make_config, validate
from .datasets import Dataset, from_factory
from .errors import ConfigError
from .rundir import run_progress

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
    """The validated config of a new or resumed run, and the checkpoint to resume from.

    A rank that torchrun restarted (--max-restarts) continues its run from the last checkpoint in
    --out, as --resume would; if the run failed before its first checkpoint, it starts again.
    """
    resume = options.get("resume") or (config.resume if config is not None else None)
    if resume:
        return resume_config(str(resume), options)
    if config is None:
        config = make_config(**options)
    else:
        config = dataclasses.replace(config, **options)
        validate(config)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    if restarted and config.engine == "dist":
        out = config.out or config.default_out()
        if run_progress(out) == "resumable":
            return resume_config(out, {**options, "resume": out})
    return config, None


def given_objects(model: Any, data: Any, loss: Any, options: dict) -> dict[str, Any]:
    """Turn softsync.train's model=, data= and loss= into config options (their specs) and the objects themselves.

    A string is a spec. A callable becomes its reference (specs.reference), which learner
    processes load; one without a reference (a lambda, a nested function), an nn.Module instance
    and loaded data are recorded as ``<...>`` and work only in this process (the sim engine).
    """
    given: dict[str, Any] = {}
    for name, value in (("model", model), ("dataset", data), ("loss", loss)):
        if value is None:
            continue
        if isinstance(value, str):
            options[name] = value
            continue
        if name == "model" and isinstance(value, nn.Module):
            options[name], given[name] = specs.object_marker(value), lambda module=value: module
        elif name == "dataset" and isinstance(value, Dataset):
            options[name], given[name] = f"<{specs.short_name(value.name)}>", value
        elif name == "dataset" and isinstance(value, (tuple, list)):
            options[name] = "<data>"
            given[name] = from_factory(value, options[name], "data=")
        elif callable(value):
            options[name], given[name] = specs.reference(value) or specs.object_marker(value), value
        else:
            keyword = "data" if name == "dataset" else name
            raise ConfigError(f"{keyword}= takes a spec string or a callable, not a {type(value).__name__}")
    return given


def train(
    config: TrainConfig | None = None,
    *,
    model: Any = None,
    data: Any = None,
    loss: Any = None,
    **options,
) -> dict | None:
    """Train under ``config`` (or keyword options named like the CLI flags) and return the summary.

    ``model``, ``data`` and ``loss`` take what --model, --dataset and --loss take (a built-in name
    or a reference ``module:callable`` / ``file.py:callable``), or the Python callables themselves:
    a factory of an ``nn.Module``, a factory of ``(train, test)`` map-style datasets, a loss
    ``(output, target) -> scalar``. Under ``engine="dist"`` every learner process builds its own
    model and data: factories defined at the top level of a module or of the calling script (run
    under ``if __name__ == "__main__":``) are loaded there by reference. Under ``engine="sim"`` an
    ``nn.Module`` instance, loaded data ``(train, test)``, a lambda or a nested function work too.

    Writes metrics.jsonl, summary.json and checkpoint.pt into ``out``; ``resume=RUN_DIR``
    continues that run in place. Under torchrun every rank calls this; a learner rank returns None
    (rank 0 holds the summary).
    """
    given = given_objects(model, data, loss, options)
    config, checkpoint = resolve(config, options)
    if config.engine == "dist":
        for name in SPECS:
            if specs.is_object(getattr(config, name)):
                keyword = "data" if name == "dataset" else name
                raise ConfigError(
                    f"{keyword}={getattr(config, name)}: under engine dist every learner process builds its own "
                    f"{keyword}: pass a factory defined at the top level of a module or script, which they import "
                    "by reference (not an instance, loaded data, a lambda or a nested function)"
                )
        from .engines.launch import run_dist

        return run_dist(config, checkpoint)
    from .engines.sim import run_sim

    return run_sim(config, checkpoint, given)
