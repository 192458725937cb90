"""K processes, one worker each, started by ``horovodrun`` (or mpirun with a Horovod built for
MPI); gradients averaged by Horovod's grouped all-reduce, ranks taken from Horovod.

Horovod is optional: ``make install-horovod`` builds it against the installed torch. This module
imports it only when a Horovod engine is made.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .comm import OneWorker
from .single import Execution, ModuleWorkers, SingleEngine

__all__ = ["HorovodComm", "HorovodEngine", "import_horovod"]


def import_horovod():
    """``horovod.torch``, or a RuntimeError that says how to get it."""
    try:
        import horovod.torch as hvd
    except ImportError as e:
        raise RuntimeError(f"the horovod engine needs Horovod: run `make install-horovod` ({e})") from None
    return hvd


class HorovodComm(OneWorker):
    """One grouped all-reduce (op Average) of the step's tensors: Horovod fuses the group into one
    collective, so a step moves the gradients once, as ``TorchDistComm`` does."""

    def __init__(self, hvd=None):
        self._hvd = hvd or import_horovod()
        if not self._hvd.is_initialized():
            raise RuntimeError("HorovodComm needs hvd.init() first (HorovodEngine does it)")
        self.world_size = self._hvd.size()
        self.worker_ids = (self._hvd.rank(),)

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]:
        if self.world_size > 1 and tensors:
            self._hvd.grouped_allreduce_(tensors, op=self._hvd.Average, name=f"extrap.{kind}")
        return list(tensors)

    def all_reduce_mean_scalars(self, values: Tensor) -> Tensor:
        """Mean of a small metrics tensor across ranks (not gradient traffic)."""
        out = values.detach().clone()
        if self.world_size > 1:
            out = self._hvd.allreduce(out, op=self._hvd.Average, name="extrap.metrics")
        return out


class HorovodEngine(SingleEngine):
    """This rank's worker under Horovod; every rank starts from rank 0's parameters and buffers."""

    kind = "horovod"
    launched = True

    def __init__(self, device: str | torch.device | None = None):
        hvd = import_horovod()
        hvd.init()
        if hvd.size() < 2:
            raise RuntimeError("the horovod engine needs >= 2 ranks (horovodrun --gloo -np K)")
        if device is None:
            if torch.cuda.is_available():
                torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
                device = f"cuda:{torch.cuda.current_device()}"
            else:
                device = "cpu"
        self._hvd = hvd
        self.device = torch.device(device)
        self.comm = HorovodComm(hvd)
        self.world_size = hvd.size()
        self.rank = hvd.rank()
        self.is_main = self.rank == 0

    def prepare(self, model: nn.Module, execution: Execution = Execution()) -> ModuleWorkers:
        model = model.to(self.device)
        self._hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        return ModuleWorkers(model, execution=execution)

    def mean_over_workers(self, values: Tensor) -> Tensor:
        return self.comm.all_reduce_mean_scalars(values.float().mean().reshape(1))[0]

    def min_over_ranks(self, value: int) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64)
        return int(self._hvd.allreduce(t, op=self._hvd.Min, name="extrap.min").item())

    def from_main(self, compute):
        return self._hvd.broadcast_object(compute() if self.is_main else None, root_rank=0, name="extrap.from_main")

    def barrier(self) -> None:
        self._hvd.barrier()

    def close(self) -> None:
        if self._hvd.is_initialized():
            self._hvd.shutdown()
