"""Staleness-dependent learning rates α(τ) and staleness statistics.

A policy returns the factor α(τ)/α0 applied to one gradient of staleness τ = i − j, where i
is the server's clock when the gradient is applied and j the clock of the weights it was
computed on. New policies register themselves in POLICIES; the server only looks them up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .errors import ConfigError

# factor(τ, n) -> α(τ) / α0
Policy = Callable[[int, int], float]

POLICIES: dict[str, Policy] = {}


def register_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator that adds a policy to the registry under ``name``."""

    def add(policy: Policy) -> Policy:
        POLICIES[name] = policy
        return policy

    return add


@register_policy("staleness")
def staleness_policy(tau: int, n: int) -> float:
    """The paper's rule: α0/τ for τ > 0, α0 for a fresh gradient."""
    return 1.0 / tau if tau > 0 else 1.0


@register_policy("constant")
def constant_policy(tau: int, n: int) -> float:
    """Conventional asynchronous SGD: α0 whatever the staleness."""
    return 1.0


@register_policy("mean")
def mean_policy(tau: int, n: int) -> float:
    """α0/n: divide by the expected staleness ⟨τ⟩ ≈ n of n-softsync."""
    return 1.0 / n


def get_policy(name: str) -> Policy:
    """Look a policy up by name; ConfigError names the allowed ones."""
    if name not in POLICIES:
        raise ConfigError(f"unknown lr policy {name!r}: use one of {', '.join(sorted(POLICIES))}")
    return POLICIES[name]


class StalenessStats:
    """Histogram of the staleness of every applied gradient."""

    def __init__(self, histogram: dict[int, int] | None = None) -> None:
        self.histogram: dict[int, int] = dict(histogram or {})

    def add(self, tau: int) -> None:
        self.histogram[tau] = self.histogram.get(tau, 0) + 1

    @property
    def count(self) -> int:
        return sum(self.histogram.values())

    @property
    def mean(self) -> float:
        total = self.count
        return sum(t * k for t, k in self.histogram.items()) / total if total else 0.0

    @property
    def max(self) -> int:
        return max(self.histogram, default=0)

    def quantile(self, q: float) -> int:
        """Smallest τ with P(staleness <= τ) >= q."""
        total = self.count
        if not total:
            return 0
        need = math.ceil(q * total)
        seen = 0
        for tau in sorted(self.histogram):
            seen += self.histogram[tau]
            if seen >= need:
                return tau
        return self.max

    def fraction_above(self, threshold: float) -> float:
        """P(τ > threshold) over the applied gradients."""
        total = self.count
        return sum(k for t, k in self.histogram.items() if t > threshold) / total if total else 0.0

    def summary(self) -> dict:
        """The `staleness` block of summary.json."""
        return {
            "mean": self.mean,
            "max": self.max,
            "p99": self.quantile(0.99),
            "histogram": {str(t): self.histogram[t] for t in sorted(self.histogram)},
        }
