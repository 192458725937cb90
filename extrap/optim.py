"""Extrapolated SGD and Adam: the paper's Algorithms 1 and 3 and the perturbation framework.

Every worker k evaluates its gradient at its own perturbed point (SPEC §3)::

    x̃_t^k = x_t − u_t^k          opt.perturb()
    g_t^k = ∇f(x̃_t^k; ξ_t^k)     the user's forward and backward
    x_{t+1} = update(x_t, mean_k g_t^k)   opt.step(): restore x_t bit for bit, average, update

and the update is mini-batch SGD with Nesterov momentum (SPEC §2) or Adam (SPEC §4). The
perturbation ``u`` names the method (see ``PERTURBATIONS``); with ``u ≡ 0`` every variant is
exactly its base optimizer.

Where gradients are averaged is the communicator's business (``comm``, from ``extrap.engines``),
never the optimizer's: without one the gradients in ``.grad`` are used as they are.

A communicator may declare ``stacked = True``: then every tensor carries a leading worker axis
(K virtual workers in one process, ``extrap.engines.virtual``). The arithmetic is elementwise and
so unchanged; the few reductions (LARS norms, filter norms, SAM's gradient norm) are taken per
worker, and each worker draws noise from its own generator.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "PERTURBATIONS",
    "DIRECTIONS",
    "ExtrapolatedSGD",
    "ExtrapolatedAdam",
    "extrap_sgd",
    "extrap_adam",
]

PERTURBATIONS = (
    "none",
    "extrap",
    "stochastic",
    "gaussian",
    "uniform",
    "filter-gaussian",
    "filter-uniform",
    "extragradient",
    "sam",
)
# u from a gradient at x_t on the same batch: needs a closure (2× compute, no extra communication)
_FRESH_GRADIENT = frozenset({"extragradient", "sam"})
# u from the worker's previous local gradient: one buffer, kept before averaging
_PAST_GRADIENT = frozenset({"extrap", "stochastic"})
# name -> (distribution, scaled by each filter's RMS)
_NOISE = {
    "gaussian": ("normal", False),
    "uniform": ("uniform", False),
    "filter-gaussian": ("normal", True),
    "filter-uniform": ("uniform", True),
}
# Direction of the past-gradient perturbations. SPEC §3: the paper's exact Algorithm 1 may fold
# momentum into the extrapolation; its text is lost, so γ·g_{t-1}^k is the default and the
# momentum-folded look-ahead γ·(g_{t-1}^k + β·m_{t-1}) is the alternative.
DIRECTIONS = ("gradient", "momentum")

_LARS_EPS = 1e-8  # apex LARC's eps


def _check(name: str, ok: bool, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def _check_common(*, weight_decay, gamma, lr_scale) -> None:
    """The arguments ExtrapolatedSGD and ExtrapolatedAdam share."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    _check("weight_decay", number(weight_decay) and weight_decay >= 0, weight_decay, "a float >= 0")
    _check("gamma", gamma is None or (number(gamma) and gamma >= 0), gamma, "None or a float >= 0")
    _check("lr_scale", number(lr_scale) and lr_scale > 0, lr_scale, "a float > 0")


def _worker_view(scale: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-worker vector [K] so that it broadcasts over a stacked tensor [K, ...]."""
    return scale.reshape(-1, *([1] * (like.dim() - 1)))


def _norm(t: Tensor, stacked: bool) -> Tensor:
    """‖t‖ — per worker (shape [K, 1, ...]) when ``t`` carries a worker axis, else a 0-d tensor."""
    if not stacked:
        return torch.linalg.vector_norm(t)
    return _worker_view(torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1), t)


def _filter_rms(t: Tensor, stacked: bool) -> Tensor:
    """‖x_{l,j}‖/√n_{l,j} for every filter j (output-channel slice; a 1-D tensor is one filter)."""
    lead = 1 + stacked  # dims that index filters: (worker,) filter
    if t.dim() <= lead:  # a 1-D tensor (per worker) is a single filter
        return _norm(t, stacked) / math.sqrt(t[0].numel() if stacked else t.numel())
    flat = t.reshape(*t.shape[:lead], -1)
    rms = torch.linalg.vector_norm(flat, dim=-1) / math.sqrt(flat.shape[-1])
    return rms.reshape(*t.shape[:lead], *([1] * (t.dim() - lead)))


def _lars_factor(p: Tensor, g: Tensor, lr: float, weight_decay: float, trust: float, stacked: bool):
    """LARC's clipped trust ratio min(τ‖x‖/(‖g‖ + λ‖x‖ + ε)/η, 1); 1 where ‖x‖ or ‖g‖ is 0."""
    pn, gn = _norm(p, stacked), _norm(g, stacked)
    ratio = trust * pn / (gn + weight_decay * pn + _LARS_EPS) / lr
    return torch.where((pn > 0) & (gn > 0), ratio.clamp(max=1.0), torch.ones_like(ratio))


def _lars_adapts(p: Tensor, group: dict, stacked: bool) -> bool:
    # BatchNorm and bias tensors (1-D per worker, or a group marked lars=False) keep their step.
    return group["lars"] and p.dim() - stacked >= 2


# ----------------------------------------------------------------------------------------------
# Functional cores: one single-tensor loop and one torch._foreach_* kernel each, same arithmetic.
# ----------------------------------------------------------------------------------------------


def extrap_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    lars_mask: Sequence[bool] | None = None,
    trust: float = 0.02,
    stacked: bool = False,
    foreach: bool = True,
    fused: bool = False,
) -> None:
    """SPEC §2 on already averaged gradients, in place; new momentum buffers are stored in the list.

    d = g + λx;  d ← d·LARS(x, g) where masked;  m = β m + d (m_0 = d_0);  x ← x − η (d + β m)
    (x ← x − η m without Nesterov; x ← x − η d without momentum). ``.grad`` is never modified.

    Kernels: ``fused`` (torch's one-pass fused SGD kernel, after the LARS scaling; it falls back
    to foreach where the kernel is missing), ``foreach`` (``torch._foreach_*``), or the
    single-tensor loop, the reference the others are tested against.
    """
    kw = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
              lars_mask=lars_mask, trust=trust, stacked=stacked)
    if fused and _fused_sgd(params, grads, momentum_buffers, **kw):
        return
    fn = _multi_tensor_sgd if foreach else _single_tensor_sgd
    fn(params, grads, momentum_buffers, **kw)


def _single_tensor_sgd(params, grads, bufs, *, lr, momentum, nesterov, weight_decay, lars_mask,
                       trust, stacked):
    for i, p in enumerate(params):
        g = grads[i]
        d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g
        if lars_mask is not None and lars_mask[i]:
            d = d * _lars_factor(p, g, lr, weight_decay, trust, stacked)
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                buf = bufs[i] = torch.clone(d).detach()
            else:
                buf.mul_(momentum).add_(d)
            d = d.add(buf, alpha=momentum) if nesterov else buf
        p.add_(d, alpha=-lr)


def _directions(params, grads, *, lr, weight_decay, lars_mask, trust, stacked) -> list[Tensor]:
    """d = g + λx, times the LARS factor where masked (new tensors where they differ from g)."""
    ds = list(torch._foreach_add(grads, params, alpha=weight_decay)) if weight_decay != 0 else list(grads)
    if lars_mask is not None and any(lars_mask):
        idx = [i for i, m in enumerate(lars_mask) if m]
        ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
        if stacked:  # norms per worker
            factors = [_lars_factor(p, g, lr, weight_decay, trust, True) for p, g in zip(ps, gs)]
        else:  # two fused norm kernels for all tensors, the ratio on one vector
            pn = torch.stack(torch._foreach_norm(ps))
            gn = torch.stack(torch._foreach_norm(gs))
            ratio = trust * pn / (gn + weight_decay * pn + _LARS_EPS) / lr
            factors = torch.where((pn > 0) & (gn > 0), ratio.clamp(max=1.0),
                                  torch.ones_like(ratio)).unbind(0)
        scaled = torch._foreach_mul([ds[i] for i in idx], list(factors))
        for i, s in zip(idx, scaled):
            ds[i] = s
    return ds


_FUSED_MISSING: set[tuple] = set()  # (device type, dtype) where torch has no fused SGD kernel


def _fused_sgd(params, grads, bufs, *, lr, momentum, nesterov, weight_decay, lars_mask, trust,
               stacked) -> bool:
    """torch's fused SGD kernel (one pass over x, d and m); False where it does not apply."""
    if not params:
        return True
    key = (params[0].device.type, params[0].dtype)
    if key in _FUSED_MISSING or any(t.device != params[0].device or t.dtype != params[0].dtype
                                    for t in (*params, *grads)):
        return False
    first = momentum != 0 and all(b is None for b in bufs)
    if momentum != 0 and not first and any(b is None for b in bufs):
        return False  # a parameter that joined late: the foreach path handles it
    lars = lars_mask is not None and any(lars_mask)
    # with LARS the scaled direction d is formed first and the kernel adds no weight decay
    ds = _directions(params, grads, lr=lr, weight_decay=weight_decay, lars_mask=lars_mask, trust=trust,
                     stacked=stacked) if lars else grads
    new_bufs = [torch.empty_like(d) for d in ds] if first else bufs
    try:
        torch._fused_sgd_(params, ds, new_bufs if momentum != 0 else [], weight_decay=0.0 if lars else weight_decay,
                          momentum=momentum, lr=lr, dampening=0.0, nesterov=nesterov, maximize=False,
                          is_first_step=first)
    except (RuntimeError, NotImplementedError):  # no kernel for this device or dtype
        _FUSED_MISSING.add(key)
        return False
    if first:
        bufs[:] = new_bufs
    return True


def _multi_tensor_sgd(params, grads, bufs, *, lr, momentum, nesterov, weight_decay, lars_mask,
                      trust, stacked):
    if not params:
        return
    ds = _directions(params, grads, lr=lr, weight_decay=weight_decay, lars_mask=lars_mask, trust=trust,
                     stacked=stacked)
    if momentum != 0:
        if all(b is None for b in bufs):
            bufs[:] = [torch.clone(d).detach() for d in ds]
        elif any(b is None for b in bufs):  # a parameter that joined late: rare, keep it simple
            for i, d in enumerate(ds):
                if bufs[i] is None:
                    bufs[i] = torch.clone(d).detach()
                else:
                    bufs[i].mul_(momentum).add_(d)
        else:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, ds)
        ds = torch._foreach_add(ds, bufs, alpha=momentum) if nesterov else bufs
    torch._foreach_add_(params, ds, alpha=-lr)


def extrap_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    step: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    foreach: bool = True,
) -> None:
    """Bias-corrected Adam (as torch.optim.Adam, L2 weight decay) on averaged gradients, in place.

    d = g + λx;  m ← β1 m + (1−β1) d;  v ← β2 v + (1−β2) d²;
    x ← x − η/(1−β1^t) · m / (√v/√(1−β2^t) + ε)
    """
    if not params:
        return
    bc1 = 1 - beta1**step
    bc2_sqrt = math.sqrt(1 - beta2**step)
    step_size = lr / bc1
    if foreach:
        ds = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else list(grads)
        torch._foreach_lerp_(exp_avgs, ds, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, ds, ds, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, -step_size)
        return
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        d = g.add(p, alpha=weight_decay) if weight_decay else g
        m.lerp_(d, 1 - beta1)
        v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
        p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(eps), value=-step_size)


# ----------------------------------------------------------------------------------------------
# The framework: perturb() / step() shared by SGD and Adam.
# ----------------------------------------------------------------------------------------------


class _Extrapolated(Optimizer):
    """Shared perturb/restore/average logic; subclasses implement ``_update`` and may precondition."""

    def __init__(self, params, defaults: dict, *, perturbation: str, direction: str, comm,
                 seed: int, foreach: bool | None):
        _check("perturbation", perturbation in PERTURBATIONS, perturbation,
               "one of " + ", ".join(PERTURBATIONS))
        _check("direction", direction in DIRECTIONS, direction, "one of " + ", ".join(DIRECTIONS))
        _check("seed", isinstance(seed, int) and not isinstance(seed, bool), seed, "an integer")
        if comm is not None and not callable(getattr(comm, "all_reduce_mean_", None)):
            raise ValueError(f"comm: expected a communicator with all_reduce_mean_(tensors), got {comm!r}")
        super().__init__(params, defaults)
        self.perturbation = perturbation
        self.direction = direction
        self.comm = comm
        self.seed = seed
        self.foreach = True if foreach is None else bool(foreach)
        self._perturbed: tuple[list[Tensor], list[Tensor]] | None = None
        self._generators: dict[int, torch.Generator] = {}
        self._generator_states: dict[int, Tensor] = {}

    # -- the worker layout the communicator declares ------------------------------------------

    @property
    def stacked(self) -> bool:
        return bool(getattr(self.comm, "stacked", False))

    def _worker_ids(self) -> list[int]:
        if self.comm is not None:
            return list(self.comm.worker_ids)
        dist = torch.distributed
        return [dist.get_rank() if dist.is_available() and dist.is_initialized() else 0]

    def _generator(self, worker: int, device: torch.device) -> torch.Generator:
        gen = self._generators.get(worker)
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed * 1_000_003 + worker)  # one stream per worker
            if worker in self._generator_states:
                gen.set_state(self._generator_states.pop(worker))
            self._generators[worker] = gen
        return gen

    def _gamma(self, group: dict) -> float:
        """γ_t: the group's ``gamma``, or by default the unscaled rate η_t / lr_scale (SPEC §3)."""
        return group["lr"] / group["lr_scale"] if group["gamma"] is None else group["gamma"]

    # -- perturb -------------------------------------------------------------------------------

    @torch.no_grad()
    def perturb(self, closure: Callable[[], Tensor] | None = None):
        """Move the parameters to this worker's extrapolated point x̃ = x_t − u (SPEC §3).

        ``extragradient`` and ``sam`` need ``closure``: it zeroes the gradients and runs forward
        and backward on this worker's batch at x_t; its gradient is used for u and then cleared.
        Returns the closure's loss, if any. A no-op for ``none``.
        """
        kind = self.perturbation
        if kind == "none":
            return None
        if self._perturbed is not None:
            raise RuntimeError("perturb() called twice without step(): x_t would be lost")
        loss = None
        if kind in _FRESH_GRADIENT:
            if closure is None:
                raise ValueError(f"closure: perturbation={kind!r} needs a closure that computes "
                                 "this worker's gradient at x_t")
            with torch.enable_grad():
                loss = closure()

        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        backups = []
        for p in params:
            state = self.state[p]
            if "x_t" not in state:
                state["x_t"] = torch.empty_like(p, memory_format=torch.preserve_format)
            backups.append(state["x_t"])
        self._copy(backups, params)  # x_t, restored bit for bit by step()
        self._perturbed = (params, backups)

        if kind in _PAST_GRADIENT:
            self._perturb_past_gradient()
        elif kind in _NOISE:
            self._perturb_noise(*_NOISE[kind])
        else:
            self._perturb_fresh_gradient(kind)
        return loss

    def _perturb_past_gradient(self) -> None:
        # u = γ·g_{t-1}^k ("extrap") or γ·(g_{t-1}^k − g_{t-1}) ("stochastic"); the buffer holds
        # whichever step() stored. Nothing yet at t = 0, so u = 0 there.
        for group in self.param_groups:
            gamma = self._gamma(group)
            ps, dirs, pre = [], [], []
            for p in group["params"]:
                state = self.state.get(p, {})
                if "local_grad" not in state:
                    continue
                d = state["local_grad"]
                if self.direction == "momentum" and state.get("momentum_buffer") is not None:
                    d = d.add(state["momentum_buffer"], alpha=group.get("momentum", 0.0))
                ps.append(p)
                dirs.append(d)
                pre.append(self._preconditioner(p, group))
            if not ps or gamma == 0:
                continue
            if any(q is not None for q in pre):
                # extrap-Adam: the direction through Adam's current preconditioner 1/(√v̂ + ε)
                pre = [q if q is not None else torch.ones_like(d) for q, d in zip(pre, dirs)]
                self._addcdiv(ps, dirs, pre, -gamma)
            else:
                self._add(ps, dirs, -gamma)

    def _perturb_noise(self, dist: str, per_filter: bool) -> None:
        # One draw of all of a worker's elements from that worker's generator: the same numbers
        # whether the worker runs as a process or as a virtual worker.
        stacked = self.stacked
        for group in self.param_groups:
            gamma = self._gamma(group)
            ps = [p for p in group["params"] if p.requires_grad]
            if not ps or gamma == 0:
                continue
            noise = self._draw_noise(ps, dist, stacked)
            if per_filter:
                scales = [_filter_rms(p, stacked) for p in ps]
                noise = torch._foreach_mul(noise, scales) if self.foreach else [
                    n * s for n, s in zip(noise, scales)]
            self._add(ps, noise, -gamma)

    def _draw_noise(self, ps: list[Tensor], dist: str, stacked: bool) -> list[Tensor]:
        device, dtype = ps[0].device, ps[0].dtype
        per_worker = [p[0].numel() if stacked else p.numel() for p in ps]
        total = sum(per_worker)
        flats = []
        for w in self._worker_ids():
            gen = self._generator(w, device)
            flat = torch.empty(total, device=device, dtype=dtype)
            if dist == "normal":
                flat.normal_(generator=gen)
            else:
                flat.uniform_(-1.0, 1.0, generator=gen)
            flats.append(flat)
        if stacked:
            block = torch.stack(flats)  # [K, total]
            return [c.reshape(p.shape) for c, p in zip(block.split(per_worker, dim=1), ps)]
        return [c.view(p.shape) for c, p in zip(flats[0].split(per_worker), ps)]

    def _perturb_fresh_gradient(self, kind: str) -> None:
        stacked = self.stacked
        grouped = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        if kind == "sam":
            # ascent to x + ρ g/‖g‖, ‖g‖ over all of this worker's gradients (Foret et al. 2021)
            flat = [p.grad for ps in grouped for p in ps]
            if stacked:
                sq = sum(torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) ** 2 for g in flat)
            else:
                sq = torch.stack(torch._foreach_norm(flat)).square().sum() if flat else None
            inv_norm = 1.0 / (sq.sqrt() + 1e-12) if flat else None
        for group, ps in zip(self.param_groups, grouped):
            gamma = self._gamma(group)
            if not ps:
                continue
            grads = [p.grad for p in ps]
            if kind == "extragradient":
                self._add(ps, grads, -gamma)  # x − γ ∇f(x_t; ξ)
            else:
                scale = [_worker_view(gamma * inv_norm, g) for g in grads] if stacked else \
                    [gamma * inv_norm] * len(grads)
                self._add(ps, [g * s for g, s in zip(grads, scale)], 1.0)
        self.zero_grad(set_to_none=True)  # the user's backward at x̃ starts clean

    def _preconditioner(self, p: Tensor, group: dict) -> Tensor | None:
        return None

    # -- step ----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, average: bool = True):
        """Restore x_t, average the gradients through ``comm`` and update (SPEC §2/§4).

        The local gradient is kept before averaging for ``extrap`` (g^k) and ``stochastic``
        (g^k − ḡ). ``average=False`` steps on the local gradient alone (post-local SGD's local
        phase). ``.grad`` holds the averaged gradient afterwards.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._perturbed is not None:
            self._copy(*self._perturbed)
            self._perturbed = None

        grouped = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            for p in ps:
                if p.grad.is_sparse:
                    raise RuntimeError("extrap optimizers do not support sparse gradients")
            grouped.append(ps)
        params = [p for ps in grouped for p in ps]
        grads = [p.grad for p in params]

        keep = self.perturbation in _PAST_GRADIENT
        if keep:
            local = []
            for p in params:
                state = self.state[p]
                if "local_grad" not in state:
                    state["local_grad"] = torch.empty_like(p.grad, memory_format=torch.preserve_format)
                local.append(state["local_grad"])
            self._copy(local, grads)
        if average and self.comm is not None and grads:
            self.comm.all_reduce_mean_(grads)
        if self.perturbation == "stochastic":
            if average and self.comm is not None:
                self._add(local, grads, -1.0)  # the worker's deviation from the average
            else:
                for t in local:  # no average to deviate from: one worker, or a local phase
                    t.zero_()

        for group, ps in zip(self.param_groups, grouped):
            if ps:
                self._update(group, ps, [p.grad for p in ps])
        return loss

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError

    # -- kernels dispatch ----------------------------------------------------------------------

    def _copy(self, dst: list[Tensor], src: list[Tensor]) -> None:
        if self.foreach:
            torch._foreach_copy_(dst, src)
        else:
            for d, s in zip(dst, src):
                d.copy_(s)

    def _add(self, xs: list[Tensor], ys: list[Tensor], alpha: float) -> None:
        if self.foreach:
            torch._foreach_add_(xs, ys, alpha=alpha)
        else:
            for x, y in zip(xs, ys):
                x.add_(y, alpha=alpha)

    def _addcdiv(self, xs, ys, zs, value: float) -> None:
        if self.foreach:
            torch._foreach_addcdiv_(xs, ys, zs, value)
        else:
            for x, y, z in zip(xs, ys, zs):
                x.addcdiv_(y, z, value=value)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """torch's optimizer state plus each worker's noise generator, so a resumed run draws
        the same noise an uninterrupted one would."""
        sd = super().state_dict()
        states = dict(self._generator_states)
        states.update({w: g.get_state() for w, g in self._generators.items()})
        sd["extrap"] = {"perturbation": self.perturbation, "generators": states}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("extrap", None) or {}
        if extra.get("perturbation", self.perturbation) != self.perturbation:
            raise ValueError(f"state_dict: saved with perturbation={extra['perturbation']!r}, "
                             f"this optimizer uses {self.perturbation!r}")
        super().load_state_dict(state_dict)
        self._generators = {}
        self._generator_states = {int(w): s.cpu() for w, s in extra.get("generators", {}).items()}


class ExtrapolatedSGD(_Extrapolated):
    r"""Mini-batch SGD with Nesterov momentum, evaluated at an extrapolated point (SPEC §2–§3).

    Args:
        params: tensors or parameter groups (see ``extrap.weight_decay_groups``).
        lr: the (scaled, large-batch) learning rate η.
        momentum: β, no dampening. nesterov: Nesterov momentum (the paper's setting).
        weight_decay: λ, L2 added to the gradient (groups set it per tensor kind).
        perturbation: one of ``PERTURBATIONS``; ``"none"`` is mini-batch SGD.
        gamma: the perturbation magnitude — γ for extrap/stochastic/extragradient, σ for
            gaussian, a for uniform, α for filter-*, ρ for sam. ``None``: η_t / lr_scale, the
            unscaled small-batch rate, following the learning-rate schedule.
        lr_scale: the learning-rate scaling factor B/b_base.
        lars: LARS in the LARC form (apex), not applied to 1-D (BatchNorm, bias) tensors.
        trust: LARS trust coefficient τ.
        comm: a communicator from ``extrap.engines``; ``None`` uses ``.grad`` as it is.
        direction: ``"gradient"`` (γ·g_{t-1}^k) or ``"momentum"`` (γ·(g_{t-1}^k + β m_{t-1})).
        seed: seeds each worker's noise stream (worker w uses seed·1000003 + w).
        foreach: the ``torch._foreach_*`` kernels (default) or the single-tensor loop.
        fused: the update by torch's fused SGD kernel, one pass over parameters, directions and
            momentum (default: where torch has one for the parameters' device and dtype, unless
            ``foreach=False`` asks for the reference loop).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, perturbation: str = "extrap", gamma: float | None = None,
                 lr_scale: float = 1.0, lars: bool = False, trust: float = 0.02, comm=None, *,
                 direction: str = "gradient", seed: int = 0, foreach: bool | None = None,
                 fused: bool | None = None):
        _check("lr", isinstance(lr, (int, float)) and lr >= 0, lr, "a float >= 0")
        _check("momentum", isinstance(momentum, (int, float)) and 0 <= momentum < 1, momentum,
               "a float in [0, 1)")
        _check("nesterov", not (nesterov and momentum == 0), nesterov,
               "False when momentum is 0 (Nesterov needs momentum)")
        _check_common(weight_decay=weight_decay, gamma=gamma, lr_scale=lr_scale)
        _check("trust", isinstance(trust, (int, float)) and trust > 0, trust, "a float > 0")
        defaults = dict(lr=float(lr), momentum=float(momentum), nesterov=bool(nesterov),
                        weight_decay=float(weight_decay), gamma=gamma, lr_scale=float(lr_scale),
                        lars=bool(lars), trust=float(trust))
        super().__init__(params, defaults, perturbation=perturbation, direction=direction,
                         comm=comm, seed=seed, foreach=foreach)
        self.fused = (foreach is not False) if fused is None else bool(fused)

    def _update(self, group, params, grads):
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        stacked = self.stacked
        mask = [_lars_adapts(p, group, stacked) for p in params] if group["lars"] else None
        extrap_sgd(params, grads, bufs, lr=group["lr"], momentum=group["momentum"],
                   nesterov=group["nesterov"], weight_decay=group["weight_decay"], lars_mask=mask,
                   trust=group["trust"], stacked=stacked, foreach=self.foreach, fused=self.fused)
        if group["momentum"] != 0:
            for p, b in zip(params, bufs):
                self.state[p]["momentum_buffer"] = b


class ExtrapolatedAdam(_Extrapolated):
    r"""Adam on the averaged gradient, each worker extrapolating through Adam's preconditioner
    (the paper's Algorithm 3, SPEC §4): x̃ = x_t − γ g_{t-1}^k / (√v̂_t + ε).

    ``precondition=False`` extrapolates along the raw direction γ g_{t-1}^k. With γ = 0 (or
    ``perturbation="none"``) this is ``torch.optim.Adam``. Other arguments as ``ExtrapolatedSGD``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, perturbation: str = "extrap",
                 gamma: float | None = None, comm=None, *, lr_scale: float = 1.0,
                 precondition: bool = True, direction: str = "gradient", seed: int = 0,
                 foreach: bool | None = None):
        _check("lr", isinstance(lr, (int, float)) and lr >= 0, lr, "a float >= 0")
        _check("betas", len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1
                                                for b in betas), betas, "two floats in [0, 1)")
        _check("eps", isinstance(eps, (int, float)) and eps >= 0, eps, "a float >= 0")
        _check_common(weight_decay=weight_decay, gamma=gamma, lr_scale=lr_scale)
        defaults = dict(lr=float(lr), betas=tuple(float(b) for b in betas), eps=float(eps),
                        weight_decay=float(weight_decay), gamma=gamma, lr_scale=float(lr_scale),
                        precondition=bool(precondition))
        super().__init__(params, defaults, perturbation=perturbation, direction=direction,
                         comm=comm, seed=seed, foreach=foreach)

    def _preconditioner(self, p, group):
        """√v̂ + ε from Adam's current second moment (None for the raw direction)."""
        state = self.state.get(p, {})
        if not group["precondition"] or "exp_avg_sq" not in state:
            return None
        bc2 = 1 - group["betas"][1] ** float(state["step"])
        return (state["exp_avg_sq"] / bc2).sqrt_().add_(group["eps"])

    def _update(self, group, params, grads):
        exp_avgs, exp_avg_sqs, steps = [], [], set()
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            steps.add(int(state["step"]))
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        for step in sorted(steps):  # one kernel call per distinct step count (normally one)
            idx = [i for i, p in enumerate(params) if int(self.state[p]["step"]) == step]
            beta1, beta2 = group["betas"]
            extrap_adam([params[i] for i in idx], [grads[i] for i in idx],
                        [exp_avgs[i] for i in idx], [exp_avg_sqs[i] for i in idx], step,
                        lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                        weight_decay=group["weight_decay"], foreach=self.foreach)
