"""PNG figures of runs: test error against epoch, staleness histograms, and what each learner did.

Each figure is built by a ``*_figure`` function (a matplotlib Figure); ``plot_*`` writes it to a file and
``png_bytes`` to bytes (the report embeds them).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .errors import RunDirError  # noqa: E402
from .rundir import CONFIG, METRICS, SUMMARY, read_metrics  # noqa: E402


def read_run(run_dir: str | Path) -> tuple[list[dict], dict]:
    """(metrics records, summary) of a run directory: one with a metrics.jsonl or a config.json (a run that has
    not ended an epoch yet, or diverged before its first epoch end, has no metrics)."""
    run = Path(run_dir)
    metrics_path, summary_path = run / METRICS, run / SUMMARY
    if not metrics_path.is_file() and not (run / CONFIG).is_file():
        raise RunDirError(f"{str(run)!r} is not a run directory: it has no {METRICS} and no {CONFIG}")
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    except (OSError, ValueError):  # not JSON, not UTF-8: as if the run had not ended
        summary = {}
    return records, summary if isinstance(summary, dict) else {}


def run_label(run_dir: str | Path, summary: dict) -> str:
    config = summary.get("config", {})
    if not config:
        return Path(run_dir).name
    return f"{config['protocol']} λ={config['learners']} μ={config['batch_size']} {config['lr_policy']}"


def read_runs(run_dirs: list[str]) -> list[tuple[str, list[dict], dict]]:
    """(label, metrics records, summary) of each run directory; a label two runs share gets the directory's name."""
    runs: list[tuple[str, list[dict], dict]] = []
    for run_dir in run_dirs:
        records, summary = read_run(run_dir)
        label = run_label(run_dir, summary)
        if label in {seen for seen, _, _ in runs}:
            label = f"{label} ({Path(run_dir).name})"
        runs.append((label, records, summary))
    return runs


def save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG file and close it."""
    try:
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
    return Path(path)


def png_bytes(figure: Figure) -> bytes:
    """``figure`` as the bytes of a PNG (to embed in a page), closed."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(figure)
    return buffer.getvalue()


def error_curves(
    runs: dict[str, list[dict]], title: str = "test error"
) -> tuple[dict[str, list[tuple[float, float]]], str, str]:
    """(series, y label, title) of the test-error figure: test error against epoch, a series per run; the test
    loss when no run has a test error (a model that does not classify)."""
    records = [record for run in runs.values() for record in run]
    metric = "test_error" if any(record["test_error"] is not None for record in records) or not records else "test_loss"
    series = {label: [(r["epoch"], r[metric]) for r in run] for label, run in runs.items()}
    name = metric.replace("_", " ")
    return series, name, title.replace("test error", name)


def error_figure(runs: dict[str, list[dict]], title: str = "test error") -> Figure:
    series, name, title = error_curves(runs, title)
    return series_figure(series, "epoch", name, title)


def plot_test_error(runs: dict[str, list[dict]], path: str | Path, title: str = "test error") -> Path:
    """One line per run: test error against epoch; the test loss when no run has a test error (a model that does
    not classify)."""
    series, name, title = error_curves(runs, title)
    return plot_series(series, path, "epoch", name, title)


STALENESS_COLUMNS = 4  # panels in a row; more runs wrap onto further rows


def staleness_figure(histograms: dict[str, dict]) -> Figure:
    """One panel per run: the distribution of τ over applied gradients (as the paper's Fig. 1)."""
    columns = min(len(histograms), STALENESS_COLUMNS)
    rows = -(-len(histograms) // columns)
    figure, panels = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axes in panels.flat[len(histograms) :]:
        axes.set_visible(False)
    for axes, (label, histogram) in zip(panels.flat, histograms.items(), strict=False):
        taus = sorted(int(t) for t in histogram)
        counts = [histogram[str(t)] if str(t) in histogram else histogram[t] for t in taus]
        total = sum(counts) or 1
        axes.bar(taus, [c / total for c in counts], width=1.0)
        axes.set_xlabel("staleness τ")
        axes.set_ylabel("fraction of gradients")
        axes.set_title(label, fontsize=9)
    figure.tight_layout()
    return figure


def plot_staleness(histograms: dict[str, dict], path: str | Path) -> Path:
    """One panel per run: the distribution of τ over applied gradients (as the paper's Fig. 1)."""
    return save(staleness_figure(histograms), path)


SIDE_BY_SIDE = 24  # up to this many bars the two panels of learners.png sit side by side, beyond it one above the other
NUMBERED = 40  # learners numbered on the x axis at most; more are numbered every 2nd, 5th, 10th, ...


def _tick_step(bars: int) -> int:
    return next(step for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if bars / step <= NUMBERED)


def _bars(axes: Axes, xs: list[int], heights: list[float], bottoms: list[float] | None = None, **style) -> None:
    """Bars of width 0.8 as one collection: a thousand learners draw in a second (axes.bar takes ten)."""
    bottoms = bottoms or [0.0] * len(xs)
    corners = [
        [(x - 0.4, low), (x - 0.4, low + height), (x + 0.4, low + height), (x + 0.4, low)]
        for x, height, low in zip(xs, heights, bottoms, strict=True)
    ]
    axes.add_collection(PolyCollection(corners, **style))
    axes.autoscale_view()


def learners_figure(learners: dict[str, list[dict]]) -> Figure:
    """What each learner did over a run (summary.json's ``learners``), to show a straggler at a glance.

    One panel: each learner's samples/s, a bar per learner, the run's mean as a dashed line. The other: the
    fraction of its time computing (solid) and waiting for weights (hatched grey), stacked. Several runs: their
    learners' bars in groups, a colour and a gap per run. A lost learner's bar is marked with a red ×.
    """
    total = sum(len(rows) for rows in learners.values())
    bars = total + len(learners)  # with the gaps
    legend_rows = -(-len(learners) // 3) if len(learners) > 1 else 0  # the runs' colours, under the panels
    if bars <= SIDE_BY_SIDE:
        shape, size = (1, 2), (2 * max(5.5, 1.5 + 0.25 * bars), 3.6)
    else:
        shape, size = (2, 1), (min(16.0, max(8.0, 1.5 + 0.12 * bars)), 7.2)
    figure, (rates, shares) = plt.subplots(
        *shape, figsize=(size[0], size[1] + 0.25 * legend_rows), layout="constrained"
    )
    step = _tick_step(total)
    position, ticks, tick_labels, lost = 0, [], [], False
    for colour, (label, rows) in enumerate(learners.items()):
        xs = [position + index for index in range(len(rows))]
        speed = [row["samples_per_s"] for row in rows]
        compute = [row["compute_fraction"] for row in rows]
        wait = [row["wait_fraction"] for row in rows]
        shown = label if len(learners) > 1 else None
        _bars(rates, xs, speed, facecolor=f"C{colour % 10}", label=shown)
        if rows:
            mean = sum(speed) / len(rows)
            rates.plot([xs[0] - 0.4, xs[-1] + 0.4], [mean, mean], color="black", linestyle="--", linewidth=0.8)
        _bars(shares, xs, compute, facecolor=f"C{colour % 10}")
        _bars(shares, xs, wait, compute, facecolor="lightgrey", hatch="//", edgecolor="grey", linewidth=0.5)
        for x, row, height in zip(xs, rows, speed, strict=True):
            if row.get("failures"):
                rates.annotate("×", (x, height), ha="center", va="bottom", color="red", fontsize=12)
                lost = True
            if row["learner"] % step == 0:
                ticks.append(x)
                tick_labels.append(str(row["learner"]))
        position += len(rows) + 1  # a gap between runs
    for axes in (rates, shares):
        axes.set_xticks(ticks, tick_labels, fontsize=8)
        axes.set_xlabel("learner")
        axes.grid(axis="y", alpha=0.3)
    rates.set_ylim(bottom=0)
    rates.set_ylabel("samples/s")
    rates.set_title("throughput (dashed: the run's mean" + ("; ×: a lost learner)" if lost else ")"), fontsize=9)
    shares.set_ylabel("fraction of its time")
    shares.set_ylim(0, 1.05)
    shares.set_title("computing (solid) vs waiting for weights (hatched)", fontsize=9)
    if legend_rows:
        handles, labels = rates.get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncol=min(3, len(learners)), fontsize=8)
    return figure


def plot_learners(learners: dict[str, list[dict]], path: str | Path) -> Path:
    """learners.png: per learner, samples/s and the fractions of time computing and waiting (learners_figure)."""
    return save(learners_figure(learners), path)


def plot_runs(run_dirs: list[str], out: str | None = None) -> list[Path]:
    """`softsync plot`: test-error.png for all runs together, staleness.png, and learners.png (runs whose
    summary has per-learner records; softsync before per-learner telemetry wrote none)."""
    runs = read_runs(run_dirs)
    histograms = {label: summary["staleness"]["histogram"] for label, _, summary in runs if summary.get("staleness")}
    learners = {label: summary["learners"] for label, _, summary in runs if summary.get("learners")}
    target = Path(out or run_dirs[0])
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = [plot_test_error({label: records for label, records, _ in runs}, target / "test-error.png")]
        if histograms:
            written.append(plot_staleness(histograms, target / "staleness.png"))
        if learners:
            written.append(plot_learners(learners, target / "learners.png"))
    except OSError as error:
        raise RunDirError(f"cannot write plots to {str(target)!r}: {error.strerror or error}") from None
    return written


def series_figure(
    series: dict[str, list[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    ideal: bool = False,
) -> Figure:
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
    return figure


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
    return save(series_figure(series, xlabel, ylabel, title, logx, ideal), path)


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


# the statuses of a run that ended: the sweep's figures and report show it
FINISHED = ("completed", "diverged")

# an experiment file's [[figure]] kinds
FIGURES = {"staleness": _staleness_figure, "test-error": _test_error_figures, "final": _final_figures}


def plot_experiment(figures: list[dict], runs: list, rows: list[dict], out: Path) -> list[Path]:
    """The figures an experiment file asks for (see FIGURES), as PNGs in ``out``."""
    finished = [(run, row) for run, row in zip(runs, rows, strict=True) if row["status"] in FINISHED]
    return [path for spec in figures for path in FIGURES[spec["kind"]](spec, finished, out)]
