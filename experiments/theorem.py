"""The paper's O(1/√T) convergence checked on a convex, smooth problem (see experiments/theorem.toml).

    .venv/bin/python experiments/theorem.py experiments/theorem.toml --out runs/experiments/theorem

For every protocol, policy and T it trains under the sim (softsync.train, the Python API) a logistic
regression whose model records its weights each time the sim evaluates it (every epoch end), then
computes the exact full gradient ‖∇F(θ_e)‖² on the training set at each of those iterates. Writes
OUT/theorem.csv, OUT/theorem.md (the average against T and the fitted log-log slope) and
OUT/theorem.png.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import tomllib
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from softsync import train
from softsync.protocol import parse_protocol


class RecordingLinear(nn.Linear):
    """A linear model that keeps a copy of its weights at the first evaluation after training."""

    def __init__(self, dimensions: int) -> None:
        super().__init__(dimensions, 2)
        self.iterates: list[torch.Tensor] = []
        self.trained_since = True

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.trained_since = True
        elif self.trained_since:  # the sim evaluates the server's weights at every epoch end
            self.iterates.append(torch.cat([self.weight.detach().flatten(), self.bias.detach()]).clone())
            self.trained_since = False
        return super().forward(inputs)


def problem(samples: int, dimensions: int, seed: int = 0) -> TensorDataset:
    """A noisy linear teacher: y = 1[⟨w, x⟩ + ε > 0], x ~ N(0, I), ε ~ N(0, 0.5²)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, dimensions, generator=generator)
    teacher = torch.randn(dimensions, generator=generator)
    noise = 0.5 * torch.randn(samples, generator=generator)
    targets = ((inputs @ teacher / math.sqrt(dimensions) + noise) > 0).long()
    return TensorDataset(inputs, targets)


def full_gradient_norm(iterate: torch.Tensor, data: TensorDataset, dimensions: int) -> float:
    """‖∇F(θ)‖² of the mean cross-entropy over the whole training set, in float64."""
    theta = iterate.double().clone().requires_grad_(True)
    weight, bias = theta[: 2 * dimensions].view(2, dimensions), theta[2 * dimensions :]
    inputs, targets = data.tensors
    loss = nn.functional.cross_entropy(inputs.double() @ weight.T + bias, targets)
    (gradient,) = torch.autograd.grad(loss, theta)
    return float(gradient.pow(2).sum())


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log y against log x."""
    xs, ys = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


def plan(spec: dict) -> list[tuple[str, dict]]:
    """The runs of a theorem.toml: (variant label, softsync.train options) for each protocol, variant and T
    (α0 = lr_c/√T, times the protocol's n where the variant says so)."""
    base, theorem = spec["base"], spec["theorem"]
    per_epoch = theorem["samples"] // base["batch_size"]
    runs = []
    for protocol in theorem["protocols"]:
        parsed = parse_protocol(protocol, base["learners"])
        c = parsed.gradients_per_update(base["learners"])
        for variant in theorem["variants"][:1] if protocol == "hardsync" else theorem["variants"]:
            for epochs in theorem["epochs"]:
                lr = theorem["lr_c"] / math.sqrt(epochs * per_epoch // c) * (parsed.n if variant["times_n"] else 1)
                options = {**base, "protocol": protocol, "lr_policy": variant["lr_policy"], "lr": lr, "epochs": epochs}
                runs.append((variant["label"], options))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/experiments/theorem"))
    parser.add_argument("--replot", action="store_true", help="redraw theorem.md and theorem.png from OUT/theorem.csv")
    args = parser.parse_args()
    if args.replot:
        with open(args.out / "theorem.csv") as handle:
            numeric = ("epochs", "T", "lr", "staleness_mean", "average_grad_norm2", "final_grad_norm2")
            rows = [{k: float(v) if k in numeric else v for k, v in row.items()} for row in csv.DictReader(handle)]
        write([{**row, "T": int(row["T"]), "epochs": int(row["epochs"])} for row in rows], args.out)
        return
    spec = tomllib.loads(args.experiment.read_text())
    dimensions = spec["theorem"]["dimensions"]
    torch.set_num_threads(1)
    shutil.rmtree(args.out / "runs", ignore_errors=True)  # this script's own runs: each time from scratch
    data = problem(spec["theorem"]["samples"], dimensions)
    rows = []
    for variant, options in plan(spec):
        torch.manual_seed(0)  # the same θ0 for every run (nn.Linear draws from the global generator)
        model = RecordingLinear(dimensions)
        name = f"{options['protocol']}-{variant}-e{options['epochs']}".replace(" ", "").replace("/", "÷")
        # evaluation on the training set: F is the training objective
        summary = train(model=model, data=(data, data), out=str(args.out / "runs" / name), **options)
        # the first record is θ0, from the check softsync runs on one mini-batch before training
        iterates = model.iterates[1:]
        assert len(iterates) == options["epochs"], (len(iterates), options["epochs"])
        norms = [full_gradient_norm(iterate, data, dimensions) for iterate in iterates]
        row = {
            "protocol": options["protocol"],
            "variant": variant,
            "epochs": options["epochs"],
            "T": summary["updates"],
            "lr": options["lr"],
            "staleness_mean": summary["staleness"]["mean"],
            "average_grad_norm2": sum(norms) / len(norms),
            "final_grad_norm2": norms[-1],
            "status": summary["status"],
        }
        rows.append(row)
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    write(rows, args.out)


def write(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "theorem.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| protocol | α(τ), α0 | ⟨τ⟩ | fitted slope of the average ‖∇F‖² against T | T: average ‖∇F‖² |",
        "|---|---|---|---|---|",
    ]
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((row["protocol"], row["variant"]), []).append(row)
    for (protocol, label), points in series.items():
        finite = [(p["T"], p["average_grad_norm2"]) for p in points if math.isfinite(p["average_grad_norm2"])]
        fitted = slope(finite) if len(finite) >= 2 else math.nan
        staleness = sum(p["staleness_mean"] for p in points) / len(points)
        values = ", ".join(f"{t}: {v:.3g}" for t, v in finite)
        lines.append(f"| {protocol} | {label} | {staleness:.2f} | {fitted:.2f} | {values} |")
        protocols = list(dict.fromkeys(row["protocol"] for row in rows))
        variants = list(dict.fromkeys(row["variant"] for row in rows))
        axes.plot(
            [t for t, _ in finite],
            [v for _, v in finite],
            ("-", "-.", "--", ":")[variants.index(label) % 4],  # a style per variant, a colour per protocol
            color=f"C{protocols.index(protocol)}",
            marker="o",
            markersize=3,
            label=f"{protocol}, {label} (slope {fitted:.2f})",
        )
    ts = sorted({row["T"] for row in rows})
    anchor = max(row["average_grad_norm2"] for row in rows if row["T"] == ts[0])
    axes.plot(ts, [anchor * (t / ts[0]) ** -0.5 for t in ts], ":", color="black", label="slope −1/2")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("updates T")
    axes.set_ylabel("average ‖∇F(θ)‖² over the epoch-end iterates")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "theorem.png", dpi=120)
    (out / "theorem.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
