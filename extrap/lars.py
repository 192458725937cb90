"""LARS as apex's LARC (the authors' implementation), per worker: the update's rate is bounded
per tensor by a trust ratio, and with ``lars_lookahead`` the look-ahead is bounded the same way."""

from __future__ import annotations

import torch
from torch import Tensor

from .engines.comm import Communicator, scale_per_worker_, worker_norms

__all__ = ["trust_factors", "adapted", "larc_", "trust_lookahead", "lars_update"]


def trust_factors(group: dict, layout: Communicator, xs: list[Tensor], ds: list[Tensor], rate: float) -> Tensor:
    """apex LARC's per-tensor factor min(τ‖x‖/(‖d‖ + λ‖x‖ + ε)/rate, 1) for each worker held,
    [len(xs), W]; 1 where ‖x‖ or ‖d‖ is 0. The step rate·factor·d is then at most τ‖x‖ long."""
    pn, dn, wd = worker_norms(layout, xs), worker_norms(layout, ds), group["weight_decay"]
    ratio = group["trust"] * pn / (dn + wd * pn + 1e-8) / rate  # apex's ε
    return torch.where((pn > 0) & (dn > 0), ratio.clamp(max=1.0), torch.ones_like(ratio))


def adapted(layout: Communicator, params: list[Tensor]) -> list[int]:
    """The positions of the tensors LARS adapts: ≥ 2 dimensions per worker (weights, not biases)."""
    return [i for i, p in enumerate(params) if layout.per_worker(p).dim() >= 3]


def larc_(group: dict, layout: Communicator) -> None:
    """LARS as apex's LARC, on ``.grad`` before the base step: (g + λx)·min(τ‖x‖/(‖g‖ + λ‖x‖ + ε)/η, 1)
    per worker for tensors of ≥ 2 dimensions (factor 1 where ‖x‖ or ‖g‖ is 0), g + λx for the rest."""
    ps, wd = [p for p in group["params"] if p.grad is not None], group["weight_decay"]
    adapt = [ps[i] for i in adapted(layout, ps)]
    factor = trust_factors(group, layout, adapt, [p.grad for p in adapt], group["lr"])
    if wd != 0 and ps:
        torch._foreach_add_([p.grad for p in ps], ps, alpha=wd)
    scale_per_worker_(layout, [p.grad for p in adapt], factor)


def trust_lookahead(group: dict, layout: Communicator, points: list[Tensor], ds: list[Tensor],
                    gamma: float) -> list[Tensor]:
    """``lars_lookahead``: each adapted tensor's look-ahead direction times LARC's trust ratio at
    x_t with rate γ, so that ‖γ·d‖ ≤ τ‖x_t‖ per tensor and worker, as the update is bounded."""
    ds, adapt = list(ds), adapted(layout, points)
    scaled = [ds[i].expand_as(points[i]).clone() for i in adapt]  # d may be the kept local gradient itself
    scale_per_worker_(layout, scaled, trust_factors(group, layout, [points[i] for i in adapt], scaled, gamma))
    for i, d in zip(adapt, scaled):
        ds[i] = d
    return ds


def lars_update(optimizer, layout: Communicator) -> None:
    """LARS on ``.grad`` of the groups that ask for it (folding in weight decay, so the base step
    must not add it), then the optimizer's torch step, without torch's hook wrapper (the extrap
    ``step()`` runs the hooks once)."""
    lars = [(g, g["weight_decay"]) for g in optimizer.param_groups if g.get("lars")]
    for group, _ in lars:
        larc_(group, layout)
        group["weight_decay"] = 0.0
    try:
        base = type(optimizer).base_step
        (base.__wrapped__ if getattr(base, "hooked", False) else base)(optimizer)
    finally:
        for group, wd in lars:
            group["weight_decay"] = wd
