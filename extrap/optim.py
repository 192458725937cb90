"""Extrapolated SGD and Adam (Lin, Kong, Stich, Jaggi, ICML 2020) on ``torch.optim.SGD`` and
``torch.optim.Adam``. The paper's Algorithm 1, for worker k at step t, and where each line lives::

    x̃_t^k   = x_t − γ_t g_{t-1}^k          perturb(): save x_t, move by γ·d (d: ``extrap.perturbations``)
    g_t^k   = ∇f(x̃_t^k; ξ_t^k)             the caller's forward and backward, at x̃
    x_t restored; g_t^k kept               step(), with ``extrap.local_grads`` inside a user's loop
    g_t     = mean_k g_t^k                  step(): ``comm.average`` (or DDP's own, in backward)
    x_{t+1} = SGD-Nesterov(x_t, g_t)        step(): ``extrap.lars`` on ``.grad``, then torch's step

With d ≡ 0 each is exactly its base optimizer; Adam (Algorithm 3) passes d through Adam's
preconditioner. Workers and averaging are the communicator's business (``extrap.engines.comm``);
where K workers share one x_t, x̃ is written to their ``Points``. ``docs/method.md`` explains the
choices the paper leaves open.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from .arguments import check_optimizer_arguments, require, sgd_kernel
from .engines.comm import NO_POINTS, LocalComm, average_
from .lars import lars_update, trust_lookahead
from .local_grads import LocalGradients
from .perturbations import DIRECTIONS, PERTURBATIONS, REGISTRY, Perturbation

__all__ = ["Perturbation", "PERTURBATIONS", "REGISTRY", "DIRECTIONS", "ExtrapolatedSGD", "ExtrapolatedAdam"]


def refuse_without_comm(perturbation: str) -> None:
    """No communicator among several ranks: .grad may be DDP's average, and all would extrapolate alike."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(f"perturbation={perturbation!r} needs each rank's local gradient, but this optimizer has "
                           f"no communicator in a process group of {dist.get_world_size()} ranks, so it cannot tell a "
                           "local gradient from one DistributedDataParallel has averaged. Under DDP call "
                           "extrap.register_ddp(ddp_model, optimizer) once after building both; without DDP pass "
                           "comm=extrap.engines.TorchDistComm() to average the gradients in step().")


class _Extrapolation(LocalGradients):
    """perturb() and step() around a torch optimizer's update; mixed in before the torch class."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "_allreduce_grad_async"):  # horovod.torch.DistributedOptimizer's class around ours
            raise TypeError("hvd.DistributedOptimizer averages gradients during backward, so every worker would "
                            "keep the average as its local gradient; give the optimizer comm=extrap.engines.HorovodComm()")

    def __init__(self, params, perturbation, direction, comm, seed, group_keys, **torch_args):
        require({"perturbation": (perturbation, perturbation in PERTURBATIONS, "one of " + ", ".join(PERTURBATIONS)),
                 "direction": (direction, direction in DIRECTIONS, "one of " + ", ".join(DIRECTIONS))})
        check_optimizer_arguments(comm=comm, seed=seed, gamma=group_keys["gamma"], lr_scale=group_keys["lr_scale"],
                                  gamma_factor=group_keys["gamma_factor"])
        self.perturbation, self.kind = perturbation, REGISTRY[perturbation]
        self.direction, self.comm, self.seed, self._group_keys = direction, comm, seed, group_keys
        self.points = NO_POINTS if comm is None else comm.points  # the engine's store, taken once
        self._x_t, self._perturbed = [], None  # scratch, not state: x_t while the parameters it saves are at x̃
        self.auto_perturb = False  # extrap.attach: perturb() runs on the first training forward after a step
        super().__init__(params, **torch_args)
        self._step_supports_amp_scaling = True  # GradScaler leaves skipping and unscaling to step()

    def add_param_group(self, param_group: dict) -> None:
        param_group.update({**self._group_keys, "peak_lr": 0.0, **param_group})  # keys torch does not know
        param_group.setdefault("initial_rate", param_group.get("lr", self.defaults["lr"]))  # the rate given here
        super().add_param_group(param_group)
        if self.kind.keeps_local_grad:
            self._capture_raw_gradients(param_group["params"])

    layout = property(lambda self: self.comm or LocalComm(), doc="The communicator, or this process alone.")
    perturbed = property(lambda self: self._perturbed is not None,
                         doc="True from perturb() to step() or restore(): the parameters are at x̃.")

    point = property(lambda self: self.points.of, doc="p -> where its workers compute: p, or their points.")

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.points.zero_grad(self._params(), set_to_none)

    def gamma(self, group: dict) -> float:
        """γ_t: the group's fixed ``gamma``, or gamma_factor · η_t · b/B (η_t / ``lr_scale``: the local
        batch's rate), following η_t's warmup and decays; ``gamma_warmup=False``: the given rate times
        the decays since. The noises' and SAM's magnitude (σ, a, α, ρ) is the given rate, fixed."""
        if group["gamma"] is not None:
            return group["gamma"]
        rate = group["lr"]
        if not self.kind.scheduled:
            rate = group["initial_rate"]
        elif not group["gamma_warmup"]:
            group["peak_lr"] = max(group["peak_lr"], group["lr"])
            rate = group["initial_rate"] * group["lr"] / group["peak_lr"] if group["peak_lr"] > 0 else 0.0
        return group["gamma_factor"] * rate / group["lr_scale"]

    def precondition(self, group: dict, params: list[Tensor], directions: list[Tensor]) -> list[Tensor]:
        return directions  # ExtrapolatedAdam's passes d through Adam's preconditioner

    @torch.no_grad()
    def perturb(self, closure: Callable[[], Tensor] | None = None):
        """Move the workers to x̃ = x_t − γ·d (their points where they share x_t, which stays);
        ``step()`` brings x_t back. ``extragradient`` and ``sam`` need ``closure`` (zero_grad,
        forward, backward on this worker's batch at x_t) to form d; its loss is returned."""
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
            with torch.enable_grad(), self.layout.local_backward():  # d is this worker's own
                loss = closure()
        groups = [(g, ps) for g in self.param_groups if (ps := [p for p in g["params"] if p.requires_grad and (
            not self.kind.closure or self.point(p).grad is not None)])]
        shared = bool(self.points.shared(self._params()))
        self._perturbed = [] if shared else [p for _, ps in groups for p in ps]  # x_t to save
        if [t.shape for t in self._x_t] != [p.shape for p in self._perturbed]:
            self._x_t = [torch.empty_like(p) for p in self._perturbed]  # reused from step to step
        if self._perturbed:
            torch._foreach_copy_(self._x_t, self._perturbed)
        for (group, ps), ds in zip(groups, self.kind.direction(self, groups)):
            if gamma := self.gamma(group):
                points = [self.point(p) for p in ps]
                if group.get("lars") and group.get("lars_lookahead") and self.kind.scheduled:
                    ds = trust_lookahead(group, self.layout, points, ds, gamma)
                torch._foreach_add_(points, ds, alpha=-gamma)
        if self.kind.closure:
            self.zero_grad(set_to_none=True)  # the caller's backward at x̃ starts clean
        return loss

    @torch.no_grad()
    def restore(self) -> None:
        """x_t back without an update (a loop that skips ``step()``); the next x̃ is the same one."""
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, self._x_t)
        self._perturbed = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, average: bool = True):
        """Restore x_t → keep g_t^k (``extrap``; g_t^k − g_t for ``stochastic``) → average → LARS →
        torch's update. ``average=False`` steps on the local gradient alone (post-local SGD's local
        phase). Where the workers share x_t their points' gradients are g_t^k, their mean becomes
        x_t's ``.grad``, the update runs once on x_t, and the points are set to x_{t+1}."""
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        if self.auto_perturb and self._perturbed is None and self.kind.direction is not None:
            raise RuntimeError("extrap.attach: no training-mode forward of the attached model ran since the last "
                               "step(), so the gradient was not taken at x̃; attach the module the forward runs through")
        scale, skip = self._loss_scale()
        self.restore()
        if skip:  # GradScaler found inf/NaN: x_t and the kept local gradient stay as they were
            return loss
        shared = self.points.shared(self._params())
        at = {id(p): q for p, q in shared}
        params = [p for p in self._params() if at.get(id(p), p).grad is not None]
        if self.comm is None and (self.kind.keeps_local_grad or self.kind.closure):
            refuse_without_comm(self.perturbation)
        if shared and not average:
            raise RuntimeError("step(average=False): the workers share one x_t; a local step needs their own models")
        keep = self.kind.keeps_local_grad and bool(params)
        grad_scale = local_scale = 1.0 if scale is None else scale  # what .grad and g_t^k carry
        if shared:  # the workers' own gradients, as they are; their mean is x_t's
            local = [at[id(p)].grad for p in params]
            for p, mean in zip(params, self.comm.average(local)):
                p.grad, at[id(p)].grad = mean, None
        elif keep:
            local, local_scale = self._keep_local(params, scale)
        grads = [p.grad for p in params]
        if grad_scale != 1.0 and grads:  # GradScaler left the unscaling to step()
            torch._foreach_mul_(grads, 1.0 / grad_scale)
        if keep and local_scale != 1.0:
            torch._foreach_mul_(local, 1.0 / local_scale)
        if average and self.comm is not None and grads and not shared:
            average_(self.comm, grads)
        if self.perturbation == "stochastic" and keep:  # the deviation from the average; 0 locally
            if not average or self.comm is None:
                torch._foreach_zero_(local)
            elif not self.comm.averages_in_backward:  # (the DDP hook keeps the deviation itself)
                torch._foreach_sub_(local, grads)
        lars_update(self, LocalComm(0) if shared else self.layout)  # the update sees x_t once
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
    too (‖γ·d‖ ≤ τ‖x‖ per tensor). ``comm``: a communicator (``extrap.engines``; ``None``: ``.grad``
    as it is). ``direction``: d = g_{t-1}^k or g_{t-1}^k + β m_{t-1}. ``seed``: the noises'."""

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
        foreach, fused = sgd_kernel(params, comm or LocalComm(0), foreach, fused)
        super().__init__(params, perturbation, direction, comm, seed,
                         dict(gamma=gamma, gamma_factor=gamma_factor, lr_scale=lr_scale, gamma_warmup=bool(gamma_warmup),
                              lars=bool(lars), trust=float(trust), lars_lookahead=bool(lars_lookahead)),
                         lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         foreach=foreach, fused=fused)


class ExtrapolatedAdam(_Extrapolation, torch.optim.Adam):
    r"""``torch.optim.Adam`` extrapolating through Adam's preconditioner (the paper's Algorithm 3):
    x̃ = x_t − γ g_{t-1}^k / (√v̂_t + ε); ``precondition=False``: along the raw γ g_{t-1}^k. With γ = 0
    it is ``torch.optim.Adam``. Other arguments as ``ExtrapolatedSGD``."""

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
