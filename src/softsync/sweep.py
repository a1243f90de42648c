"""`softsync sweep`: run an experiment grid, skip what is finished, tabulate and plot the results.

An experiment file is TOML::

    [base]              # train options, as in --config
    dataset = "fashion-mnist"
    [grid]              # lists multiply out; a scalar is fixed; {label = ..., k = v} bundles options
    protocol = ["1-softsync", "async"]
    lr_policy = ["constant", "staleness"]
    [[figure]]          # see plots.FIGURES
    kind = "test-error"
    per = "lr_policy"

``[[grid]]`` (several tables) runs the union of their products. Every run is its own
``softsync train`` process writing ``OUT/runs/<name>``; its output goes to ``OUT/logs/<name>.log``.
Then OUT gets results.csv, results.md, the figures and report.html (report.py; every finished run).
The runs die with the sweep: SIGTERM, SIGHUP or Ctrl-C ends them before the sweep exits, and
a SIGKILLed sweep takes them with it (Linux: PR_SET_PDEATHSIG).
A run whose directory has a summary is finished and skipped; one stopped with a checkpoint is
resumed; one stopped before its first checkpoint is started again. Runs under the dist engine
run one at a time, after the others, because they measure real speed.

Damaged run directories: a ``config.json`` that cannot be read refuses the whole sweep, before
anything runs, with one line naming the file, because the sweep cannot tell which run the
directory holds and must not resume or restart someone else's run in it. A ``summary.json`` that
cannot be read only costs that run's result: its row says "damaged: summary.json ..." and the
others are run, tabulated and plotted; nothing in that directory is changed (remove it to run
that run again).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .config import FIELDS, ConfigError, coerce, make_config, read_toml
from .plots import FIGURES, FINISHED, plot_experiment
from .processes import dying_with_parent, end_processes, ended_by_signals
from .protocol import parse_protocol
from .report import REPORT, write_report
from .rundir import CONFIG, METRICS, SUMMARY, read_metrics, run_progress
from .staleness import StalenessStats

FINAL_Y = ("test_error", "test_loss", "samples_per_s", "speedup", "staleness_mean")
FINAL_X = ("samples_per_s", "staleness_mean")  # results a figure may also put on x (a trade-off: error against speed)
# options a rerun may change without making a finished run a different run
VOLATILE = {"out", "resume", "quiet", "timeout", "data_dir"}


@dataclass
class SweepRun:
    """One run of an experiment grid."""

    name: str
    labels: dict[str, str]  # grid key -> the value shown in tables and legends
    options: dict  # train options (field name -> value)


@dataclass
class Experiment:
    name: str
    runs: list[SweepRun]
    grid_keys: list[str]
    figures: list[dict]


def _label(value) -> str:
    if isinstance(value, dict):
        return str(value.get("label", ",".join(f"{k}={v}" for k, v in value.items())))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _options(key: str, value, where: str) -> dict:
    """The train options one grid value sets: a bundle sets several, anything else sets ``key``."""
    if isinstance(value, dict):
        items = {k: v for k, v in value.items() if k != "label"}
    else:
        items = {key: value}
    options = {}
    for name, item in items.items():
        field = name.replace("-", "_")
        if field in ("out", "resume"):
            raise ConfigError(f"{where}: {name} is set by the sweep (OUT/runs/<name>), not by the experiment")
        try:
            options[field] = coerce(field, item)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
    return options


def load_experiment(path: str | Path) -> Experiment:
    """Parse and check an experiment file; every run's config is validated before anything runs."""
    raw = read_toml(path, "experiment file")
    unknown = set(raw) - {"base", "grid", "figure"}
    if unknown:
        raise ConfigError(
            f"experiment file {str(path)!r}: unknown table {sorted(unknown)[0]!r} (use base, grid, figure)"
        )
    base = {key: value for key, value in raw.get("base", {}).items()}
    base_options = _options("base", base, f"{path} [base]") if base else {}
    grids = raw.get("grid", [{}])
    grids = [grids] if isinstance(grids, dict) else grids
    runs, grid_keys = [], []
    for grid in grids:
        for key in grid:
            if key not in grid_keys:
                grid_keys.append(key)
        axes = [
            [(key, value) for value in (values if isinstance(values, list) else [values])]
            for key, values in grid.items()
        ]
        for combination in itertools.product(*axes):
            options = dict(base_options)
            labels = {}
            for key, value in combination:
                options.update(_options(key, value, f"{path} [grid] {key}"))
                labels[key] = _label(value)
            name = ",".join(f"{key}={label}" for key, label in labels.items()) or "base"
            runs.append(SweepRun(name.replace("/", "_").replace(" ", ""), labels, options))
    names = [run.name for run in runs]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise ConfigError(
            f"experiment file {str(path)!r}: two runs are both named {duplicate!r}; give bundles distinct labels"
        )
    for run in runs:
        try:
            make_config(**run.options)
        except ConfigError as error:
            raise ConfigError(f"{path}, run {run.name}: {error}") from None
    figures = raw.get("figure", [])
    for figure in figures:
        check_figure(figure, runs, grid_keys, f"experiment file {str(path)!r}")
    return Experiment(Path(path).stem, runs, grid_keys, figures)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_figure(figure: dict, runs: list[SweepRun], grid_keys: list[str], where: str) -> None:
    """Refuse a figure that could not be drawn, before any run starts."""
    kind = figure.get("kind")
    if kind not in FIGURES:
        raise ConfigError(f"{where}: figure kind {kind!r} is unknown: use {', '.join(FIGURES)}")
    if figure.get("per") not in (None, *grid_keys):
        raise ConfigError(f"{where}: figure per = {figure['per']!r} is not a grid key ({', '.join(grid_keys)})")
    if kind == "final":
        x, y = figure.get("x"), figure.get("y", "test_error")
        if y not in FINAL_Y:
            raise ConfigError(f"{where}: figure y = {y!r} is unknown: use {', '.join(FINAL_Y)}")
        numeric = x in ("mu_lambda", *FINAL_X) or (
            x in grid_keys and all(_number(run.labels[x]) for run in runs if x in run.labels)
        )
        if not numeric:
            raise ConfigError(
                f"{where}: figure x = {x!r} must be mu_lambda, {', '.join(FINAL_X)} "
                "or a grid key with numbers as values"
            )
        unknown = [key for key in figure.get("by", []) if key not in grid_keys]
        if unknown:
            raise ConfigError(f"{where}: figure by = {unknown[0]!r} is not a grid key ({', '.join(grid_keys)})")


def _flags(options: dict) -> list[str]:
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(FIELDS[name].default, bool):
            flags += [flag] if value else []
        elif value is not None:
            flags += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return flags


def _unreadable(error: Exception) -> str:
    """Why a JSON file of a run directory could not be used, in a few words."""
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, json.JSONDecodeError):
        return "not JSON"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    if isinstance(error, KeyError):
        return f"no {error.args[0]!r}"
    return "not what softsync writes"


def _saved_config(run_dir: Path) -> dict:
    """The config.json of ``run_dir``; ConfigError (one line naming it) when it is not a run's config."""
    path = run_dir / CONFIG
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        reason = _unreadable(error)
    else:
        if isinstance(saved, dict):
            return saved
        reason = "not a JSON object"
    raise ConfigError(
        f"{path} is not a run's config ({reason}), so the sweep cannot tell which run {run_dir} holds: "
        "remove that directory or use another --out"
    )


def run_state(run_dir: Path, options: dict) -> str:
    """The run's progress (see rundir.run_progress); another run in ``run_dir`` or a damaged config.json is an error."""
    if (run_dir / CONFIG).exists():
        saved = _saved_config(run_dir)
        wanted = make_config(**options, out=str(run_dir)).resolved()
        changed = [key for key in wanted if key not in VOLATILE and saved.get(key) != wanted[key]]
        if changed:
            key = changed[0]
            raise ConfigError(
                f"{run_dir} holds a run with {key} = {saved.get(key)!r}, not {wanted[key]!r}: "
                "use another --out or remove that run"
            )
    return run_progress(run_dir)


class Children:
    """The sweep's running ``softsync train`` processes, so that a sweep that is stopped ends them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, argv: list[str], **popen) -> int | None:
        """Run ``argv`` to its end and return its exit code; None, starting nothing, once the sweep is stopping."""
        with self._lock:
            if self.stopping:
                return None
            # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process. That
            # thread (a ThreadPoolExecutor worker, or the main thread for dist runs) is this one, and it
            # waits below until the child has exited: it outlives the child, so the signal only comes when
            # the whole sweep dies.
            process = subprocess.Popen(argv, preexec_fn=dying_with_parent(), **popen)
            self._running.add(process)
        code = process.wait()  # a signal interrupting it (main thread) leaves the child listed for end_all
        with self._lock:
            self._running.discard(process)
        return code

    def end_all(self, grace: float = 10.0) -> None:
        """Start no more runs; SIGTERM the running ones, SIGKILL any still running after ``grace`` seconds."""
        with self._lock:
            self.stopping = True
            running = list(self._running)
        end_processes(running, grace)  # a dist run ends its own ranks on SIGTERM

    def __enter__(self) -> Children:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:  # interrupted or failed: no run may outlive the sweep
            self.end_all()


def execute(run: SweepRun, out: Path, children: Children) -> str | None:
    """Run (or resume) one training run in its own process; its exit status as text (None: the sweep is stopping)."""
    if children.stopping:
        return None
    run_dir, log = out / "runs" / run.name, out / "logs" / f"{run.name}.log"
    state = run_state(run_dir, run.options)
    if state == "finished":
        return "skipped"
    if state == "resumable":
        flags = ["--resume", str(run_dir), "--epochs", str(run.options.get("epochs", FIELDS["epochs"].default))]
    else:
        flags = _flags(run.options) + ["--out", str(run_dir)]
    log.parent.mkdir(parents=True, exist_ok=True)
    # one thread per sim run: --jobs J runs use J cores; dist runs set their own threads
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as handle:
        handle.write(f"$ softsync train {' '.join(flags)} --quiet\n")
        handle.flush()
        code = children.run(
            [sys.executable, "-m", "softsync.cli", "train", *flags, "--quiet"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    if code is None:
        return None
    if code == 0:
        return "ran"
    lines = log.read_text().strip().splitlines()
    return f"failed (exit {code}): {lines[-1] if lines else 'no output'}"


def result_row(run: SweepRun, run_dir: Path, outcome: str | None = None) -> dict:
    """One row of results.csv: the run's grid values and what it reached."""
    row = {"run": run.name, **run.labels}
    summary_path = run_dir / SUMMARY
    if not summary_path.exists():
        return {**row, "status": outcome if outcome and outcome.startswith("failed") else "not run"}
    records = read_metrics(run_dir / METRICS) if (run_dir / METRICS).exists() else []
    try:
        return {**row, **_summary_columns(json.loads(summary_path.read_text()), records)}
    except (OSError, ValueError, LookupError, TypeError, AttributeError) as error:  # any shape a damaged file has
        damage = f"{SUMMARY} cannot be read ({_unreadable(error)}); remove {run_dir} to run it again"
        return {**row, "status": f"damaged: {damage}"}


def _summary_columns(summary: dict, records: list[dict]) -> dict:
    """The results columns from a run's summary.json and metrics records."""
    staleness = summary["staleness"]
    config = summary["config"]
    protocol = parse_protocol(config["protocol"], config["learners"])
    histogram = StalenessStats({int(tau): count for tau, count in staleness["histogram"].items()})
    over = None if protocol.blocking else histogram.fraction_above(2 * protocol.n)  # n-softsync and async
    return {
        "status": summary["status"],
        "test_error": summary["test_error"],
        "test_loss": summary.get("test_loss"),  # absent from the summaries of softsync before --loss
        "epochs": records[-1]["epoch"] if records else 0,
        "staleness_mean": staleness["mean"],
        "staleness_max": staleness["max"],
        "staleness_p99": staleness["p99"],
        "p_staleness_over_2n": over,
        "samples_per_s": summary["samples_per_s"],
        "wall_s": summary["wall_s"],
        "mu_lambda": config["batch_size"] * config["learners"],
    }


COLUMNS = [
    "status",
    "test_error",
    "test_loss",
    "epochs",
    "staleness_mean",
    "staleness_max",
    "staleness_p99",
    "p_staleness_over_2n",
    "samples_per_s",
    "wall_s",
    "mu_lambda",
]


def _shown(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_results(rows: list[dict], grid_keys: list[str], out: Path) -> None:
    """results.csv (every column) and results.md (a table to paste into docs)."""
    columns = ["run", *grid_keys, *COLUMNS]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _shown(row.get(key)) for key in columns})
    shown = [*grid_keys, *COLUMNS]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_shown(row.get(key)) for key in shown) + " |" for row in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def sweep(
    path: str | Path, out: str | Path | None = None, jobs: int = 1, data_dir: str | None = None, log=print
) -> list[dict]:
    """Run every run of the experiment not finished yet; write results.csv, results.md, figures and report.html
    (every finished run) under ``out``.

    ``data_dir`` sets --data-dir of every run (where the dataset is on this machine).
    """
    experiment = load_experiment(path)
    if data_dir is not None:
        for run in experiment.runs:
            run.options["data_dir"] = coerce("data_dir", data_dir)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: need at least 1")
    out = Path(out or f"runs/sweep-{experiment.name}")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {str(out)!r} is not writable: {error.strerror or error}") from None
    for run in experiment.runs:  # refuse a changed experiment before running anything
        run_state(out / "runs" / run.name, run.options)
    outcomes: dict[str, str] = {}
    total, started, reporting = len(experiment.runs), time.monotonic(), threading.Lock()
    children = Children()

    def one(run: SweepRun) -> None:
        begin = time.monotonic()
        outcome = execute(run, out, children)
        if outcome is None:  # the sweep is being stopped
            return
        row = result_row(run, out / "runs" / run.name, outcome)
        if row.get("test_error") is not None:
            error = f", test error {row['test_error']:.4f}"
        else:  # a model that does not classify, or a diverged run
            error = "" if row.get("test_loss") is None else f", test loss {row['test_loss']:.4g}"
        shown = row["status"] if outcome == "ran" or row["status"].startswith("damaged") else outcome
        with reporting:
            outcomes[run.name] = outcome
            log(f"[{len(outcomes)}/{total}] {run.name}: {shown}{error} ({time.monotonic() - begin:.0f} s)")

    simulated = [run for run in experiment.runs if run.options.get("engine", "sim") == "sim"]
    distributed = [run for run in experiment.runs if run not in simulated]
    # on the way out of an exception (a signal, Ctrl-C, an error) the children end first, then the pool's
    # threads, which wait for them; the runs are resumed by the next sweep
    with ended_by_signals(), ThreadPoolExecutor(max_workers=jobs) as pool, children:
        list(pool.map(one, simulated))
        for run in distributed:  # alone on the machine: they measure real throughput
            one(run)
    rows = [result_row(run, out / "runs" / run.name, outcomes.get(run.name)) for run in experiment.runs]
    write_results(rows, experiment.grid_keys, out)
    for figure in plot_experiment(experiment.figures, experiment.runs, rows, out):
        log(f"figure {figure}")
    finished = [
        str(out / "runs" / run.name)
        for run, row in zip(experiment.runs, rows, strict=True)
        if row["status"] in FINISHED
    ]
    log(f"report {write_report(finished, out / REPORT, title=f'softsync sweep {experiment.name}')}")
    log(f"{total} runs in {time.monotonic() - started:.0f} s; results in {out / 'results.md'}")
    return rows
