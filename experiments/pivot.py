"""Print a markdown table of one column of a sweep's results.csv, rows × columns of two grid keys.

    python experiments/pivot.py runs/experiments/mulambda/results.csv \\
        --rows learners --cols batch_size --value test_error --where protocol=async
"""

from __future__ import annotations

import argparse
import csv


def number_or_text(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--rows", required=True)
    parser.add_argument("--cols", required=True)
    parser.add_argument("--value", default="test_error")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with open(args.results) as handle:
        rows = list(csv.DictReader(handle))
    for condition in args.where:
        key, value = condition.split("=", 1)
        rows = [row for row in rows if row[key] == value]
    row_keys = sorted({row[args.rows] for row in rows}, key=number_or_text)
    col_keys = sorted({row[args.cols] for row in rows}, key=number_or_text)
    cells = {(row[args.rows], row[args.cols]): row[args.value] or row["status"] for row in rows}
    print(f"| {args.rows} \\ {args.cols} | " + " | ".join(col_keys) + " |")
    print("|---|" + "---|" * len(col_keys))
    for key in row_keys:
        print(f"| {key} | " + " | ".join(cells.get((key, col), "") for col in col_keys) + " |")


if __name__ == "__main__":
    main()
