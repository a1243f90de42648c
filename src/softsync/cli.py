"""The `softsync` command: train, sweep, plot, report, status.

Every user error (bad flag, bad config value, missing data, unusable run directory) ends
with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from .config import FIELDS, coerce, load_toml, whole_number
from .errors import ConfigError, SoftsyncError, report


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a ConfigError (one line, exit 2), not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read options from a TOML file whose keys are these flag names; flags override it",
    )
    for name, spec in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = spec.default
        if isinstance(default, bool):
            parser.add_argument(
                flag, dest=name, action="store_const", const=True, default=None, help=spec.metadata["help"]
            )
        else:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            text = spec.metadata["help"] + (f" (default: {shown})" if shown not in (None, "") else "")
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="softsync",
        description="Staleness-aware asynchronous SGD with a parameter server (hardsync, n-softsync, async).",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    train = commands.add_parser("train", help="train one model")
    _add_train_flags(train)
    sweep = commands.add_parser("sweep", help="run an experiment grid from a TOML file")
    sweep.add_argument("experiment", metavar="EXPERIMENT.toml")
    sweep.add_argument(
        "--out",
        default=None,
        help="where the runs, results.csv, results.md, figures and report.html go (default: runs/sweep-<experiment>)",
    )
    sweep.add_argument(
        "--data-dir",
        default=None,
        metavar="D",
        help="where the dataset is, for every run (overrides the experiment's data_dir)",
    )
    sweep.add_argument(
        "--jobs",
        default="1",
        metavar="J",
        help="sim runs to run at once, one core each (dist runs always run alone; default: 1)",
    )
    status = commands.add_parser("status", help="what a run is doing (running, finished or failed), from any shell")
    status.add_argument("run", metavar="RUN_DIR")
    plot = commands.add_parser("plot", help="plot test error, staleness and per-learner figures of run directories")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", default=None, help="where to write the PNGs (default: the first run directory)")
    report = commands.add_parser("report", help="one self-contained HTML page about run directories")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    report.add_argument(
        "--out",
        default=None,
        metavar="FILE.html",
        help="the page to write (default, for one run: RUN_DIR/report.html; required for several)",
    )
    return parser


def train_options(args: argparse.Namespace) -> dict:
    """Options from --config, overridden by the flags given on the command line."""
    options = load_toml(args.config) if args.config else {}
    for name in FIELDS:
        value = getattr(args, name)
        if value is not None:
            options[name] = coerce(name, value)
    return options


def run_train(args: argparse.Namespace) -> int:
    from .train import train

    summary = train(**train_options(args))
    if summary is None:  # a learner rank under torchrun: rank 0 reports
        return 0
    out = summary["config"]["out"]
    error, loss = summary["test_error"], summary["test_loss"]
    if error is not None:
        shown = f"test error {error:.4f}"
    else:  # a model that does not classify (or a diverged run): its test loss says how it did
        shown = "test loss " + ("n/a" if loss is None else f"{loss:.4g}")
    print(
        f"{summary['status']}: {shown} after {summary['updates']} updates "
        f"({summary['gradients']} gradients, mean staleness {summary['staleness']['mean']:.2f}); run in {out}"
    )
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep

    try:
        jobs = whole_number(args.jobs)
    except ValueError:
        raise ConfigError(f"--jobs {args.jobs!r}: expected a whole number") from None
    sweep(args.experiment, args.out, jobs, args.data_dir)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from .plots import plot_runs

    for path in plot_runs(args.runs, args.out):
        print(path)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.runs, args.out))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from .status import describe

    print(describe(args.run))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `softsync` command; a Ctrl-C at any moment ends it with one line and exit 130."""
    try:
        return run_command(argv)
    except KeyboardInterrupt as interrupt:
        return report(interrupt)


def run_command(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)  # --help exits here, outside the SystemExit below
    except ConfigError as error:
        return report(error)
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "plot":
            return run_plot(args)
        if args.command == "report":
            return run_report(args)
        if args.command == "status":
            return run_status(args)
        return run_sweep(args)
    except SoftsyncError as error:
        return report(error)
    except SystemExit as stop:  # SIGTERM or SIGHUP (processes.ended_by_signals)
        return report(stop)


if __name__ == "__main__":
    sys.exit(main())
