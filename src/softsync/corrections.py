"""Corrections of a stale gradient, applied on the server before its α(τ) (``--correction``).

Each takes the gradient g, computed on θ_{t−τ}, and the gap θ_t − θ_{t−τ} to the weights it is
applied to (None for a fresh gradient, τ = 0, which no correction changes), and corrects g in place:

    dc-asgd           g + λ · g ⊙ g ⊙ (θ_t − θ_{t−τ})                  Zheng et al. 2017 (arXiv 1609.08326)
    dc-asgd-adaptive  the same with λ_t = λ0 / √(MeanSquare_t + ε), element-wise,
                      MeanSquare_t = 0.95 · MeanSquare_{t−1} + 0.05 · g²  (the paper's DC-ASGD-a)
    gap-aware         g ⊘ (1 + |θ_t − θ_{t−τ}| / C), C = α · (√v̂ + 1e-8) / (1 − m): about the farthest a
                      parameter moves in one step, v̂ the running mean of g² (β = 0.999, bias-corrected, as
                      Adam's), α the learning rate, m the momentum of the update (with momentum a step
                      travels up to 1/(1 − m) times as far)          Barkai et al. 2020 (arXiv 1909.10802)

The running statistics are updated by every gradient, fresh or stale, and are part of the server's state.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

CORRECTIONS = ("none", "dc-asgd", "dc-asgd-adaptive", "gap-aware")


class Correction:
    """``none``: the gradient as it came."""

    needs_versions = False  # whether the server must keep θ_{t−τ} of the gradients in flight

    def correct(self, gradient: torch.Tensor, gap: torch.Tensor | None, lr: float, momentum: float) -> None:
        """Correct ``gradient`` in place; ``gap`` (θ_t − θ_{t−τ}, None when τ = 0) may be overwritten."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DelayCompensation(Correction):
    """DC-ASGD: the first-order Taylor term of ∇F(θ_t) around θ_{t−τ}, its Hessian approximated by λ·g⊙g."""

    needs_versions = True
    DECAY, EPSILON = 0.95, 1e-7

    def __init__(self, dc_lambda: float, adaptive: bool) -> None:
        self.dc_lambda = dc_lambda
        self.adaptive = adaptive
        self.mean_square: torch.Tensor | None = None

    def correct(self, gradient: torch.Tensor, gap: torch.Tensor | None, lr: float, momentum: float) -> None:
        if self.adaptive:
            if self.mean_square is None:
                self.mean_square = torch.zeros_like(gradient)
            self.mean_square.mul_(self.DECAY).addcmul_(gradient, gradient, value=1 - self.DECAY)
        if gap is None or self.dc_lambda == 0.0:  # λ = 0 must change nothing, even where g⊙g overflows
            return
        if self.adaptive:
            assert self.mean_square is not None
            # g / √MeanSquare first: it is bounded (by 1/√0.05), so the product cannot overflow where g⊙g would
            term = gradient.div(self.mean_square.add(self.EPSILON).sqrt_()).mul_(gradient).mul_(gap)
        else:
            term = gap.mul_(gradient).mul_(gradient)
        gradient.add_(term, alpha=self.dc_lambda)

    def state_dict(self) -> dict:
        return {"mean_square": None if self.mean_square is None else self.mean_square.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.mean_square = state["mean_square"]


class GapAware(Correction):
    """Gap-Aware: penalize each coordinate by how many steps' worth it has moved since the gradient's weights."""

    needs_versions = True
    BETA, EPSILON = 0.999, 1e-8

    def __init__(self) -> None:
        self.mean_square: torch.Tensor | None = None  # running mean of g², not yet bias-corrected
        self.count = 0

    def correct(self, gradient: torch.Tensor, gap: torch.Tensor | None, lr: float, momentum: float) -> None:
        if self.mean_square is None:
            self.mean_square = torch.zeros_like(gradient)
        self.count += 1
        self.mean_square.mul_(self.BETA).addcmul_(gradient, gradient, value=1 - self.BETA)
        if gap is None:
            return
        # C = α · (√v̂ + ε) / (1 − m), v̂ = v / (1 − β^count); the gap over C, plus 1, divides g
        reach = self.mean_square.div(1.0 - self.BETA**self.count).sqrt_().add_(self.EPSILON)
        reach.mul_(lr / (1.0 - momentum))
        gradient.div_(gap.abs_().div_(reach).add_(1.0))

    def state_dict(self) -> dict:
        mean_square = None if self.mean_square is None else self.mean_square.clone()
        return {"mean_square": mean_square, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean_square, self.count = state["mean_square"], state["count"]


def make_correction(name: str, dc_lambda: float = 0.04) -> Correction:
    """The correction ``--correction`` names; ConfigError (one line) for an unknown name."""
    if name == "none":
        return Correction()
    if name in ("dc-asgd", "dc-asgd-adaptive"):
        return DelayCompensation(dc_lambda, adaptive=name == "dc-asgd-adaptive")
    if name == "gap-aware":
        return GapAware()
    raise ConfigError(f"--correction {name!r} is unknown: use {', '.join(CORRECTIONS)}")
