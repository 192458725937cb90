"""Post-local SGD (Lin et al. 2020) and, around an extrapolating optimizer, the paper's
Algorithm 2.

Until ``switch_step`` t′ every step is synchronous (gradients averaged). From t′ on each worker
steps on its own local gradient with its own momentum buffer — and, with extrapolation on, its
own past gradient — and every ``local_steps`` H local steps the models are averaged: one
all-reduce of the parameters; momentum stays local. Virtual workers, which share one x_t while
training is synchronous, are given their own models at the switch (``optimizer.points.split``).
"""

from __future__ import annotations

import torch

from .engines.comm import average_

__all__ = ["PostLocalSGD"]


class PostLocalSGD:
    """Wraps an ``ExtrapolatedSGD``/``ExtrapolatedAdam`` with a communicator (``comm=``, or the one
    ``extrap.register_ddp(ddp_model, optimizer)`` gave it: register first, then wrap).

    Use it where the optimizer would be used: ``perturb()``, ``step()``, ``zero_grad()``.
    """

    def __init__(self, optimizer, switch_step: int, local_steps: int = 16):
        if not isinstance(switch_step, int) or switch_step < 0:
            raise ValueError(f"switch_step: expected an integer >= 0, got {switch_step!r}")
        if not isinstance(local_steps, int) or local_steps < 1:
            raise ValueError(f"local_steps: expected an integer >= 1, got {local_steps!r}")
        if optimizer.comm is None:
            raise ValueError("optimizer: post-local SGD needs the optimizer's comm to average models "
                             "(comm=..., or extrap.register_ddp(ddp_model, optimizer) before this)")
        optimizer.comm.skip_averaging_when(lambda: self.local_phase)  # DDP's hook averages in backward
        self.optimizer = optimizer
        self.switch_step = switch_step
        self.local_steps = local_steps
        self.t = 0  # steps taken
        self.local_t = 0  # local steps since the switch

    @property
    def local_phase(self) -> bool:
        return self.t >= self.switch_step

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _enter_local_phase(self) -> None:
        if self.local_phase:  # virtual workers sharing x_t: K models from here on
            self.optimizer.points.split(self.optimizer)

    def perturb(self, closure=None):
        self._enter_local_phase()
        return self.optimizer.perturb(closure)

    def step(self, closure=None):
        """A synchronous step before t′; after it a local step, then every H local steps the
        models are averaged. Returns True when this step ended with a model averaging."""
        averaged = False
        self._enter_local_phase()
        if not self.local_phase:
            self.optimizer.step(closure)
        else:
            self.optimizer.step(closure, average=False)
            self.local_t += 1
            if self.local_t % self.local_steps == 0:
                self.average()
                averaged = True
        self.t += 1
        return averaged

    @torch.no_grad()
    def average(self) -> None:
        """x ← mean_k x^k: one all-reduce of all parameters (momentum buffers stay local)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        average_(self.optimizer.comm, params, kind="parameters")

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "t": self.t, "local_t": self.local_t}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.t, self.local_t = int(state["t"]), int(state["local_t"])
