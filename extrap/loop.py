"""extrap in a training loop that does not call ``perturb()`` itself: Lightning, Accelerate, or a
user's loop that should read as the usual one.

    opt = extrap.ExtrapolatedSGD(model.parameters(), lr=0.1, lr_scale=K)
    extrap.attach(model, opt)          # the one extra line; model may be a DistributedDataParallel

From then on ``perturb()`` runs by itself on the first training-mode forward after each
``step()`` (once per step, whatever the number of micro-batches; never in eval mode or under
``torch.no_grad()``), and under DDP the optimizer is registered on the model
(``extrap.register_ddp``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .engines.ddp import DDPComm, register_ddp
from .optim import ExtrapolatedAdam, ExtrapolatedSGD

__all__ = ["attach", "Attached"]


@dataclass
class Attached:
    """What ``attach`` did: the extrap optimizer it found, the DDP communicator it registered
    (``None`` outside DDP), and the forward pre-hooks it added (``remove()`` takes them off)."""

    optimizer: ExtrapolatedSGD | ExtrapolatedAdam
    comm: DDPComm | None = None
    handles: list = field(default_factory=list)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.optimizer.auto_perturb = False


def _unwrap(optimizer):
    """(the extrap optimizer, what to call ``perturb()`` on, a GradScaler a wrapper holds) from
    ``optimizer`` or a wrapper around it: Lightning's ``LightningOptimizer`` (``_optimizer``),
    Accelerate's ``AcceleratedOptimizer`` (``optimizer``, ``scaler``), ``extrap.PostLocalSGD``
    (``optimizer``; its ``perturb()`` also enters the local phase)."""
    perturber, scaler, seen = None, None, optimizer
    for _ in range(8):
        if isinstance(seen, (ExtrapolatedSGD, ExtrapolatedAdam)):
            return seen, perturber or seen, scaler
        scaler = scaler or getattr(seen, "scaler", None)
        if type(seen).__name__ == "PostLocalSGD":
            perturber = seen
        seen = getattr(seen, "_optimizer", None) or getattr(seen, "optimizer", None)
        if seen is None:
            break
    raise TypeError(f"optimizer: expected an ExtrapolatedSGD or ExtrapolatedAdam, or a wrapper around one, "
                    f"got {type(optimizer).__name__}")


def attach(model: nn.Module, optimizer, *, grad_scaler=None) -> Attached:
    """Let extrap run inside a loop that never calls ``perturb()``.

    - ``model``: the module the training forward runs through: a plain module, or a
      ``DistributedDataParallel`` (then ``register_ddp(model, optimizer)`` is done here).
    - ``optimizer``: an ``ExtrapolatedSGD``/``ExtrapolatedAdam``, or a framework's wrapper around
      one (Lightning, Accelerate) or ``PostLocalSGD``.
    - ``grad_scaler``: the loop's ``torch.amp.GradScaler``, needed where the loop calls
      ``scaler.unscale_(optimizer)`` itself (to clip): the kept local gradients must be freed of
      the loss scale too. Accelerate's wrapper carries its scaler, which is taken by default.

    A forward pre-hook on every module that holds the optimizer's parameters calls ``perturb()``
    on the first forward in training mode with gradients enabled after each ``step()``; a step
    with no such forward raises rather than take a gradient at x_t. ``extragradient`` and
    ``sam`` need a closure at x_t and are refused: call ``perturb(closure)`` by hand for them.
    """
    opt, perturber, held = _unwrap(optimizer)
    if opt.kind.closure:
        raise ValueError(f"optimizer: perturbation={opt.perturbation!r} needs perturb(closure) with a gradient "
                         "at x_t, which a forward hook cannot give; call it by hand")
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    modules = [m for m in model.modules() if any(id(p) in ids for p in m.parameters(recurse=False))]
    if not modules:
        raise ValueError(f"model: none of its modules holds the optimizer's parameters ({type(model).__name__})")
    comm = None
    if isinstance(model, nn.parallel.DistributedDataParallel):
        if isinstance(opt.comm, DDPComm) and opt.comm.model is model:
            comm = opt.comm
        else:
            with warnings.catch_warnings(record=True) as said:  # said again at the caller's line
                warnings.simplefilter("always")
                comm = register_ddp(model, opt)
            for warning in said:
                warnings.warn(warning.message, stacklevel=2)

    def before_forward(module, args):
        if module.training and torch.is_grad_enabled() and not opt.perturbed:
            perturber.perturb()

    attached = Attached(opt, comm, [m.register_forward_pre_hook(before_forward) for m in modules])
    opt.auto_perturb = True
    if grad_scaler is not None or held is not None:
        opt.grad_scaler = grad_scaler or held
    return attached
