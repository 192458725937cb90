"""One worker per process: the model is the worker. Used alone (K = 1) and by each rank of the
processes engine."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .comm import LocalComm

__all__ = ["ModuleWorkers", "SingleEngine", "split_aux", "Execution", "PRECISIONS"]

PRECISIONS = ("float32", "bf16")


def split_aux(result) -> tuple[Tensor, object]:
    """A loss function's result as (loss, aux); aux is None when it returned the loss alone."""
    return result if isinstance(result, tuple) else (result, None)


@dataclass(frozen=True)
class Execution:
    """How the workers' forward and backward run; every option is off by default.

    - ``precision="bf16"``: the forward under ``torch.autocast`` in bfloat16; parameters,
      gradients, optimizer state and BatchNorm statistics stay float32.
    - ``channels_last``: 4-D weights and image batches in channels-last memory order.
    - ``compile``: a ``torch.compile`` backend (``"inductor"``, ``"aot_eager"``, ...) for the
      forward and backward (virtual workers: all K workers' as one graph under vmap, one
      worker's, compiled once, by the loop); ``None``: eager.
    """

    precision: str = "float32"
    channels_last: bool = False
    compile: str | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def autocast(self, device: torch.device):
        return (torch.autocast(device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                else contextlib.nullcontext())

    def layout(self, batch, image_dims: int = 4):
        """The batch's image tensors (``image_dims``-D floats) in channels-last order, where asked."""
        if not self.channels_last:
            return batch
        return tree_map(lambda t: to_channels_last(t) if torch.is_tensor(t) and t.is_floating_point()
                        and t.dim() == image_dims else t, batch)


def to_channels_last(t: Tensor) -> Tensor:
    """``t [..., C, H, W]`` with C innermost in memory (same values and shape); for a 4-D tensor,
    ``torch.channels_last``; with more leading axes (virtual workers' [K, b, C, H, W]), the same
    order within each worker."""
    return t.movedim(-3, -1).contiguous().movedim(-1, -3)


class ModuleWorkers:
    """This process's one worker: ``forward_backward`` takes its batch ``[b, ...]``.

    ``forward`` runs the model in training (default: the model itself; a DistributedDataParallel
    around it, whose backward averages the gradients)."""

    def __init__(self, model: nn.Module, forward: nn.Module | None = None, execution: Execution = Execution()):
        self.model, self.execution = model, execution
        if execution.channels_last:
            model.to(memory_format=torch.channels_last)
        forward = model if forward is None else forward
        self.forward = forward if execution.compile is None else torch.compile(forward, backend=execution.compile)

    def named_parameters(self):
        return self.model.named_parameters()

    def parameters(self) -> list[Tensor]:
        return list(self.model.parameters())

    def points(self) -> dict[str, Tensor]:
        """The tensors the worker computes at (its x̃ after ``perturb``): the parameters."""
        return dict(self.model.named_parameters())

    def train(self, mode: bool = True) -> "ModuleWorkers":
        self.model.train(mode)
        return self

    def forward_backward(self, loss_fn: Callable, inputs, targets) -> tuple[Tensor, list | None]:
        """Loss of this worker's batch, backpropagated into ``.grad``: ``(loss as a [1] tensor, aux)``.

        ``loss_fn(outputs, targets)`` may return ``(loss, aux)`` (e.g. an LSTM's next hidden
        state); aux is then ``[aux]``, one per worker as for virtual workers, else None."""
        with self.execution.autocast(self.model_device):
            loss, aux = split_aux(loss_fn(self.forward(self.execution.layout(inputs)), targets))
        loss.backward()
        return loss.detach().reshape(1), None if aux is None else [aux]

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def eval_module(self, worker: int = 0) -> nn.Module:
        """The module at x_t (call outside perturb/step)."""
        return self.model

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


class SingleEngine:
    """K = 1: plain single-device training; the base of every engine (``extrap.engines.Engine``)."""

    kind = "single"
    launched = False  # True for engines whose workers are processes started by a launcher
    use_ddp = False  # True where the model runs inside DistributedDataParallel

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.comm = LocalComm(0)
        self.world_size = 1
        self.rank = 0
        self.is_main = True

    @property
    def worker_ids(self) -> tuple[int, ...]:
        return self.comm.worker_ids

    def prepare(self, model: nn.Module, execution: Execution = Execution()) -> ModuleWorkers:
        return ModuleWorkers(model.to(self.device), execution=execution)

    def attach(self, optimizer) -> None:
        """Connect the optimizer to the engine's communication (the processes engine's DDP hook);
        call it before wrapping the optimizer in ``PostLocalSGD``. Nothing to do here."""

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

    def from_main(self, compute: Callable[[], object]):
        """``compute()`` run by rank 0 alone, its result given to every rank (here: run it)."""
        return compute()

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None
