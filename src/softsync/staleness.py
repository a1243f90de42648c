"""Staleness-dependent learning rates α(τ) and staleness statistics.

A policy returns the factor α(τ)/α0 applied to one gradient of staleness τ = i − j, where i
is the server's clock when the gradient is applied and j the clock of the weights it was
computed on, or None: the gradient is dropped (not applied; its mini-batch is handed out again).
A policy is named with its parameters, ``name:key=value,...`` (``poly:a=0.5``); each parameter has
a default. New policies register themselves in POLICIES; the server only looks them up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigError

# factor(τ, n, **parameters) -> α(τ) / α0, or None to drop the gradient; n is the protocol's n
PolicyFunction = Callable[..., float | None]
# a policy with its parameters bound: factor(τ) -> α(τ) / α0 or None
Policy = Callable[[int], float | None]


@dataclass(frozen=True)
class RegisteredPolicy:
    function: PolicyFunction
    defaults: dict[str, float | None]  # None: the default depends on n (the function decides)


POLICIES: dict[str, RegisteredPolicy] = {}


def register_policy(name: str, **defaults: float | None) -> Callable[[PolicyFunction], PolicyFunction]:
    """Decorator that adds ``function(tau, n, **parameters)`` to the registry under ``name``.

    ``defaults`` names every parameter the policy takes and its default value."""

    def add(function: PolicyFunction) -> PolicyFunction:
        POLICIES[name] = RegisteredPolicy(function, dict(defaults))
        return function

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


@register_policy("poly", a=0.5)
def poly_policy(tau: int, n: int, a: float) -> float:
    """α0/(1+τ)^a: a = 1 is α0/(τ+1), a = 0 the constant rate."""
    return (1.0 + tau) ** -a


@register_policy("exponential", beta=0.1)
def exponential_policy(tau: int, n: int, beta: float) -> float:
    """α0·e^(−βτ)."""
    return math.exp(-beta * tau)


@register_policy("adaptive", k=None)
def adaptive_policy(tau: int, n: int, k: float | None) -> float:
    """α0 while τ ≤ k, then α0·k/τ (k defaults to the protocol's n): the delay-adaptive step sizes of
    Mishchenko et al. and Koloskova et al. (2022), which leave the expected delay alone."""
    k = n if k is None else k
    return 1.0 if tau <= k else k / tau


@register_policy("drop", r=None)
def drop_policy(tau: int, n: int, r: float | None) -> float | None:
    """α0 while τ < r (r defaults to 2n), otherwise drop the gradient: its mini-batch is computed again."""
    r = 2 * n if r is None else r
    return 1.0 if tau < r else None


# the ranges that keep every factor finite and positive (and drop from dropping every gradient)
PARAMETER_RANGES: dict[str, tuple[float, float]] = {
    "a": (0.0, 100.0),
    "beta": (0.0, 100.0),
    "k": (1.0, 1e9),
    "r": (1.0, 1e9),
}


def parse_policy(text: str) -> tuple[str, dict[str, float]]:
    """``name:key=value,...`` -> (name, the parameters given); ConfigError (one line) for anything else."""
    name, colon, rest = str(text).strip().partition(":")
    if name not in POLICIES:
        raise ConfigError(f"--lr-policy {text!r}: unknown policy {name!r}: use {', '.join(sorted(POLICIES))}")
    defaults = POLICIES[name].defaults
    parameters: dict[str, float] = {}
    for item in rest.split(",") if colon else ():
        key, equals, value = (part.strip() for part in item.partition("="))
        if key in parameters:
            raise ConfigError(f"--lr-policy {text!r}: {key} is given twice")
        if key not in defaults or not equals:
            allowed = ", ".join(f"{k}=..." for k in defaults) or "none"
            raise ConfigError(
                f"--lr-policy {text!r}: {item.strip()!r} is not a parameter of {name} (its parameters: {allowed})"
            )
        low, high = PARAMETER_RANGES[key]
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not low <= number <= high:  # also refuses nan
            raise ConfigError(f"--lr-policy {text!r}: {key} = {value!r} must be a number in [{low:g}, {high:g}]")
        parameters[key] = number
    return name, parameters


def get_policy(text: str, n: int) -> Policy:
    """The policy ``text`` names (``poly:a=0.5``) for a protocol of parameter ``n``, as factor(τ)."""
    name, parameters = parse_policy(text)
    registered = POLICIES[name]
    bound = {**registered.defaults, **parameters}
    function = registered.function

    def factor(tau: int) -> float | None:
        return function(tau, n, **bound)

    return factor


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
