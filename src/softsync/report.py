"""`softsync report`: one self-contained HTML page about one or more runs.

The page holds, in order: for several runs a comparison table (one row per run); the figures (test error
against epoch for all runs together, the staleness histograms, the per-learner figure), embedded as
``data:image/png;base64`` images; then a section per run: its summary, its config (the options that differ
from the defaults, the others folded in a <details>) and its per-learner table. No external asset, no
script: the file can be mailed or archived on its own. Every value from a run directory is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from .config import FIELDS
from .errors import ConfigError, RunDirError
from .plots import error_curves, error_figure, learners_figure, png_bytes, read_runs, staleness_figure
from .rundir import CONFIG, atomic_write_bytes

REPORT = "report.html"
NUMBER = ' class="number"'
SLOW = 0.5  # a learner below this fraction of its run's mean samples/s is marked as a straggler

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.slow td { background: #fde8e8; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-weight: bold; margin-bottom: 0.3em; }
section.run { border-top: 2px solid #888; margin-top: 2em; }
code { background: #f6f6f6; padding: 0 0.2em; }
details { margin-bottom: 1em; }
"""


@dataclass
class Run:
    """What the page shows of one run directory."""

    path: str
    label: str
    records: list[dict]  # metrics.jsonl
    summary: dict  # summary.json; {} while the run has not ended
    config: dict  # the summary's config, else config.json's


def read(run_dirs: list[str]) -> list[Run]:
    """The runs of ``run_dirs``; a path that is not a run directory is a RunDirError (one line, exit 2)."""
    runs = []
    for path, (label, records, summary) in zip(run_dirs, read_runs(run_dirs), strict=True):
        config = summary.get("config")
        if not isinstance(config, dict):
            try:
                config = json.loads((Path(path) / CONFIG).read_text())
            except (OSError, ValueError):
                config = {}
        runs.append(Run(str(path), label, records, summary, config if isinstance(config, dict) else {}))
    return runs


def shown(value) -> str:
    """A value as the page shows it (not yet escaped)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(shown(item) for item in value) or "—"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def cell(value, header: bool = False) -> str:
    if header:
        return f"<th>{escape(shown(value))}</th>"
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return f"<td{NUMBER if numeric else ''}>{escape(shown(value))}</td>"


def table(headers: list[str] | None, rows: list[list], row_classes: list[str] | None = None) -> str:
    """A table of ``rows`` (escaped) under ``headers``; without headers each row's first cell heads it.
    ``row_classes`` gives a row a CSS class (e.g. "slow")."""
    lines = ["<table>"]
    if headers:
        lines.append("<tr>" + "".join(cell(header, header=True) for header in headers) + "</tr>")
    for index, row in enumerate(rows):
        kind = row_classes[index] if row_classes else ""
        start = f'<tr class="{escape(kind)}">' if kind else "<tr>"
        first = cell(row[0], header=headers is None)
        lines.append(start + first + "".join(cell(value) for value in row[1:]) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def figure(title: str, png: bytes) -> str:
    """A titled figure, its PNG embedded as a data: URI."""
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<figure>\n<figcaption>{escape(title)}</figcaption>\n<img src="{source}" alt="{escape(title)}">\n</figure>'


def _epochs(run: Run) -> int:
    return run.records[-1]["epoch"] if run.records else 0


def _staleness(run: Run, key: str):
    staleness = run.summary.get("staleness")
    return staleness.get(key) if isinstance(staleness, dict) else None


def _learners(run: Run) -> list[dict]:
    learners = run.summary.get("learners")
    return learners if isinstance(learners, list) else []


def _status(run: Run) -> str:
    return str(run.summary.get("status", "not ended (no summary.json)"))


def _per_second(run: Run) -> str:
    return "samples/s (per virtual second)" if run.config.get("engine") == "sim" else "samples/s"


def summary_rows(run: Run) -> list[list]:
    """(what, value) rows of a run's summary."""
    summary = run.summary
    error, loss = summary.get("test_error"), summary.get("test_loss")
    rows: list[list] = [["status", _status(run)]]
    rows.append(["test error", error] if error is not None else ["test loss", loss])
    rows += [
        ["epochs", _epochs(run)],
        ["updates", summary.get("updates")],
        ["gradients", summary.get("gradients")],
        ["rejected gradients", summary.get("rejected_gradients")],
        ["dropped gradients", summary.get("dropped_gradients")],
        ["copies of θ kept (--correction)", summary.get("weight_versions")],
        ["most pushes ahead (--ssp)", summary.get("pushes_ahead_max")],
        ["samples", summary.get("samples")],
        [_per_second(run), summary.get("samples_per_s")],
        ["staleness mean", _staleness(run, "mean")],
        ["staleness max", _staleness(run, "max")],
        ["staleness p99", _staleness(run, "p99")],
        ["learner failures", summary.get("learner_failures")],
        ["wall time (s)", summary.get("wall_s")],
    ]
    if "virtual_s" in summary:
        rows.append(["virtual time (s)", summary["virtual_s"]])
    return rows


def _default(name: str):
    default = FIELDS[name].default
    return list(default) if isinstance(default, tuple) else default


def config_section(run: Run) -> str:
    """The options that differ from the defaults in a table; the others folded in a <details>."""
    changed, same = [], []
    for name, value in run.config.items():
        if name in FIELDS and value == _default(name):
            same.append([name.replace("_", "-"), value])
        else:  # an option of another softsync version has no default here
            changed.append([name.replace("_", "-"), value, _default(name) if name in FIELDS else None])
    parts = ["<h3>Config</h3>"]
    if changed:
        parts.append(table(["option", "value", "default"], changed))
    else:
        parts.append("<p>Every option has its default value.</p>")
    if same:
        parts.append(f"<details>\n<summary>{len(same)} options at their defaults</summary>")
        parts.append(table(["option", "value"], same))
        parts.append("</details>")
    return "\n".join(parts)


LEARNER_HEADERS = [
    "learner",
    "gradients",
    "samples/s",
    "of the mean",
    "staleness mean",
    "staleness max",
    "computing",
    "waiting",
    "rejected",
    "dropped",
    "failures",
]


def learners_section(run: Run) -> str:
    """A row per learner; one far slower than its run's mean (a straggler) is highlighted."""
    learners = _learners(run)
    if not learners:
        why = "the run has not ended" if not run.summary else "a run of softsync before per-learner telemetry"
        return f"<h3>Learners</h3>\n<p>No per-learner records ({why}).</p>"
    rates = [row.get("samples_per_s") or 0.0 for row in learners]
    mean = sum(rates) / len(rates)
    rows, classes = [], []
    for row, rate in zip(learners, rates, strict=True):
        relative = rate / mean if mean > 0 else None
        rows.append(
            [
                row.get("learner"),
                row.get("gradients"),
                rate,
                None if relative is None else f"{relative:.2f}×",
                row.get("staleness_mean"),
                row.get("staleness_max"),
                _percent(row.get("compute_fraction")),
                _percent(row.get("wait_fraction")),
                row.get("rejected"),
                row.get("dropped"),
                row.get("failures"),
            ]
        )
        classes.append("slow" if relative is not None and relative < SLOW else "")
    note = f"<p>Highlighted: below {SLOW:g}× the run's mean samples/s.</p>" if "slow" in classes else ""
    return "<h3>Learners</h3>\n" + table(LEARNER_HEADERS, rows, classes) + note


def _percent(fraction) -> str | None:
    return None if fraction is None else f"{100 * fraction:.1f}%"


def run_section(index: int, run: Run) -> str:
    return "\n".join(
        [
            f'<section class="run" id="run-{index}">',
            f"<h2>{escape(run.label)}</h2>",
            f"<p>Run directory: <code>{escape(run.path)}</code></p>",
            "<h3>Summary</h3>",
            table(None, summary_rows(run)),
            config_section(run),
            learners_section(run),
            "</section>",
        ]
    )


COMPARED = [
    "status",
    "test error",
    "test loss",
    "epochs",
    "updates",
    "gradients",
    "samples/s",
    "staleness mean",
    "staleness max",
    "staleness p99",
    "learner failures",
    "wall time (s)",
]


def comparison(runs: list[Run]) -> str:
    """One row per run: the options that differ between the runs (but the directory), then the results."""
    names = [name for run in runs for name in run.config if name != "out"]
    varying = [
        name
        for name in dict.fromkeys(names)
        if len({json.dumps(run.config.get(name), sort_keys=True) for run in runs}) > 1
    ]
    headers = ["run", "directory", *[name.replace("_", "-") for name in varying], *COMPARED]
    rows = []
    for run in runs:
        summary = run.summary
        rows.append(
            [
                run.label,
                Path(run.path).name,
                *[run.config.get(name) for name in varying],
                _status(run),
                summary.get("test_error"),
                summary.get("test_loss"),
                _epochs(run),
                summary.get("updates"),
                summary.get("gradients"),
                summary.get("samples_per_s"),
                _staleness(run, "mean"),
                _staleness(run, "max"),
                _staleness(run, "p99"),
                summary.get("learner_failures"),
                summary.get("wall_s"),
            ]
        )
    note = "<p>samples/s: per virtual second under the sim engine, per second of training under dist.</p>"
    return "<h2>Comparison</h2>\n" + table(headers, rows) + "\n" + note


def figures(runs: list[Run]) -> list[str]:
    """The embedded figures: test error (or loss) against epoch, staleness histograms, learners."""
    shown_figures = []
    curves = {run.label: run.records for run in runs if run.records}
    if curves:
        _, name, _ = error_curves(curves)
        shown_figures.append(figure(f"{name} against epoch", png_bytes(error_figure(curves))))
    histograms = {
        run.label: _staleness(run, "histogram") for run in runs if isinstance(_staleness(run, "histogram"), dict)
    }
    if histograms:
        shown_figures.append(figure("staleness histograms", png_bytes(staleness_figure(histograms))))
    learners = {run.label: _learners(run) for run in runs if _learners(run)}
    if learners:
        title = "per learner: samples/s, and the fraction of its time computing vs waiting"
        shown_figures.append(figure(title, png_bytes(learners_figure(learners))))
    return shown_figures


def render(runs: list[Run], title: str = "softsync report") -> str:
    """The page, as text."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if not runs:
        parts.append("<p>No finished run.</p>")
    else:
        listed = ", ".join(f'<a href="#run-{index}">{escape(run.label)}</a>' for index, run in enumerate(runs))
        parts.append(f"<p>{len(runs)} run{'s' if len(runs) > 1 else ''}: {listed}</p>")
    if len(runs) > 1:
        parts.append(comparison(runs))
    drawn = figures(runs)
    if drawn:
        parts += ["<h2>Figures</h2>", *drawn]
    parts += [run_section(index, run) for index, run in enumerate(runs)]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(run_dirs: list[str], out: str | Path | None = None, title: str = "softsync report") -> Path:
    """Write the report of ``run_dirs`` to ``out`` (default, for one run: RUN_DIR/report.html); return its path."""
    if out is None:
        if len(run_dirs) != 1:
            raise ConfigError("a report of several runs needs --out FILE.html")
        out = Path(run_dirs[0]) / REPORT
    page = render(read(run_dirs), title).encode()
    target = Path(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, lambda handle: handle.write(page))
    except OSError as error:
        raise RunDirError(f"cannot write the report to {str(target)!r}: {error.strerror or error}") from None
    return target
