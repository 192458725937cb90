"""Extrapolated SGD and Adam (Lin, Kong, Stich, Jaggi, ICML 2020) as a thin layer on
``torch.optim.SGD`` and ``torch.optim.Adam``.

The paper's Algorithm 1, for worker k at step t, and where each line lives below::

    x̃_t^k   = x_t − γ_t g_{t-1}^k          perturb(): save x_t, move by u = γ·(registry's direction)
    g_t^k   = ∇f(x̃_t^k; ξ_t^k)             the caller's forward and backward, at x̃
    x_t restored bit for bit; g_t^k kept    step(): the copy back, then ``local_grad`` in the state
    g_t     = mean_k g_t^k                  step(): ``comm.all_reduce_mean_``, once per step (under
                                            DDP, DDP's own average in ``.grad``)
    x_{t+1} = SGD-Nesterov(x_t, g_t)        step(): LARS (apex's LARC) on ``.grad``, then torch's step

Every member of the paper's framework differs only in u (``REGISTRY``); with u ≡ 0 each is
exactly its base optimizer. Adam (Algorithm 3) swaps the last line for torch's Adam and passes
the past gradient through Adam's preconditioner. Where the workers are and how gradients are
averaged is the communicator's business (``extrap.engines.comm.Communicator``). Where K workers
share one x_t (virtual workers), x̃ is written to the communicator's ``[K, ...]`` points instead
of the parameters, and x_t is never moved. The choices the paper leaves open are in
``docs/method.md``.

Inside a user's loop (``docs/method.md``, "Inside a user's training loop"): the update uses the
gradient the loop hands to ``step()`` (clipped, unscaled by GradScaler), while g_t^k is kept as
backward left it (the DDP hook's copy, or in one process a post-accumulate-grad hook's) and freed
of the loss scale; a step GradScaler skips keeps x_t and g_{t-1}^k.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

from .arguments import check_optimizer_arguments, require
from .engines.comm import (LocalComm, local_backward, scale_per_worker_, total_worker_norms,
                           worker_norms)
from .engines.ddp import refuse_without_comm
from .engines.horovod import refuse_horovod_wrapper

__all__ = ["Perturbation", "PERTURBATIONS", "REGISTRY", "DIRECTIONS", "ExtrapolatedSGD", "ExtrapolatedAdam"]

DIRECTIONS = ("gradient", "momentum")  # the past-gradient direction: g_{t-1}^k, or g_{t-1}^k + β m_{t-1}


# -- u = γ·d, the perturbation: each direction maps [(group, params)] to one list of d per group ------

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


def _trust_factors(group: dict, layout, xs: list[Tensor], ds: list[Tensor], rate: float) -> Tensor:
    """apex LARC's per-tensor factor min(τ‖x‖/(‖d‖ + λ‖x‖ + ε)/rate, 1) for each worker held,
    [len(xs), W]; 1 where ‖x‖ or ‖d‖ is 0. The step rate·factor·d is then at most τ‖x‖ long."""
    pn, dn, wd = worker_norms(layout, xs), worker_norms(layout, ds), group["weight_decay"]
    ratio = group["trust"] * pn / (dn + wd * pn + 1e-8) / rate  # apex's ε
    return torch.where((pn > 0) & (dn > 0), ratio.clamp(max=1.0), torch.ones_like(ratio))


def _adapted(layout, params: list[Tensor]) -> list[int]:
    """The positions of the tensors LARS adapts: ≥ 2 dimensions per worker (weights, not biases)."""
    return [i for i, p in enumerate(params) if layout.per_worker(p).dim() >= 3]


def _larc_(group: dict, layout) -> None:
    """LARS as apex's LARC, on ``.grad`` before the base step: (g + λx)·min(τ‖x‖/(‖g‖ + λ‖x‖ + ε)/η, 1)
    per worker for tensors of ≥ 2 dimensions (factor 1 where ‖x‖ or ‖g‖ is 0), g + λx for the rest."""
    ps, wd = [p for p in group["params"] if p.grad is not None], group["weight_decay"]
    adapt = [ps[i] for i in _adapted(layout, ps)]
    factor = _trust_factors(group, layout, adapt, [p.grad for p in adapt], group["lr"])
    if wd != 0 and ps:
        torch._foreach_add_([p.grad for p in ps], ps, alpha=wd)
    scale_per_worker_(layout, [p.grad for p in adapt], factor)


class _Extrapolation:
    """perturb() and step() around a torch optimizer's update; mixed in before the torch class."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        refuse_horovod_wrapper(cls)

    def __init__(self, params, perturbation, direction, comm, seed, group_keys, **torch_args):
        require({"perturbation": (perturbation, perturbation in PERTURBATIONS, "one of " + ", ".join(PERTURBATIONS)),
                 "direction": (direction, direction in DIRECTIONS, "one of " + ", ".join(DIRECTIONS))})
        check_optimizer_arguments(comm=comm, seed=seed, gamma=group_keys["gamma"], lr_scale=group_keys["lr_scale"],
                                  gamma_factor=group_keys["gamma_factor"])
        self.perturbation, self.kind = perturbation, REGISTRY[perturbation]
        self.direction, self.comm, self.seed = direction, comm, seed
        self._group_keys = group_keys
        self._x_t: list[Tensor] = []  # scratch, not state: x_t while the parameters are at x̃
        self._perturbed: list[Tensor] | None = None  # the parameters perturb() moved
        self._captured: dict[Tensor, Tensor] = {}  # one process: each parameter's raw gradient, as backward left it
        self._fresh: set[Tensor] = set()  # the parameters whose raw gradient backward captured since the last step
        self.grad_scaler = None  # the loop's torch.amp.GradScaler, where step() must ask it the loss scale
        self.auto_perturb = False  # extrap.attach: perturb() runs on the first training forward after a step
        super().__init__(params, **torch_args)
        # GradScaler then calls step() even for a step it skips, and says so (found_inf), with the
        # loss scale (grad_scale) while .grad is still scaled: step() keeps x_t and the local
        # gradient on a skip, and frees the kept local gradient of the scale (see _loss_scale)
        self._step_supports_amp_scaling = True

    def add_param_group(self, param_group: dict) -> None:
        param_group.update({**self._group_keys, "peak_lr": 0.0, **param_group})  # keys torch does not know
        param_group.setdefault("initial_rate", param_group.get("lr", self.defaults["lr"]))  # the rate given here
        super().add_param_group(param_group)
        if self.kind.keeps_local_grad:
            ref = weakref.ref(self)
            for p in param_group["params"]:
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(lambda p: (opt := ref()) is not None and opt._capture(p))

    def _capture(self, p: Tensor) -> None:
        """Keep ``p``'s raw gradient as backward leaves it, before the loop clips or unscales
        ``.grad`` (one process; under DDP the hook keeps it, ``extrap.register_ddp``)."""
        if self.comm is not None:
            return
        kept = self._captured.get(p)
        if kept is None or kept.shape != p.grad.shape or kept.dtype != p.grad.dtype or kept.device != p.grad.device:
            kept = self._captured[p] = torch.empty_like(p.grad)
        kept.copy_(p.grad)
        self._fresh.add(p)

    layout = property(lambda self: self.comm or LocalComm(), doc="The communicator, or this process alone.")
    perturbed = property(lambda self: self._perturbed is not None,
                         doc="True from perturb() to step() or restore(): the parameters are at x̃.")

    def point(self, p: Tensor) -> Tensor:
        """Where this process's workers compute at for parameter ``p``: ``p`` itself (moved to x̃
        and back), or, where the workers share x_t, the communicator's ``[K, ...]`` points."""
        return (getattr(self.comm, "points_of", None) or {}).get(id(p), p)

    def _shared(self) -> list[tuple[Tensor, Tensor]]:
        """(x_t, its points) of this optimizer's parameters whose workers share x_t; [] if none."""
        points = getattr(self.comm, "points_of", None)
        return [(p, points[id(p)]) for g in self.param_groups for p in g["params"] if id(p) in points] if points else []

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for _, q in self._shared():
            if q.grad is not None:
                q.grad = None if set_to_none else q.grad.zero_()

    def gamma(self, group: dict) -> float:
        """γ_t: the group's fixed ``gamma``, or by default gamma_factor · η_t · b/B, the rate that
        linear scaling gives the local batch b (η_t / ``lr_scale``), so it follows the warmup and
        every decay of η_t. With ``gamma_warmup=False`` (the earlier rule) γ ignores the warmup: η_t
        is replaced by the rate given at construction times the decays since, η_t over the highest
        η seen. The noises' and SAM's magnitude (not a step: σ, a, α, ρ) defaults to the rate
        given at construction, fixed."""
        if group["gamma"] is not None:
            return group["gamma"]
        rate = group["lr"]
        if not self.kind.scheduled:
            rate = group["initial_rate"]
        elif not group["gamma_warmup"]:
            group["peak_lr"] = max(group["peak_lr"], group["lr"])
            rate = group["initial_rate"] * group["lr"] / group["peak_lr"] if group["peak_lr"] > 0 else 0.0
        return group["gamma_factor"] * rate / group["lr_scale"]

    def gammas(self) -> list[float]:
        """γ_t of every parameter group, for the step about to be taken at the groups' ``lr``."""
        return [self.gamma(g) for g in self.param_groups]

    def precondition(self, group: dict, params: list[Tensor], directions: list[Tensor]) -> list[Tensor]:
        return directions  # ExtrapolatedAdam's passes d through Adam's preconditioner

    @torch.no_grad()
    def perturb(self, closure: Callable[[], Tensor] | None = None):
        """Move the parameters to this worker's x̃ = x_t − γ·d; ``step()`` brings x_t back. Where
        the workers share x_t, write each worker's x̃ to its point instead (``point``); x_t stays.
        ``extragradient`` and ``sam`` need ``closure``, a zero_grad, forward and backward on this
        worker's batch at x_t; it forms d, and its loss is returned."""
        if self.kind.direction is None:
            return None
        if self._perturbed is not None:
            raise RuntimeError("perturb() called twice without step(): x_t would be lost; a loop that skips "
                               "step() (a NaN check, `continue`) calls optimizer.restore() instead")
        loss = None
        if self.kind.closure:
            if closure is None:
                raise ValueError(f"closure: perturbation={self.perturbation!r} needs a closure that "
                                 "computes this worker's gradient at x_t")
            with torch.enable_grad(), local_backward(self.comm):  # d is this worker's own
                loss = closure()
        shared = dict((id(p), q) for p, q in self._shared())
        groups = [(g, ps) for g in self.param_groups if (ps := [p for p in g["params"] if p.requires_grad and (
            not self.kind.closure or shared.get(id(p), p).grad is not None)])]
        self._perturbed = [] if shared else [p for _, ps in groups for p in ps]  # x_t to save
        if [t.shape for t in self._x_t] != [p.shape for p in self._perturbed]:
            self._x_t = [torch.empty_like(p) for p in self._perturbed]
        if self._perturbed:
            torch._foreach_copy_(self._x_t, self._perturbed)
        for (group, ps), ds in zip(groups, self.kind.direction(self, groups)):
            if gamma := self.gamma(group):
                points = [shared.get(id(p), p) for p in ps]
                if group.get("lars") and group.get("lars_lookahead") and self.kind.scheduled:
                    ds = self._trust_lookahead(group, points, ds, gamma)
                torch._foreach_add_(points, ds, alpha=-gamma)
        if self.kind.closure:
            self.zero_grad(set_to_none=True)  # the caller's backward at x̃ starts clean
        return loss

    def _trust_lookahead(self, group: dict, points: list[Tensor], ds: list[Tensor], gamma: float) -> list[Tensor]:
        """``lars_lookahead``: each adapted tensor's look-ahead direction times LARC's trust ratio
        at x_t with rate γ, so that ‖γ·d‖ ≤ τ‖x_t‖ per tensor and worker, as the update is bounded."""
        layout, ds = self.layout, list(ds)
        adapt = _adapted(layout, points)
        scaled = [ds[i].expand_as(points[i]).clone() for i in adapt]  # d may be the kept local gradient itself
        scale_per_worker_(layout, scaled, _trust_factors(group, layout, [points[i] for i in adapt], scaled, gamma))
        for i, d in zip(adapt, scaled):
            ds[i] = d
        return ds

    @torch.no_grad()
    def restore(self) -> None:
        """Put x_t back where ``perturb()`` moved the parameters to x̃, without an update: for a loop
        that skips ``step()`` on its own. x_t and the kept local gradient stay as they were, so the
        next ``perturb()`` goes to the same x̃ (for ``extrap``). A no-op when not perturbed."""
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, self._x_t)
        self._perturbed = None

    def _loss_scale(self) -> tuple[float | None, bool]:
        """What ``torch.amp.GradScaler.step`` said of this step: (the loss scale ``.grad`` still
        carries: 1 without a GradScaler, ``None`` where ``GradScaler.unscale_`` already freed it;
        whether to skip the step). One host sync under a GradScaler."""
        found_inf = self.__dict__.get("found_inf")
        if found_inf is None:
            return 1.0, False
        grad_scale = self.__dict__.get("grad_scale")
        self.grad_scale = self.found_inf = None  # torch's step must not unscale again; GradScaler deletes both
        return (None if grad_scale is None else float(grad_scale)), bool(found_inf.item())

    def _scaler_scale(self) -> float:
        """The loss scale of the last backward, from ``grad_scaler``: what the kept local gradients
        still carry after the loop's ``GradScaler.unscale_``."""
        if self.grad_scaler is None:
            raise RuntimeError("GradScaler.unscale_(optimizer) ran before step(): .grad is unscaled but the kept "
                               "local gradient is not, and extrap does not know the loss scale; set "
                               "optimizer.grad_scaler = scaler (or extrap.attach(model, optimizer, grad_scaler=scaler))")
        return float(self.grad_scaler.get_scale())

    def _raw_local(self, params: list[Tensor]) -> tuple[list[Tensor], bool]:
        """Each parameter's local gradient, and whether it was kept as backward left it (before
        the loop clipped or unscaled ``.grad``): the DDP hook's copy, one process's captured
        gradient; or, under the suite's communicators (which average in step()), ``.grad``."""
        kept = getattr(self.comm, "local_gradients", None)
        if kept is not None:
            return kept(params), True
        if self.comm is None:
            fresh, self._fresh = self._fresh, set()
            return [self._captured[p] if p in fresh else p.grad for p in params], True
        return [p.grad for p in params], False

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, average: bool = True):
        """Restore x_t, keep the local gradient (g^k for ``extrap``, g^k − ḡ for ``stochastic``),
        average through ``comm``, then torch's update. ``average=False`` steps on the local
        gradient alone (post-local SGD's local phase).

        Where the workers share x_t, their gradients are on the points: those become the local
        gradients, their mean (``comm.average``) becomes x_t's ``.grad``, the update runs once on
        x_t, and the points are set to x_{t+1}."""
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        grad_scale, skip = self._loss_scale()
        if self.auto_perturb and self._perturbed is None and self.kind.direction is not None:
            raise RuntimeError("extrap.attach: no training-mode forward of the attached model ran since the last "
                               "step(), so the gradient was not taken at x̃; attach the module the forward runs through")
        self.restore()
        if skip:  # GradScaler found inf/NaN: x_t and the kept local gradient stay as they were
            return loss
        shared = self._shared()
        at = dict((id(p), q) for p, q in shared)
        params = [p for g in self.param_groups for p in g["params"] if at.get(id(p), p).grad is not None]
        if self.comm is None and (self.kind.keeps_local_grad or self.kind.closure):
            refuse_without_comm(self.perturbation)
        keep, layout, at_backward = self.kind.keeps_local_grad and params, self.layout, False
        if points := [at[id(p)] for p in params] if shared else None:
            if not average:
                raise RuntimeError("step(average=False): the workers share one x_t; a local step needs "
                                   "their own models (PostLocalSGD splits them at its switch)")
            local = [q.grad for q in points]  # the workers' own gradients, kept as they are
            for p, q, mean in zip(params, points, self.comm.average(local)):
                p.grad, q.grad = mean, None
            layout = LocalComm(0)  # the update sees x_t once
        elif keep:  # put in the state after torch's step, which fills only empty state
            local = [self.state[p].get("local_grad") for p in params]
            local = [torch.empty_like(p.grad) if t is None else t for t, p in zip(local, params)]
            raw, at_backward = self._raw_local(params)
            torch._foreach_copy_(local, raw)
        grads = [p.grad for p in params]
        if grad_scale is None:  # the loop ran GradScaler.unscale_ on .grad
            grad_scale, local_scale = 1.0, (self._scaler_scale() if keep and at_backward else 1.0)
        else:
            local_scale = grad_scale
        if grad_scale != 1.0 and grads:  # GradScaler left the unscaling to step()
            torch._foreach_mul_(grads, 1.0 / grad_scale)
        if keep and local_scale != 1.0:
            torch._foreach_mul_(local, 1.0 / local_scale)
        if average and self.comm is not None and grads and not points:
            self.comm.all_reduce_mean_(grads)
        if self.perturbation == "stochastic" and keep:  # the deviation from the average; 0 locally
            if not average or self.comm is None:
                torch._foreach_zero_(local)
            elif not hasattr(self.comm, "local_gradients"):  # (the DDP hook keeps the deviation itself)
                torch._foreach_sub_(local, grads)
        lars = [(g, g["weight_decay"]) for g in self.param_groups if g.get("lars")]
        for group, _ in lars:
            _larc_(group, layout)  # folds weight decay into .grad, so torch's step must not add it
            group["weight_decay"] = 0.0
        try:  # torch's own step, without torch's hook wrapper: our step() runs the hooks once
            base = type(self).base_step
            (base.__wrapped__ if getattr(base, "hooked", False) else base)(self)
        finally:
            for group, wd in lars:
                group["weight_decay"] = wd
        if shared:  # every worker's point back at x_t (now x_{t+1}), gradient or not
            torch._foreach_copy_([q for _, q in shared], [p.expand_as(q) for p, q in shared])
        for p, t in zip(params, local) if keep else ():
            self.state[p]["local_grad"] = t
        return loss


class ExtrapolatedSGD(_Extrapolation, torch.optim.SGD):
    r"""``torch.optim.SGD`` (Nesterov momentum) with its gradient taken at an extrapolated point.

    ``lr`` is the large-batch rate η_t and ``lr_scale`` B/b, the global over the local batch.
    ``gamma``: the perturbation's one magnitude (γ, or σ, a, α, ρ for the noises and SAM); ``None``:
    γ_t = ``gamma_factor`` · η_t · b/B, following η_t's warmup and decays (``gamma()``;
    ``gamma_warmup=False``: held at the given rate through a warmup, the earlier rule).
    ``lars``/``trust``: apex's LARC; ``lars_lookahead``: the look-ahead takes LARC's trust ratio
    too (each tensor's ‖γ·d‖ ≤ τ‖x‖). ``comm``: a communicator from
    ``extrap.engines`` (``None``: ``.grad`` as it is). ``direction``: d = g_{t-1}^k or
    g_{t-1}^k + β m_{t-1}. ``seed``: the noise streams'. ``foreach``/``fused`` go to torch.
    """

    base_step = torch.optim.SGD.step

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, perturbation: str = "extrap", gamma: float | None = None,
                 gamma_factor: float = 1.0, lr_scale: float = 1.0, lars: bool = False, trust: float = 0.02,
                 comm=None, *, lars_lookahead: bool = True, gamma_warmup: bool = True,
                 direction: str = "gradient", seed: int = 0, foreach: bool | None = None,
                 fused: bool | None = None):
        check_optimizer_arguments(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, comm=comm)
        if nesterov and momentum == 0:
            raise ValueError("nesterov: expected False when momentum is 0, got True")
        params = list(params)
        if fused is None and foreach is None:  # torch's one-pass kernel where it has one, but not
            # where a process holds K workers (their models may be [K, ...] tensors): its vector
            # body and scalar tail round differently, and would drift apart equal workers
            tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
            fused = len((comm or LocalComm(0)).worker_ids) == 1 and all(
                t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
            foreach = None if fused else True
        super().__init__(params, perturbation, direction, comm, seed,
                         dict(gamma=gamma, gamma_factor=gamma_factor, lr_scale=lr_scale, gamma_warmup=bool(gamma_warmup),
                              lars=bool(lars), trust=float(trust), lars_lookahead=bool(lars_lookahead)),
                         lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         foreach=foreach, fused=fused or None)


class ExtrapolatedAdam(_Extrapolation, torch.optim.Adam):
    r"""``torch.optim.Adam`` with each worker extrapolating through Adam's preconditioner (the
    paper's Algorithm 3): x̃ = x_t − γ g_{t-1}^k / (√v̂_t + ε). ``precondition=False`` extrapolates
    along the raw γ g_{t-1}^k. With γ = 0 (or ``perturbation="none"``) this is ``torch.optim.Adam``.
    Other arguments as ``ExtrapolatedSGD``."""

    base_step = torch.optim.Adam.step

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, perturbation: str = "extrap",
                 gamma: float | None = None, comm=None, *, gamma_factor: float = 1.0, lr_scale: float = 1.0,
                 gamma_warmup: bool = True, precondition: bool = True, direction: str = "gradient", seed: int = 0,
                 foreach: bool | None = None, fused: bool | None = None):
        check_optimizer_arguments(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, perturbation, direction, comm, seed,
                         dict(gamma=gamma, gamma_factor=gamma_factor, lr_scale=lr_scale,
                              gamma_warmup=bool(gamma_warmup), precondition=bool(precondition)),
                         lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach, fused=fused)

    def precondition(self, group, params, directions):
        """d / (√v̂ + ε) with Adam's current second moment; the raw d before Adam's first step."""
        states = [self.state.get(p, {}) for p in params]
        return [d / (s["exp_avg_sq"] / (1 - group["betas"][1] ** s["step"])).sqrt_().add_(group["eps"])
                if group["precondition"] and "exp_avg_sq" in s else d for d, s in zip(directions, states)]
