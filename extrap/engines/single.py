"""One worker per process: the model is the worker. Used alone (K = 1) and by each rank of the
processes engine."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .comm import LocalComm

__all__ = ["ModuleWorkers", "SingleEngine", "split_aux"]


def split_aux(result) -> tuple[Tensor, object]:
    """A loss function's result as (loss, aux); aux is None when it returned the loss alone."""
    return result if isinstance(result, tuple) else (result, None)


class ModuleWorkers:
    """This process's one worker: ``forward_backward`` takes its batch ``[b, ...]``.

    ``forward`` runs the model in training (default: the model itself; a DistributedDataParallel
    around it, whose backward averages the gradients)."""

    def __init__(self, model: nn.Module, forward: nn.Module | None = None):
        self.model = model
        self.forward = model if forward is None else forward

    def named_parameters(self):
        return self.model.named_parameters()

    def parameters(self) -> list[Tensor]:
        return list(self.model.parameters())

    def train(self, mode: bool = True) -> "ModuleWorkers":
        self.model.train(mode)
        return self

    def forward_backward(self, loss_fn: Callable, inputs, targets):
        """Loss of this worker's batch, backpropagated into ``.grad``; returns it as a [1] tensor.

        ``loss_fn(outputs, targets)`` may return ``(loss, aux)`` (e.g. an LSTM's next hidden
        state); then ``(losses, [aux])`` is returned, one aux per worker as for virtual workers."""
        loss, aux = split_aux(loss_fn(self.forward(inputs), targets))
        loss.backward()
        return loss.detach().reshape(1) if aux is None else (loss.detach().reshape(1), [aux])

    def eval_module(self, worker: int = 0) -> nn.Module:
        """The module at x_t (call outside perturb/step)."""
        return self.model

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


class SingleEngine:
    """K = 1: plain single-device training."""

    kind = "single"
    launched = False  # True for engines whose workers are processes started by a launcher

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.comm = LocalComm(0)
        self.world_size = 1
        self.rank = 0
        self.is_main = True

    @property
    def worker_ids(self) -> tuple[int, ...]:
        return self.comm.worker_ids

    def prepare(self, model: nn.Module) -> ModuleWorkers:
        return ModuleWorkers(model.to(self.device))

    def attach(self, optimizer) -> None:
        """Connect the optimizer to the engine's communication (the processes engine's DDP hook);
        call it before wrapping the optimizer in ``PostLocalSGD``. Nothing to do here."""

    def stack(self, per_worker: list):
        """This process's batch from the list of its workers' batches (here: one)."""
        (batch,) = per_worker
        return batch

    def worker_batch(self, stacked):
        """What this engine's workers take, from a batch stacked over the workers it holds
        (``Task.train_batches``): here the one worker's ``[b, ...]``, a view."""
        return tree_map(lambda t: t[0], stacked)

    def mean_over_workers(self, values: Tensor) -> Tensor:
        """Mean of per-worker metric values across all workers (metrics, not gradients)."""
        return values.float().mean()

    def min_over_ranks(self, value: int) -> int:
        """The smallest of an integer each process holds (one process here)."""
        return int(value)

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None
