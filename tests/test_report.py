"""softsync report (one self-contained HTML page of runs), the per-learner figure, and the sweep's report.html."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

import softsync
from softsync.cli import main
from softsync.sweep import load_experiment, sweep

from helpers import fails_with_one_line

PNG = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source"}
FIGURES = {  # the figures a report of runs with metrics, staleness and per-learner records names
    "test error against epoch",
    "staleness histograms",
    "per learner: samples/s, and the fraction of its time computing vs waiting",
}


class Page(HTMLParser):
    """The parts of a page the tests look at; checks that every element is closed where it was opened."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []  # every start tag, in order
        self.problems: list[str] = []
        self.images: list[dict] = []  # the attributes of every <img>
        self.figures: list[dict] = []  # {"caption": text, "images": [attrs]}
        self.tables: list[tuple[str, list[list[str]]]] = []  # (the heading before it, its rows of cell texts)
        self.headings: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []  # the text of the open elements we collect (heading, cell, caption)
        self.feed(text)
        self.close()
        if self.stack:
            self.problems.append(f"never closed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attributes)
            if "figure" in self.stack:
                self.figures[-1]["images"].append(attributes)
        if tag == "a" and "href" in attributes:
            self.hrefs.append(attributes["href"])
        if tag in ("link", "script", "iframe", "object", "embed"):
            self.problems.append(f"<{tag}>: the page must stand alone, without scripts")
        if tag == "figure":
            self.figures.append({"caption": "", "images": []})
        if tag == "table":
            self.tables.append((self.headings[-1] if self.headings else "", []))
        if tag == "tr":
            self.tables[-1][1].append([])
        if tag in ("td", "th", "h1", "h2", "h3", "figcaption"):
            self.text = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        text = "".join(self.text).strip()
        if tag in ("td", "th"):
            self.tables[-1][1][-1].append(text)
        elif tag in ("h1", "h2", "h3"):
            self.headings.append(text)
        elif tag == "figcaption":
            self.figures[-1]["caption"] = text

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert not page.problems, page.problems
    assert page.tags[:3] == ["html", "head", "meta"] and text.startswith("<!DOCTYPE html>")
    for tag in ("html", "head", "body", "title"):
        assert page.tags.count(tag) == 1, tag
    return text, page


def table_after(page: Page, heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` (a run's Config has a second, folded in a <details>)."""
    return next(rows for before, rows in page.tables if before == heading)


def assert_figures_embedded(page: Page, expected: set[str]) -> None:
    """Every figure the page names has its image, a PNG in a data: URI; every image belongs to a figure."""
    assert {figure["caption"] for figure in page.figures} == expected
    for figure in page.figures:
        (image,) = figure["images"]
        assert image["alt"] == figure["caption"]
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix), image["src"][:40]
        png = base64.b64decode(image["src"][len(prefix) :], validate=True)
        assert png.startswith(PNG) and len(png) > 1000
    assert len(page.images) == len(page.figures)


SPEEDS = "1,1,0.25"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two short sim runs of 3 learners, learner 2 four times slower than the others."""
    root = tmp_path_factory.mktemp("runs")
    made = []
    for protocol in ("async", "1-softsync"):
        out = root / protocol
        softsync.train(
            dataset="synthetic",
            model="logreg",
            learners=3,
            learner_speeds=SPEEDS,
            protocol=protocol,
            epochs=2,
            quiet=True,
            out=str(out),
        )
        made.append(out)
    return made


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_the_straggler_has_a_quarter_of_the_samples_per_second_and_computes_the_most(runs):
    for run in runs:
        learners = summary_of(run)["learners"]
        assert [row["learner"] for row in learners] == [0, 1, 2]
        others = (learners[0]["samples_per_s"] + learners[1]["samples_per_s"]) / 2
        assert 0.15 < learners[2]["samples_per_s"] / others < 0.4, learners
        fractions = [row["compute_fraction"] for row in learners]
        assert fractions.index(max(fractions)) == 2, fractions


def test_a_report_of_several_runs_compares_them_and_embeds_every_figure(runs, tmp_path, capsys):
    out = tmp_path / "pages" / "report.html"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text, page = parse(out)
    assert_figures_embedded(page, FIGURES)
    comparison = table_after(page, "Comparison")
    header, rows = comparison[0], comparison[1:]
    assert len(rows) == len(runs)
    assert [row[header.index("directory")] for row in rows] == [run.name for run in runs]
    assert [row[header.index("protocol")] for row in rows] == ["async", "1-softsync"]  # the option that varies
    for row, run in zip(rows, runs, strict=True):
        summary = summary_of(run)
        assert row[header.index("status")] == "completed"
        assert float(row[header.index("test error")]) == pytest.approx(summary["test_error"], rel=1e-3)
        assert int(row[header.index("gradients")]) == summary["gradients"]
    for run in runs:  # a section per run, with its directory, summary, config and learners
        assert f"<code>{run}</code>" in text
    assert page.headings.count("Summary") == page.headings.count("Learners") == len(runs)
    assert all(href.startswith("#") for href in page.hrefs)  # links within the page only
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text


def test_a_report_of_one_run_goes_into_it_with_its_config_and_learners(runs, capsys):
    run = runs[0]
    assert main(["report", str(run)]) == 0
    out = run / "report.html"
    assert capsys.readouterr().out.strip() == str(out)
    text, page = parse(out)
    assert "Comparison" not in page.headings
    assert_figures_embedded(page, FIGURES)
    summary = dict(row for row in table_after(page, "Summary"))
    assert summary["status"] == "completed" and float(summary["test error"]) == pytest.approx(
        summary_of(run)["test_error"], rel=1e-3
    )
    for field in ("updates", "gradients", "learner failures", "staleness mean", "staleness max", "staleness p99"):
        assert field in summary, field
    changed = {row[0]: row[1] for row in table_after(page, "Config")[1:]}  # the options that differ from defaults
    assert changed["protocol"] == "async" and changed["learners"] == "3" and changed["learner-speeds"] == "1, 1, 0.25"
    assert "momentum" not in changed and "<details>" in text and "<td>momentum</td>" in text  # folded away
    learners = table_after(page, "Learners")
    assert [row[0] for row in learners[1:]] == ["0", "1", "2"]
    assert text.count('<tr class="slow">') == 1  # the straggler, highlighted


def test_every_value_is_escaped(runs, tmp_path):
    bold = tmp_path / "run <b>bold"
    shutil.copytree(runs[0], bold)
    out = tmp_path / "report.html"
    assert main(["report", str(runs[0]), str(bold), "--out", str(out)]) == 0
    text, page = parse(out)
    assert "b" not in page.tags and "<b>" not in text
    assert "run &lt;b&gt;bold" in text
    comparison = table_after(page, "Comparison")
    assert [row[1] for row in comparison[1:]] == [runs[0].name, "run <b>bold"]  # the directory names, as text


def test_plot_writes_learners_png_and_skips_it_for_older_summaries(runs, tmp_path):
    assert main(["plot", *map(str, runs), "--out", str(tmp_path / "plots")]) == 0
    for name in ("test-error.png", "staleness.png", "learners.png"):
        png = (tmp_path / "plots" / name).read_bytes()
        assert png.startswith(PNG) and len(png) > 1000, name
    older = tmp_path / "older"
    shutil.copytree(runs[0], older)
    summary = summary_of(older)
    del summary["learners"]  # softsync before per-learner telemetry
    (older / "summary.json").write_text(json.dumps(summary))
    assert main(["plot", str(older), "--out", str(tmp_path / "older-plots")]) == 0
    assert sorted(path.name for path in (tmp_path / "older-plots").iterdir()) == ["staleness.png", "test-error.png"]
    assert main(["report", str(older)]) == 0  # the report leaves the figure out too
    _, page = parse(older / "report.html")
    assert_figures_embedded(
        page, FIGURES - {"per learner: samples/s, and the fraction of its time computing vs waiting"}
    )


EXPERIMENT = """
[base]
dataset = "synthetic"
model = "logreg"
epochs = 1
batch_size = 16
learners = 2
quiet = true

[grid]
protocol = ["1-softsync", "async", "hardsync"]

[[figure]]
kind = "staleness"
"""


def test_the_sweep_writes_a_report_of_its_finished_runs(tmp_path):
    """The runs are made in this process (the sweep then skips them as finished): no train process starts. The
    third run's summary.json is damaged: its row says so, and the report leaves it out."""
    experiment, out = tmp_path / "tiny.toml", tmp_path / "out"
    experiment.write_text(EXPERIMENT)
    finished, damaged = load_experiment(experiment).runs[:2], load_experiment(experiment).runs[2]
    for run in finished:
        softsync.train(**run.options, out=str(out / "runs" / run.name))
    softsync.train(**damaged.options, out=str(out / "runs" / damaged.name))
    (out / "runs" / damaged.name / "summary.json").write_text("garbage")
    lines: list[str] = []
    rows = sweep(experiment, out, log=lines.append)
    assert [row["status"] for row in rows[:2]] == ["completed", "completed"] and rows[2]["status"].startswith("damaged")
    assert any(line == f"report {out / 'report.html'}" for line in lines)
    text, page = parse(out / "report.html")
    assert page.headings[0] == "softsync sweep tiny"
    comparison = table_after(page, "Comparison")
    assert [row[1] for row in comparison[1:]] == [run.name for run in finished]
    assert damaged.name not in text
    assert_figures_embedded(page, FIGURES)
    # written after the tables and the figures
    assert (out / "report.html").stat().st_mtime_ns >= (out / "staleness.png").stat().st_mtime_ns
    assert (out / "report.html").stat().st_mtime_ns >= (out / "results.md").stat().st_mtime_ns


def test_a_run_that_has_not_ended_an_epoch_is_reported_as_such(runs, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(runs[0] / "config.json", started)  # as a run that has not ended its first epoch (or never will)
    assert main(["report", str(started)]) == 0
    text, page = parse(started / "report.html")
    assert dict(table_after(page, "Summary"))["status"] == "not ended (no summary.json)"
    assert page.figures == [] and "<td>async</td>" in text  # its config, from config.json


def test_one_line_errors(runs, tmp_path, capsys):
    assert "not a run directory" in fails_with_one_line(["report", str(tmp_path)], capsys)
    assert "not a run directory" in fails_with_one_line(
        ["report", str(runs[0]), str(tmp_path), "--out", str(tmp_path / "r.html")], capsys
    )
    assert "--out" in fails_with_one_line(["report", *map(str, runs)], capsys)
    assert not (tmp_path / "r.html").exists()
