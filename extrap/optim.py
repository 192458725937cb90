"""Extrapolated SGD and Adam (Lin, Kong, Stich, Jaggi, ICML 2020) as a thin layer on
``torch.optim.SGD`` and ``torch.optim.Adam``.

The paper's Algorithm 1, for worker k at step t, and where each line lives::

    x̃_t^k   = x_t − γ_t g_{t-1}^k          perturb(): save x_t, move by γ·d (d: ``extrap.perturbations``)
    g_t^k   = ∇f(x̃_t^k; ξ_t^k)             the caller's forward and backward, at x̃
    x_t restored; g_t^k kept               step(): the copy back, then ``local_grad`` in the state
    g_t     = mean_k g_t^k                  step(): ``comm.average``, once per step (DDP's own in backward)
    x_{t+1} = SGD-Nesterov(x_t, g_t)        step(): LARS (``extrap.lars``) on ``.grad``, then torch's step

With d ≡ 0 each optimizer is exactly its base. Adam (Algorithm 3) swaps the last line for torch's
Adam and passes d through Adam's preconditioner. Where the workers are and how gradients are
averaged is the communicator's business (``extrap.engines.comm``); where K workers share one x_t,
x̃ is written to their ``Points`` instead of the parameters. Inside a user's loop the update uses
the gradient the loop hands to ``step()`` (clipped, unscaled), while g_t^k is kept as backward left
it and freed of the loss scale; a step GradScaler skips keeps x_t and g_{t-1}^k. The choices the
paper leaves open are in ``docs/method.md``.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from .arguments import check_optimizer_arguments, require
from .engines.comm import NO_POINTS, LocalComm, average_
from .lars import larc_, trust_lookahead
from .local_grads import LocalGradients
from .perturbations import DIRECTIONS, PERTURBATIONS, REGISTRY, Perturbation

__all__ = ["Perturbation", "PERTURBATIONS", "REGISTRY", "DIRECTIONS", "ExtrapolatedSGD", "ExtrapolatedAdam"]


def refuse_without_comm(perturbation: str) -> None:
    """A perturbation that needs each worker's own gradient, in a process group of several ranks
    without a communicator: .grad may be DDP's average already, and every worker would extrapolate alike."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            f"perturbation={perturbation!r} needs each rank's local gradient, but this optimizer has no "
            f"communicator in a process group of {dist.get_world_size()} ranks, so it cannot tell a local "
            "gradient from one DistributedDataParallel has averaged. Under DDP call "
            "extrap.register_ddp(ddp_model, optimizer) once after building both; without DDP pass "
            "comm=extrap.engines.TorchDistComm() to average the gradients in step().")


class _Extrapolation(LocalGradients):
    """perturb() and step() around a torch optimizer's update; mixed in before the torch class."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "_allreduce_grad_async"):  # horovod.torch.DistributedOptimizer's class around ours
            raise TypeError("hvd.DistributedOptimizer averages gradients during backward, so every worker "
                            "would keep the average as its local gradient; do not wrap an extrap optimizer "
                            "in it: give the optimizer comm=extrap.engines.HorovodComm() (the horovod engine)")

    def __init__(self, params, perturbation, direction, comm, seed, group_keys, **torch_args):
        require({"perturbation": (perturbation, perturbation in PERTURBATIONS, "one of " + ", ".join(PERTURBATIONS)),
                 "direction": (direction, direction in DIRECTIONS, "one of " + ", ".join(DIRECTIONS))})
        check_optimizer_arguments(comm=comm, seed=seed, gamma=group_keys["gamma"], lr_scale=group_keys["lr_scale"],
                                  gamma_factor=group_keys["gamma_factor"])
        self.perturbation, self.kind = perturbation, REGISTRY[perturbation]
        self.direction, self.comm, self.seed, self._group_keys = direction, comm, seed, group_keys
        self.points = NO_POINTS if comm is None else comm.points  # the engine's store, taken once
        self._x_t: list[Tensor] = []  # scratch, not state: x_t while the parameters are at x̃
        self._perturbed: list[Tensor] | None = None  # the parameters perturb() moved
        self.auto_perturb = False  # extrap.attach: perturb() runs on the first training forward after a step
        super().__init__(params, **torch_args)
        # GradScaler then calls step() even for a step it skips, saying so (found_inf) with the loss
        # scale (grad_scale) while .grad is still scaled: step() keeps x_t and g^k on a skip
        self._step_supports_amp_scaling = True

    def add_param_group(self, param_group: dict) -> None:
        param_group.update({**self._group_keys, "peak_lr": 0.0, **param_group})  # keys torch does not know
        param_group.setdefault("initial_rate", param_group.get("lr", self.defaults["lr"]))  # the rate given here
        super().add_param_group(param_group)
        if self.kind.keeps_local_grad:
            self._capture_raw_gradients(param_group["params"])

    layout = property(lambda self: self.comm or LocalComm(), doc="The communicator, or this process alone.")
    perturbed = property(lambda self: self._perturbed is not None,
                         doc="True from perturb() to step() or restore(): the parameters are at x̃.")

    def point(self, p: Tensor) -> Tensor:
        """Where this process's workers compute for parameter ``p``: ``p`` itself, or their points."""
        return self.points.of(p)

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for _, q in self.points.shared(self._params()):
            if q.grad is not None:
                q.grad = None if set_to_none else q.grad.zero_()

    def gamma(self, group: dict) -> float:
        """γ_t: the group's fixed ``gamma``, or by default gamma_factor · η_t · b/B, the rate that
        linear scaling gives the local batch b (η_t / ``lr_scale``), following η_t's warmup and
        decays. ``gamma_warmup=False`` (the earlier rule) ignores the warmup: the rate given at
        construction times the decays since. The noises' and SAM's magnitude (σ, a, α, ρ) is the
        rate given at construction, fixed."""
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
            self._x_t = [torch.empty_like(p) for p in self._perturbed]
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
        """Put x_t back where ``perturb()`` moved the parameters, without an update (a loop that
        skips ``step()``): the next ``perturb()`` goes to the same x̃. A no-op when not perturbed."""
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
            raise RuntimeError("step(average=False): the workers share one x_t; a local step needs "
                               "their own models (PostLocalSGD splits them at its switch)")
        keep = self.kind.keeps_local_grad and bool(params)
        grad_scale = local_scale = 1.0 if scale is None else scale  # what .grad and g_t^k carry
        if shared:  # the workers' own gradients, as they are; their mean is x_t's
            local = [at[id(p)].grad for p in params]
            for p, mean in zip(params, self.comm.average(local)):
                p.grad, at[id(p)].grad = mean, None
        elif keep:  # into the state after torch's step, which fills only empty state
            local = [self.state[p].get("local_grad") for p in params]
            local = [torch.empty_like(p.grad) if t is None else t for t, p in zip(local, params)]
            raw, at_backward = self._local_gradients(params)
            torch._foreach_copy_(local, raw)
            local_scale = self._scaler_scale() if scale is None and at_backward else local_scale
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
        self._lars_and_update(LocalComm(0) if shared else self.layout)  # the update sees x_t once
        if shared:  # every worker's point back at x_t (now x_{t+1}), gradient or not
            torch._foreach_copy_([q for _, q in shared], [p.expand_as(q) for p, q in shared])
        for p, t in zip(params, local) if keep else ():
            self.state[p]["local_grad"] = t
        return loss

    def _lars_and_update(self, layout) -> None:
        """LARS on ``.grad`` where asked (it folds in weight decay, so torch's step must not add it),
        then torch's own step, without torch's hook wrapper: our step() runs the hooks once."""
        lars = [(g, g["weight_decay"]) for g in self.param_groups if g.get("lars")]
        for group, _ in lars:
            larc_(group, layout)
            group["weight_decay"] = 0.0
        try:
            base = type(self).base_step
            (base.__wrapped__ if getattr(base, "hooked", False) else base)(self)
        finally:
            for group, wd in lars:
                group["weight_decay"] = wd


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
