"""PNG figures of runs: test error against epoch, and staleness histograms."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from .errors import RunDirError  # noqa: E402
from .rundir import METRICS, SUMMARY, read_metrics  # noqa: E402


def read_run(run_dir: str | Path) -> tuple[list[dict], dict]:
    """(metrics records, summary) of a run directory."""
    run = Path(run_dir)
    metrics_path, summary_path = run / METRICS, run / SUMMARY
    if not metrics_path.exists():
        raise RunDirError(f"{str(run)!r} is not a run directory: it has no {METRICS}")
    records = read_metrics(metrics_path)
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    except json.JSONDecodeError:
        summary = {}
    return records, summary


def run_label(run_dir: str | Path, summary: dict) -> str:
    config = summary.get("config", {})
    if not config:
        return Path(run_dir).name
    return f"{config['protocol']} λ={config['learners']} μ={config['batch_size']} {config['lr_policy']}"


def plot_test_error(runs: dict[str, list[dict]], path: str | Path, title: str = "test error") -> Path:
    """One line per run: test error against epoch; the test loss when no run has a test error (a model that does
    not classify)."""
    records = [record for run in runs.values() for record in run]
    metric = "test_error" if any(record["test_error"] is not None for record in records) or not records else "test_loss"
    series = {label: [(r["epoch"], r[metric]) for r in run] for label, run in runs.items()}
    name = metric.replace("_", " ")
    return plot_series(series, path, "epoch", name, title.replace("test error", name))


def plot_staleness(histograms: dict[str, dict], path: str | Path) -> Path:
    """One panel per run: the distribution of τ over applied gradients (as the paper's Fig. 1)."""
    figure, panels = plt.subplots(1, len(histograms), figsize=(4 * len(histograms), 3.2), squeeze=False)
    for axes, (label, histogram) in zip(panels[0], histograms.items(), strict=True):
        taus = sorted(int(t) for t in histogram)
        counts = [histogram[str(t)] if str(t) in histogram else histogram[t] for t in taus]
        total = sum(counts) or 1
        axes.bar(taus, [c / total for c in counts], width=1.0)
        axes.set_xlabel("staleness τ")
        axes.set_ylabel("fraction of gradients")
        axes.set_title(label, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_runs(run_dirs: list[str], out: str | None = None) -> list[Path]:
    """`softsync plot`: test-error.png for all runs together and staleness.png."""
    runs, histograms = {}, {}
    for run_dir in run_dirs:
        records, summary = read_run(run_dir)
        label = run_label(run_dir, summary)
        if label in runs:
            label = f"{label} ({Path(run_dir).name})"
        runs[label] = records
        if summary.get("staleness"):
            histograms[label] = summary["staleness"]["histogram"]
    target = Path(out or run_dirs[0])
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = [plot_test_error(runs, target / "test-error.png")]
        if histograms:
            written.append(plot_staleness(histograms, target / "staleness.png"))
    except OSError as error:
        raise RunDirError(f"cannot write plots to {str(target)!r}: {error.strerror or error}") from None
    return written


def plot_series(
    series: dict[str, list[tuple[float, float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    ideal: bool = False,
) -> Path:
    """One line per series of (x, y) points; ``ideal`` adds y = x (perfect speedup)."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        points = sorted(points)
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3, label=label)
    if ideal and series:
        xs = sorted({x for points in series.values() for x, _ in points})
        axes.plot(xs, xs, color="grey", linestyle=":", label="ideal")
    if logx:
        axes.set_xscale("log", base=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def _legend(labels: dict[str, str], skip: set[str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in labels.items() if key not in skip) or "run"


def _staleness_figure(spec: dict, finished: list, out: Path) -> list[Path]:
    """kind = "staleness": one histogram of τ per run, as the paper's Fig. 1."""
    histograms = {}
    for run, _ in finished:
        summary = json.loads((out / "runs" / run.name / SUMMARY).read_text())
        histograms[_legend(run.labels, set())] = summary["staleness"]["histogram"]
    return [plot_staleness(histograms, out / f"{spec.get('name', 'staleness')}.png")] if histograms else []


def _grouped(spec: dict, run) -> str:
    """The figure a run belongs to: the value of the spec's `per` key, or '' for a single figure."""
    return run.labels.get(spec["per"], "") if spec.get("per") else ""


def _figure_path(spec: dict, group: str, out: Path) -> tuple[Path, str]:
    name, title, per = spec.get("name", spec["kind"]), spec.get("title", ""), spec.get("per")
    if not per:
        return out / f"{name}.png", title
    return out / f"{name}-{group}.png", f"{title} {per} = {group}".strip()


def _test_error_figures(spec: dict, finished: list, out: Path) -> list[Path]:
    """kind = "test-error": test error against epoch, a line per run; `per = KEY`: a figure per value of KEY."""
    groups: dict[str, dict] = {}
    for run, row in finished:
        metrics = out / "runs" / run.name / METRICS
        records = read_metrics(metrics) if metrics.exists() else []  # a run may diverge before its first epoch end
        diverged = " (diverged)" if row["status"] == "diverged" else ""
        groups.setdefault(_grouped(spec, run), {})[_legend(run.labels, {str(spec.get("per"))}) + diverged] = records
    written = []
    for group, lines in groups.items():
        path, title = _figure_path(spec, group, out)
        written.append(plot_test_error(lines, path, title=title or "test error"))
    return written


def _final_figures(spec: dict, finished: list, out: Path) -> list[Path]:
    """kind = "final": `y` (test_error, samples_per_s, speedup, staleness_mean) against `x` (mu_lambda or a
    numeric grid key), a line per value of the grid keys in `by` (default: all but x); `per` as above."""
    x, y = spec["x"], spec.get("y", "test_error")
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for run, row in finished:
        value = row.get("samples_per_s" if y == "speedup" else y)
        if value is None:  # a diverged run has no final test error
            continue
        hidden = set(run.labels) - set(spec["by"]) if "by" in spec else {x, spec.get("per")}
        series = groups.setdefault(_grouped(spec, run), {})
        series.setdefault(_legend(run.labels, hidden), []).append((float(row[x]), float(value)))
    written = []
    for group, series in groups.items():
        if y == "speedup":  # relative to the smallest x of each line (λ = 1)
            series = {label: [(px, py / min(points)[1]) for px, py in points] for label, points in series.items()}
        path, title = _figure_path(spec, group, out)
        written.append(
            plot_series(
                series,
                path,
                spec.get("xlabel", x),
                spec.get("ylabel", y),
                title,
                logx=spec.get("logx", False),
                ideal=spec.get("ideal", False),
            )
        )
    return written


# an experiment file's [[figure]] kinds
FIGURES = {"staleness": _staleness_figure, "test-error": _test_error_figures, "final": _final_figures}


def plot_experiment(figures: list[dict], runs: list, rows: list[dict], out: Path) -> list[Path]:
    """The figures an experiment file asks for (see FIGURES), as PNGs in ``out``."""
    finished = [(run, row) for run, row in zip(runs, rows, strict=True) if row["status"] in ("completed", "diverged")]
    return [path for spec in figures for path in FIGURES[spec["kind"]](spec, finished, out)]
