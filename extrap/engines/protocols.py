"""The contracts ``extrap.train`` holds its engine and its workers to. ``SingleEngine`` is the
base every engine extends (it supplies the defaults of one process holding one worker);
``ModuleWorkers`` and ``VirtualWorkers`` are the two kinds of workers."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .comm import Communicator
from .single import Execution

__all__ = ["Engine", "Workers"]


@runtime_checkable
class Workers(Protocol):
    """The workers one process holds, of one model: where they compute, and their forward and backward."""

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """x_t, the tensors the optimizer steps (each worker's own model as ``[K, ...]`` once split)."""

    def parameters(self) -> list[Tensor]: ...

    def points(self) -> dict[str, Tensor]:
        """The tensors the workers compute at (x̃ after ``perturb``); their ``.grad`` after
        ``forward_backward`` are the workers' own gradients."""

    def train(self, mode: bool = True) -> "Workers": ...

    def forward_backward(self, loss_fn: Callable, inputs: Any, targets: Any) -> tuple[Tensor, list | None]:
        """Each worker's loss on its own batch, backpropagated: ``(losses [W], aux)``, aux a list of
        one per worker where ``loss_fn`` returns ``(loss, aux)``, else None."""

    def eval_module(self, worker: int = 0) -> nn.Module:
        """A module holding worker ``worker``'s model at x_t (call outside perturb/step)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """Where the K workers of a run live and how the processes agree."""

    kind: str
    launched: bool  # the workers are processes started by a launcher
    device: torch.device
    comm: Communicator  # the optimizer's communicator
    world_size: int  # K
    rank: int
    is_main: bool  # rank 0: it alone prints and writes
    use_ddp: bool  # the model runs inside DistributedDataParallel

    @property
    def worker_ids(self) -> tuple[int, ...]: ...

    def prepare(self, model: nn.Module, execution: Execution = Execution()) -> Workers: ...

    def attach(self, optimizer) -> None:
        """Connect the optimizer to the engine's communication, before any ``PostLocalSGD`` wrap."""

    def worker_batch(self, stacked: Any) -> Any:
        """What the workers take, from a batch stacked over the workers this process holds."""

    def mean_over_workers(self, values: Tensor) -> Tensor: ...

    def min_over_ranks(self, value: int) -> int: ...

    def from_main(self, compute: Callable[[], object]) -> object: ...

    def barrier(self) -> None: ...

    def close(self) -> None: ...
