"""Extrapolated SGD and Adam (Lin, Kong, Stich, Jaggi, ICML 2020) as a thin layer on
``torch.optim.SGD`` and ``torch.optim.Adam``.

The paper's Algorithm 1, for worker k at step t, and where each line lives below::

    x̃_t^k   = x_t − γ_t g_{t-1}^k          perturb(): save x_t, move by u = γ·(registry's direction)
    g_t^k   = ∇f(x̃_t^k; ξ_t^k)             the caller's forward and backward, at x̃
    x_t restored bit for bit; g_t^k kept    step(): the copy back, then ``local_grad`` in the state
    g_t     = mean_k g_t^k                  step(): ``comm.all_reduce_mean_``, once per step
    x_{t+1} = SGD-Nesterov(x_t, g_t)        step(): LARS (apex's LARC) on ``.grad``, then torch's step

Every member of the paper's framework differs only in u (``PERTURBATIONS``); with u ≡ 0 each is
exactly its base optimizer. Adam (Algorithm 3) swaps the last line for torch's Adam and passes
the past gradient through Adam's preconditioner. Where the workers are and how gradients are
averaged is the communicator's business (``extrap.engines.comm.Communicator``); the choices the
paper leaves open are in ``docs/method.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

from .engines.comm import Communicator, LocalComm, scale_per_worker_, total_worker_norms, worker_norms

__all__ = ["Perturbation", "PERTURBATIONS", "REGISTRY", "DIRECTIONS", "ExtrapolatedSGD",
           "ExtrapolatedAdam"]

DIRECTIONS = ("gradient", "momentum")  # the past-gradient direction: g_{t-1}^k, or g_{t-1}^k + β m_{t-1}
LARS_EPS = 1e-8  # apex LARC's ε


# -- u, the perturbation: one registry entry per name ---------------------------------------------

def _past_gradient(opt, groups):
    """extrap: g_{t-1}^k; stochastic: g_{t-1}^k − g_{t-1} (as step() kept it; none before step 1)."""
    out = []
    for group, ps in groups:
        ps = [p for p in ps if "local_grad" in opt.state.get(p, {})]
        ds = [opt.state[p]["local_grad"] for p in ps]
        if opt.direction == "momentum":  # look ahead along the momentum too (docs/method.md)
            bufs = [opt.state[p].get("momentum_buffer") for p in ps]
            ds = [d if m is None else d.add(m, alpha=group.get("momentum", 0.0)) for d, m in zip(ds, bufs)]
        out.append((ps, opt.precondition(group, ps, ds)))
    return out


def _noise(dist: str, per_filter: bool):
    """N(0, 1) or U(−1, 1) per element, one draw of all its values per worker from its own stream;
    per filter j (an output-channel slice; a 1-D tensor is one filter) times ‖x_j‖/√n_j."""
    def form(opt, groups):
        out = []
        layout = opt.layout
        for _, ps in groups:
            if not ps:
                out.append((ps, []))
                continue
            views = [layout.per_worker(p) for p in ps]  # [W, ...]
            sizes = [v[0].numel() for v in views]
            draws = torch.empty(len(layout.worker_ids), sum(sizes), device=ps[0].device, dtype=ps[0].dtype)
            for flat, w in zip(draws, layout.worker_ids):
                gen = opt.generator(w, flat.device)
                flat.normal_(generator=gen) if dist == "normal" else flat.uniform_(-1.0, 1.0, generator=gen)
            noise = [c.reshape(v.shape) for c, v in zip(draws.split(sizes, dim=1), views)]
            if per_filter:
                torch._foreach_mul_(noise, [_filter_rms(v) for v in views])
            out.append((ps, [n.view(p.shape) for n, p in zip(noise, ps)]))
        return out
    return form


def _filter_rms(v: Tensor) -> Tensor:
    """‖x_j‖/√n_j per worker and filter of a view [W, ...] (a 1-D tensor is one filter), to broadcast."""
    lead = 2 if v.dim() > 2 else 1
    flat = v.reshape(*v.shape[:lead], -1)
    return (torch.linalg.vector_norm(flat, dim=-1) / math.sqrt(flat.shape[-1])).reshape(
        *v.shape[:lead], *[1] * (v.dim() - lead))


def _fresh_gradient(opt, groups):
    """extragradient: ∇f(x_t; ξ^k), from the closure's backward at x_t."""
    return [(ps, [p.grad for p in ps]) for _, ps in groups]


def _sam(opt, groups):
    """SAM's ascent (Foret et al. 2021): −∇f(x_t; ξ^k)/‖∇f(x_t; ξ^k)‖, the norm over all of a worker's
    gradients."""
    grads = [p.grad for _, ps in groups for p in ps]
    inv = 1.0 / (total_worker_norms(opt.layout, grads) + 1e-12)  # [W]
    out = [(ps, torch._foreach_mul([p.grad for p in ps], -1.0) if ps else []) for _, ps in groups]
    scale_per_worker_(opt.layout, [d for _, ds in out for d in ds], inv)
    return out


@dataclass(frozen=True)
class Perturbation:
    """One member of the framework: ``direction(opt, [(group, params)])`` gives, per group, the
    parameters it moves and d with u = γ·d; ``closure``: d needs a fresh gradient at x_t (the
    caller's closure); ``scheduled``: γ is a step size that by default follows the small-batch
    learning rate's decays (else a magnitude — σ, a, α, ρ — that stays fixed); ``keeps_local_grad``:
    step() keeps g_t^k for the next d."""

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


# -- the layer on torch's optimizers ---------------------------------------------------------------

def _check(name: str, ok: bool, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def _nonneg(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _larc_(opt, group: dict) -> None:
    """LARS as apex's LARC, on ``.grad`` before the base step: (g + λx)·min(τ‖x‖/(‖g‖ + λ‖x‖ + ε)/η, 1)
    per worker for tensors of ≥ 2 dimensions (factor 1 where ‖x‖ or ‖g‖ is 0), g + λx for the rest."""
    ps, wd, layout = [p for p in group["params"] if p.grad is not None], group["weight_decay"], opt.layout
    adapt = [p for p in ps if layout.per_worker(p).dim() >= 3]
    pn, gn = worker_norms(layout, adapt), worker_norms(layout, [p.grad for p in adapt])
    ratio = group["trust"] * pn / (gn + wd * pn + LARS_EPS) / group["lr"]
    factor = torch.where((pn > 0) & (gn > 0), ratio.clamp(max=1.0), torch.ones_like(ratio))
    if wd != 0 and ps:
        torch._foreach_add_([p.grad for p in ps], ps, alpha=wd)
    scale_per_worker_(layout, [p.grad for p in adapt], factor)


def _unhooked(step):
    """A torch optimizer's own ``step`` without torch's hook wrapper: our ``step`` runs the hooks."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step


class _Extrapolation:
    """perturb() and step() around a torch optimizer's update; mixed in before the torch class."""

    def _setup(self, *, perturbation, gamma, lr_scale, direction, comm, seed, extra):
        _check("perturbation", perturbation in REGISTRY, perturbation, "one of " + ", ".join(REGISTRY))
        _check("gamma", gamma is None or (_nonneg(gamma)), gamma, "None or a float >= 0")
        _check("lr_scale", _nonneg(lr_scale) and lr_scale > 0, lr_scale, "a float > 0")
        _check("direction", direction in DIRECTIONS, direction, "one of " + ", ".join(DIRECTIONS))
        _check("seed", isinstance(seed, int) and not isinstance(seed, bool), seed, "an integer")
        _check("comm", comm is None or isinstance(comm, Communicator), comm,
               "a communicator (all_reduce_mean_, per_worker, worker_ids)")
        self.perturbation, self.kind = perturbation, REGISTRY[perturbation]
        self.direction, self.comm, self.seed = direction, comm, seed
        # the group keys torch does not know; add_param_group fills them in
        self._extra = dict(gamma=gamma, lr_scale=float(lr_scale), **extra)
        self._x_t: list[Tensor] = []  # scratch, not state: x_t while the parameters are at x̃
        self._perturbed: list[Tensor] | None = None  # the parameters perturb() moved
        self._generators: dict[int, torch.Generator] = {}
        self._generator_states: dict[int, Tensor] = {}
        self._alone: LocalComm | None = None  # the layout when comm is None

    def add_param_group(self, param_group: dict) -> None:
        for key, value in self._extra.items():
            param_group.setdefault(key, value)
        # γ's default: the small-batch rate η/lr_scale at the rate given here, times the decays
        # applied since (see gamma())
        param_group.setdefault("small_batch_lr", param_group.get("lr", self.defaults["lr"]) / param_group["lr_scale"])
        param_group.setdefault("peak_lr", 0.0)
        super().add_param_group(param_group)

    @property
    def layout(self) -> Communicator:
        """The communicator, or this process alone (its rank, under torch.distributed, seeds its noise)."""
        if self.comm is not None:
            return self.comm
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if self._alone is None or self._alone.worker_ids != (rank,):  # built once, not per access
            self._alone = LocalComm(rank)
        return self._alone

    def generator(self, worker: int, device: torch.device) -> torch.Generator:
        """Worker ``worker``'s noise stream: the same numbers in a process and as a virtual worker."""
        gen = self._generators.get(worker)
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + worker)
            if worker in self._generator_states:
                gen.set_state(self._generator_states.pop(worker))
            self._generators[worker] = gen
        return gen

    def gamma(self, group: dict) -> float:
        """γ_t: the group's ``gamma``; by default the learning rate of small-batch training, i.e.
        η_base = lr/lr_scale times the decays since: η_t over the highest η seen so far. A warmup,
        which raises η to its peak, leaves γ at η_base; a decay lowers γ with η."""
        if group["gamma"] is not None:
            return group["gamma"]
        if not self.kind.scheduled:  # a magnitude (σ, a, α, ρ): fixed at the small-batch rate
            return group["small_batch_lr"]
        group["peak_lr"] = max(group["peak_lr"], group["lr"])
        return group["small_batch_lr"] * group["lr"] / group["peak_lr"] if group["peak_lr"] > 0 else 0.0

    def precondition(self, group: dict, params: list[Tensor], directions: list[Tensor]) -> list[Tensor]:
        return directions

    @torch.no_grad()
    def perturb(self, closure: Callable[[], Tensor] | None = None):
        """Move the parameters to this worker's x̃ = x_t − u; ``step()`` brings x_t back.

        ``extragradient`` and ``sam`` need ``closure``: it zeroes the gradients and runs forward
        and backward on this worker's batch at x_t; that gradient forms u and is then cleared.
        Returns the closure's loss, if any. A no-op for ``none``.
        """
        if self.kind.direction is None:
            return None
        if self._perturbed is not None:
            raise RuntimeError("perturb() called twice without step(): x_t would be lost")
        loss = None
        if self.kind.closure:
            if closure is None:
                raise ValueError(f"closure: perturbation={self.perturbation!r} needs a closure that "
                                 "computes this worker's gradient at x_t")
            with torch.enable_grad():
                loss = closure()
        groups = [(g, [p for p in g["params"] if p.requires_grad and (not self.kind.closure or p.grad is not None)])
                  for g in self.param_groups]
        params = [p for _, ps in groups for p in ps]
        if [t.shape for t in self._x_t] != [p.shape for p in params]:
            self._x_t = [torch.empty_like(p) for p in params]
        if params:
            torch._foreach_copy_(self._x_t, params)
        self._perturbed = params
        for (group, _), (ps, ds) in zip(groups, self.kind.direction(self, groups)):
            gamma = self.gamma(group)
            if ps and gamma != 0:
                torch._foreach_add_(ps, ds, alpha=-gamma)
        if self.kind.closure:
            self.zero_grad(set_to_none=True)  # the caller's backward at x̃ starts clean
        return loss

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, average: bool = True):
        """Restore x_t, keep the local gradient, average through ``comm``, then torch's update.

        The local gradient is kept before averaging for ``extrap`` (g^k) and ``stochastic``
        (g^k − ḡ). ``average=False`` steps on the local gradient alone (post-local SGD's local
        phase).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, self._x_t)
        self._perturbed = None
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("extrap optimizers do not support sparse gradients")
        grads = [p.grad for p in params]
        keep = self.kind.keeps_local_grad and params
        if keep:
            local = [self.state[p].get("local_grad") for p in params]
            new = [i for i, t in enumerate(local) if t is None]  # state added after the base step:
            for i in new:  # torch initialises a parameter's state only when it finds it empty
                local[i] = torch.empty_like(grads[i])
            torch._foreach_copy_(local, grads)
        if average and self.comm is not None and grads:
            self.comm.all_reduce_mean_(grads)
        if self.perturbation == "stochastic" and keep:
            if average:  # the worker's deviation from the average (0 for one worker)
                torch._foreach_sub_(local, grads)
            else:  # a local phase has no average to deviate from
                torch._foreach_zero_(local)
        decayed = [(g, g["weight_decay"]) for g in self.param_groups if g.get("lars")]
        for group, _ in decayed:
            _larc_(self, group)  # folds weight decay into .grad, so torch's step must not add it
            group["weight_decay"] = 0.0
        try:
            _unhooked(type(self).base_step)(self)
        finally:
            for group, wd in decayed:
                group["weight_decay"] = wd
        if keep:
            for i in new:
                self.state[params[i]]["local_grad"] = local[i]
        return loss

    def state_dict(self) -> dict:
        """torch's state (momentum or moments, and the local gradient) and each worker's noise
        stream, so that a resumed run draws what an uninterrupted one would."""
        sd = super().state_dict()
        streams = {**self._generator_states, **{w: g.get_state() for w, g in self._generators.items()}}
        sd["extrap"] = {"perturbation": self.perturbation, "generators": streams}
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


class ExtrapolatedSGD(_Extrapolation, torch.optim.SGD):
    r"""``torch.optim.SGD`` (Nesterov momentum) with its gradient taken at an extrapolated point.

    ``lr`` is the scaled large-batch rate η and ``lr_scale`` the scaling factor B/b_base.
    ``gamma`` is the perturbation's one magnitude (γ, or σ, a, α, ρ for the noises and SAM;
    ``None``: ``gamma()``). ``lars``/``trust``: apex's LARC. ``comm``: a communicator from
    ``extrap.engines`` (``None``: ``.grad`` as it is). ``direction``: γ·g_{t-1}^k or
    γ·(g_{t-1}^k + β m_{t-1}). ``seed``: worker w's noise stream is seed·1000003 + w.
    ``foreach``/``fused`` go to torch (default: fused where torch has it, see below).
    """

    base_step = torch.optim.SGD.step

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, perturbation: str = "extrap", gamma: float | None = None,
                 lr_scale: float = 1.0, lars: bool = False, trust: float = 0.02, comm=None, *,
                 direction: str = "gradient", seed: int = 0, foreach: bool | None = None,
                 fused: bool | None = None):
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            _check(name, _nonneg(value), value, "a float >= 0")
        _check("momentum", _nonneg(momentum) and momentum < 1, momentum, "a float in [0, 1)")
        _check("nesterov", not (nesterov and momentum == 0), nesterov, "False when momentum is 0")
        _check("trust", _nonneg(trust) and trust > 0, trust, "a float > 0")
        params = list(params)
        self._setup(perturbation=perturbation, gamma=gamma, lr_scale=lr_scale, direction=direction,
                    comm=comm, seed=seed, extra=dict(lars=bool(lars), trust=float(trust)))
        if fused is None and foreach is None:
            # torch's one-pass kernel where it has one. Not over K workers side by side in one
            # tensor: its vector body and scalar tail round differently, so workers at different
            # offsets would drift apart; foreach keeps synchronous workers bitwise equal.
            tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
            fused = all(t.is_floating_point() and t.device.type in ("cpu", "cuda")
                        and len(self.layout.per_worker(t)) == 1 for t in tensors)
            foreach = None if fused else True
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, foreach=foreach, fused=fused or None)


class ExtrapolatedAdam(_Extrapolation, torch.optim.Adam):
    r"""``torch.optim.Adam`` with each worker extrapolating through Adam's preconditioner (the
    paper's Algorithm 3): x̃ = x_t − γ g_{t-1}^k / (√v̂_t + ε).

    ``precondition=False`` extrapolates along the raw γ g_{t-1}^k. With γ = 0 (or
    ``perturbation="none"``) this is ``torch.optim.Adam``. Other arguments as ``ExtrapolatedSGD``.
    """

    base_step = torch.optim.Adam.step

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, perturbation: str = "extrap",
                 gamma: float | None = None, comm=None, *, lr_scale: float = 1.0,
                 precondition: bool = True, direction: str = "gradient", seed: int = 0,
                 foreach: bool | None = None, fused: bool | None = None):
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            _check(name, _nonneg(value), value, "a float >= 0")
        _check("betas", len(betas) == 2 and all(_nonneg(b) and b < 1 for b in betas), betas,
               "two floats in [0, 1)")
        self._setup(perturbation=perturbation, gamma=gamma, lr_scale=lr_scale, direction=direction,
                    comm=comm, seed=seed, extra=dict(precondition=bool(precondition)))
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         foreach=foreach, fused=fused)

    def precondition(self, group, params, directions):
        """d / (√v̂ + ε) with Adam's current second moment; the raw d before Adam's first step."""
        out = []
        for p, d in zip(params, directions):
            state = self.state.get(p, {})
            if group["precondition"] and "exp_avg_sq" in state:
                v_hat = state["exp_avg_sq"] / (1 - group["betas"][1] ** state["step"])
                d = d / v_hat.sqrt_().add_(group["eps"])
            out.append(d)
        return out
