"""K processes, one worker each, started by mpirun, torchrun, srun or a Kubernetes MPIJob;
gradients averaged by torch.distributed (Gloo on CPU, NCCL on GPU): by default through
one flattened all-reduce per step, or (``ddp=True``) DistributedDataParallel with
``extrap.register_ddp``, the path a user's own DDP script takes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .comm import TorchDistComm
from .ddp import ddp_keeping_buffers, register_ddp
from .launch import init_distributed
from .single import Execution, ModuleWorkers, SingleEngine

__all__ = ["ProcessEngine"]


class ProcessEngine(SingleEngine):
    """This rank's worker.

    By default ``comm`` all-reduces one flattened gradient (or ``bucket_mb`` buckets) after
    backward. ``ddp=True``: the model runs inside a ``DistributedDataParallel`` and
    ``attach(optimizer)`` registers extrap's hook on it (``extrap.register_ddp``), so DDP's buckets
    (``bucket_mb`` is its ``bucket_cap_mb``) are all-reduced while backward runs. Both give the
    same trajectory; on 2 CPU ranks they took the same time, the flat one with one call per step
    instead of two (``make bench``), so it stays the default until the overlap is measured on GPUs.
    """

    kind = "processes"
    launched = True

    def __init__(self, device: str | torch.device | None = None, backend: str | None = None,
                 bucket_mb: float | None = None, timeout_s: float | None = None, ddp: bool = False):
        info = init_distributed(backend=backend, timeout_s=timeout_s)
        if info.world_size < 2:
            raise RuntimeError("the processes engine needs a launcher with >= 2 ranks "
                               "(mpirun -np K, torchrun --nproc_per_node K)")
        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.info = info
        self.bucket_mb = bucket_mb
        self.use_ddp = ddp
        self.ddp = None  # the DistributedDataParallel around the model prepared last
        # with DDP, None from prepare() to attach(): register_ddp gives the optimizer its communicator
        self.comm = None if ddp else TorchDistComm(bucket_mb=bucket_mb)
        self._metrics = TorchDistComm()
        self.world_size = info.world_size
        self.rank = info.rank
        self.is_main = info.rank == 0

    @property
    def worker_ids(self) -> tuple[int, ...]:
        return (self.rank,)

    def prepare(self, model: nn.Module, execution: Execution = Execution()) -> ModuleWorkers:
        model = model.to(self.device)
        # every rank starts from rank 0's x_0 (buffers included), whatever its seed did
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                torch.distributed.broadcast(t, src=0)
        if execution.channels_last:  # before DDP lays its buckets over the gradients
            model.to(memory_format=torch.channels_last)
        if not self.use_ddp:
            return ModuleWorkers(model, execution=execution)
        self.comm = None  # each model gets its own DDP, hook and communicator
        kw = {} if self.bucket_mb is None else {"bucket_cap_mb": self.bucket_mb}
        self.ddp = ddp_keeping_buffers(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       **kw)
        return ModuleWorkers(model, forward=self.ddp, execution=execution)

    def attach(self, optimizer) -> None:
        if self.ddp is not None and self.comm is None:
            self.comm = register_ddp(self.ddp, optimizer)

    def mean_over_workers(self, values: Tensor) -> Tensor:
        return self._metrics.all_reduce_mean_scalars(values.float().mean().reshape(1))[0]

    def min_over_ranks(self, value: int) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return int(t.item())

    def from_main(self, compute):
        box = [compute() if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
