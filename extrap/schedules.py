"""Learning-rate scaling, warmup and decay (Goyal et al. 2017).

A ``Schedule`` is a pure function of the iteration: ``lr(t)`` is the scaled large-batch rate.
``apply(optimizer, t)`` writes it into the optimizer's groups; being a function of ``t`` alone it
needs no state to resume. γ has one definition, the optimizers' (``ExtrapolatedSGD.gamma``):
gamma_factor · η_t · b/B, from the rate written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["scaled_lr", "Schedule", "KINDS", "SCALINGS"]

KINDS = ("constant", "step", "inverse-sqrt")
SCALINGS = ("linear", "sqrt", "none")


def scaled_lr(base_lr: float, global_batch: int, base_batch: int, rule: str = "linear") -> tuple[float, float]:
    """η = η_base · s with s = B/b_base (linear), √(B/b_base) (sqrt) or 1; returns (η, s)."""
    if rule not in SCALINGS:
        raise ValueError(f"rule: expected one of {', '.join(SCALINGS)}, got {rule!r}")
    if global_batch <= 0 or base_batch <= 0:
        raise ValueError(f"global_batch/base_batch: expected positive sizes, got {global_batch}/{base_batch}")
    ratio = global_batch / base_batch
    scale = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]
    return base_lr * scale, scale


@dataclass
class Schedule:
    """η_t for iteration t (0-based).

    Attributes:
        base_lr: η_base, the small-batch rate (for ``inverse-sqrt``: the peak rate at scale 1).
        scale: the learning-rate scaling factor s (peak η = η_base·s).
        total_steps: the run's length, for decays placed at fractions of training.
        kind: ``constant`` (Figures 1–2), ``step`` (×``decay`` at each of ``milestones``,
            fractions of ``total_steps``: image classification), ``inverse-sqrt`` (Transformer).
        warmup_steps: linear per-iteration warmup from η_base to η_base·s (``step``/``constant``),
            or the inverse-sqrt warmup length.
    """

    base_lr: float
    scale: float = 1.0
    total_steps: int = 1
    kind: str = "step"
    warmup_steps: int = 0
    milestones: tuple[float, ...] = field(default=(0.5, 0.75))
    decay: float = 0.1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("base_lr", "scale", "decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps: expected >= 1, got {self.total_steps!r}")
        if self.warmup_steps < 0 or (self.kind == "inverse-sqrt" and self.warmup_steps < 1):
            raise ValueError(f"warmup_steps: expected >= 0 (>= 1 for inverse-sqrt), got {self.warmup_steps!r}")
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones: expected fractions in (0, 1], got {self.milestones!r}")

    def decay_factor(self, t: int) -> float:
        """decay^(milestones passed) for ``step``; 1 otherwise."""
        if self.kind != "step":
            return 1.0
        passed = sum(t >= round(m * self.total_steps) for m in self.milestones)
        return self.decay**passed

    def lr(self, t: int) -> float:
        peak = self.base_lr * self.scale
        if self.kind == "inverse-sqrt":
            n, w = t + 1, self.warmup_steps
            return peak * min(n / w, math.sqrt(w / n))
        if t < self.warmup_steps:
            return self.base_lr + (peak - self.base_lr) * t / self.warmup_steps
        return peak * self.decay_factor(t)

    def apply(self, optimizer, t: int) -> float:
        """Set every group's ``lr`` for iteration t; returns it."""
        lr = self.lr(t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
