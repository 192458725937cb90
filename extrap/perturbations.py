"""The paper's unified framework: each member perturbs worker k's model to x̃ = x_t − γ·d before
its gradient is taken, and differs from the others only in how d is formed. ``REGISTRY`` maps a
member's name to that rule; the optimizers (``extrap.optim``) do the rest alike.

A direction is called with the optimizer and its ``[(group, params)]`` and returns one list of d
per group, each d shaped as the tensor its workers compute at (``optimizer.point(p)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .engines.comm import scale_per_worker_, total_worker_norms

__all__ = ["Perturbation", "REGISTRY", "PERTURBATIONS", "DIRECTIONS"]

DIRECTIONS = ("gradient", "momentum")  # the past-gradient direction: g_{t-1}^k, or g_{t-1}^k + β m_{t-1}


def _past_gradient(opt, groups):
    """extrap: d = g_{t-1}^k; stochastic: g_{t-1}^k − g_{t-1}; kept by step(), 0 before step 1."""
    out = []
    for group, ps in groups:
        states = [opt.state.get(p, {}) for p in ps]
        ds = [s["local_grad"] if "local_grad" in s else torch.zeros_like(p) for p, s in zip(ps, states)]
        if opt.direction == "momentum":  # look ahead along the momentum too (docs/method.md)
            beta = group.get("momentum", 0.0)
            ds = [d if "momentum_buffer" not in s else d.add(s["momentum_buffer"], alpha=beta)
                  for d, s in zip(ds, states)]
        out.append(opt.precondition(group, ps, ds))
    return out


def _noise(dist: str, per_filter: bool):
    """d ~ N(0, 1) or U(−1, 1) per element, a worker's values drawn at once from its own stream
    (seeded seed·1000003 + worker id, its position kept in the state, so a resumed run draws
    what an uninterrupted one would); per filter j (an output-channel slice; a 1-D tensor is one
    filter) times ‖x_j‖/√n_j."""
    def direction(opt, groups):
        out, layout, streams = [], opt.layout, opt.state["noise_streams"]
        ids = layout.worker_ids
        for _, ps in groups:
            views = [layout.per_worker(opt.point(p)) for p in ps]  # [W, ...], at x_t
            sizes = [v[0].numel() for v in views]
            draws = torch.empty(len(ids), sum(sizes), device=ps[0].device, dtype=ps[0].dtype)
            for flat, w in zip(draws, ids):
                gen = torch.Generator(flat.device)
                gen.manual_seed(opt.seed * 1_000_003 + w) if w not in streams else gen.set_state(streams[w].cpu())
                flat.normal_(generator=gen) if dist == "normal" else flat.uniform_(-1.0, 1.0, generator=gen)
                streams[w] = gen.get_state()
            noise = [c.reshape(v.shape) for c, v in zip(draws.split(sizes, dim=1), views)]
            if per_filter:  # ‖x_j‖/√n_j per worker and filter of [W, filters, n] (or [W, n])
                flats = [v.flatten(2) if v.dim() > 2 else v for v in views]
                rms = [torch.linalg.vector_norm(f, dim=-1, keepdim=True) / math.sqrt(f.shape[-1]) for f in flats]
                torch._foreach_mul_(noise, [r.view(*r.shape[:2], *[1] * (v.dim() - 2)) for r, v in zip(rms, views)])
            out.append([n.view_as(opt.point(p)) for n, p in zip(noise, ps)])
        return out
    return direction


def _fresh_gradient(opt, groups):
    """extragradient: d = ∇f(x_t; ξ^k), from the closure's backward at x_t."""
    return [[opt.point(p).grad for p in ps] for _, ps in groups]


def _sam(opt, groups):
    """SAM's ascent (Foret et al. 2021): d = −∇f(x_t; ξ^k)/‖∇f(x_t; ξ^k)‖ over a worker's gradients."""
    fresh, layout = _fresh_gradient(opt, groups), opt.layout
    out = [torch._foreach_mul(ds, -1.0) for ds in fresh]
    inv = 1.0 / (total_worker_norms(layout, [g for gs in fresh for g in gs]) + 1e-12)
    scale_per_worker_(layout, [d for ds in out for d in ds], inv)
    return out


@dataclass(frozen=True)
class Perturbation:
    """A member of the framework: how d is formed (``None``: u ≡ 0); whether that needs a fresh
    gradient at x_t (a closure); whether γ follows the small-batch rate's decays (else it is a
    fixed magnitude: σ, a, α, ρ); whether step() keeps g_t^k for the next d."""

    direction: Callable | None
    closure: bool = False
    scheduled: bool = False
    keeps_local_grad: bool = False


REGISTRY: dict[str, Perturbation] = {
    "none": Perturbation(None),
    "extrap": Perturbation(_past_gradient, scheduled=True, keeps_local_grad=True),
    "stochastic": Perturbation(_past_gradient, scheduled=True, keeps_local_grad=True),
    "gaussian": Perturbation(_noise("normal", per_filter=False)),
    "uniform": Perturbation(_noise("uniform", per_filter=False)),
    "filter-gaussian": Perturbation(_noise("normal", per_filter=True)),
    "filter-uniform": Perturbation(_noise("uniform", per_filter=True)),
    "extragradient": Perturbation(_fresh_gradient, closure=True, scheduled=True),
    "sam": Perturbation(_sam, closure=True),
}
PERTURBATIONS = tuple(REGISTRY)
