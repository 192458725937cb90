"""The smoothness probe of the paper's Figure 1b: along the trajectory, the local gradient
Lipschitz estimate  L_t = ‖∇f(x_{t+1}) − ∇f(x_t)‖ / ‖x_{t+1} − x_t‖  on a fixed probe batch."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["SmoothnessProbe"]


def _probe_gradient(module: nn.Module, loss_fn, batch) -> tuple[Tensor, Tensor]:
    """(x, ∇f(x; probe batch)) flattened; BatchNorm buffers are left as they were."""
    params = [p for p in module.parameters() if p.requires_grad]
    saved = [b.clone() for b in module.buffers()]
    inputs, targets = batch
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(module(inputs), targets), params)
    with torch.no_grad():
        for b, s in zip(module.buffers(), saved):
            b.copy_(s)
    flat = lambda ts: torch.cat([t.detach().reshape(-1).double() for t in ts])  # noqa: E731
    return flat(params), flat(grads)


class SmoothnessProbe:
    """Every ``every`` steps, record x_t and ∇f(x_t); one step later return L_t.

    Call ``observe(step, module)`` after each optimizer step with the module at x (for virtual
    workers: ``workers.eval_module(0)``). It costs two extra gradients per ``every`` steps.
    """

    def __init__(self, loss_fn: Callable, batch, every: int = 50):
        if every < 1:
            raise ValueError(f"every: expected >= 1, got {every}")
        self.loss_fn, self.batch, self.every = loss_fn, batch, every
        self._pending: tuple[int, Tensor, Tensor] | None = None
        self.history: list[dict] = []

    def due(self, step: int) -> bool:
        """Whether ``observe`` at ``step`` computes anything (a caller can skip building the module)."""
        return step % self.every == 0 or (self._pending is not None and step == self._pending[0] + 1)

    def observe(self, step: int, module: nn.Module) -> float | None:
        """Record at every ``every``-th step; one step later return (and keep) L_t."""
        if not self.due(step):
            return None
        value = None
        x, g = _probe_gradient(module, self.loss_fn, self.batch)
        if self._pending is not None and step == self._pending[0] + 1:
            start, x0, g0 = self._pending
            dx = torch.linalg.vector_norm(x - x0)
            if dx > 0:
                value = float(torch.linalg.vector_norm(g - g0) / dx)
                self.history.append({"step": start, "smoothness": value})
        self._pending = (step, x, g) if step % self.every == 0 else None
        return value

    def state_dict(self) -> dict:
        """The history and the pending (step, x, ∇f) of a half-done estimate, to resume with."""
        return {"history": list(self.history), "pending": self._pending}

    def load_state_dict(self, state: dict) -> None:
        self.history, self._pending = list(state["history"]), state["pending"]
