"""Each worker's own gradient g_t^k, as backward left it, inside whatever loop the user writes.

The update uses the gradient the loop hands to ``step()`` (clipped, unscaled by GradScaler), but
extrapolation needs g_t^k as backward produced it: under DDP the communicator's hook keeps a copy
(``DDPComm.local_gradients``); in one process a post-accumulate-grad hook does (here). Either copy
may still carry GradScaler's loss scale, which ``step()`` learns here and removes.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

__all__ = ["LocalGradients"]


class LocalGradients:
    """Mixed into the extrap optimizers: the raw local gradients and the loss scale they carry."""

    def __init__(self, *args, **kwargs):
        self._captured: dict[Tensor, Tensor] = {}  # one process: each parameter's raw gradient, as backward left it
        self._fresh: set[Tensor] = set()  # the parameters whose raw gradient backward captured since the last step
        self.grad_scaler = None  # the loop's torch.amp.GradScaler, where step() must ask it the loss scale
        super().__init__(*args, **kwargs)

    def _capture_raw_gradients(self, params) -> None:
        ref = weakref.ref(self)
        for p in params:
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda p: (opt := ref()) is not None and opt._capture(p))

    def _capture(self, p: Tensor) -> None:
        """One process: keep ``p``'s raw gradient as backward leaves it, before the loop clips or
        unscales ``.grad`` (under DDP the communicator's hook keeps it)."""
        if self.comm is not None:
            return
        kept = self._captured.get(p)
        if kept is None or kept.shape != p.grad.shape or kept.dtype != p.grad.dtype or kept.device != p.grad.device:
            kept = self._captured[p] = torch.empty_like(p.grad)
        kept.copy_(p.grad)
        self._fresh.add(p)

    def _loss_scale(self) -> tuple[float | None, bool]:
        """What ``torch.amp.GradScaler.step`` said of this step: (the loss scale ``.grad`` still
        carries: 1 without a GradScaler, ``None`` where ``GradScaler.unscale_`` already freed it;
        whether to skip the step). One host sync under a GradScaler."""
        found_inf, grad_scale = self.__dict__.get("found_inf"), self.__dict__.get("grad_scale")
        if found_inf is None:
            return 1.0, False
        self.grad_scale = self.found_inf = None  # torch's step must not unscale again; GradScaler deletes both
        return (None if grad_scale is None else float(grad_scale)), bool(found_inf.item())

    def _scaler_scale(self) -> float:
        """The loss scale of the last backward: what the kept local gradients still carry after the
        loop's ``GradScaler.unscale_``."""
        if self.grad_scaler is None:
            raise RuntimeError("GradScaler.unscale_(optimizer) ran before step(): .grad is unscaled but the kept "
                               "local gradient is not, and extrap does not know the loss scale; set "
                               "optimizer.grad_scaler = scaler (or extrap.attach(model, optimizer, grad_scaler=scaler))")
        return float(self.grad_scaler.get_scale())

    def _local_gradients(self, params: list[Tensor]) -> tuple[list[Tensor], bool]:
        """Each parameter's local gradient g_t^k, and whether it is still as backward left it (before
        the loop clipped or unscaled ``.grad``): the DDP hook's copy, one process's captured
        gradient; or, under communicators that average in step(), ``.grad``."""
        if self.layout.averages_in_backward:
            return self.comm.local_gradients(params), True
        if self.comm is None:
            fresh, self._fresh = self._fresh, set()
            return [self._captured[p] if p in fresh else p.grad for p in params], True
        return [p.grad for p in params], False

    def _keep_local(self, params: list[Tensor], scale: float | None) -> tuple[list[Tensor], float]:
        """g_t^k of each parameter, copied into its state's buffer (put in the state after torch's
        step, which fills only empty state), and the loss scale it still carries."""
        local = [self.state[p].get("local_grad") for p in params]
        local = [torch.empty_like(p.grad) if t is None else t for t, p in zip(local, params)]
        raw, at_backward = self._local_gradients(params)
        torch._foreach_copy_(local, raw)
        if scale is None:  # the loop ran GradScaler.unscale_ on .grad
            return local, self._scaler_scale() if at_backward else 1.0
        return local, scale
