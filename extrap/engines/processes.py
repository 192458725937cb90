"""K processes, one worker each, started by mpirun, torchrun, srun or a Kubernetes MPIJob;
gradients averaged by torch.distributed (Gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .comm import TorchDistComm
from .launch import init_distributed
from .single import ModuleWorkers, SingleEngine

__all__ = ["ProcessEngine"]


class ProcessEngine(SingleEngine):
    """This rank's worker; ``comm`` all-reduces a flattened (or bucketed) gradient per step."""

    kind = "processes"
    launched = True

    def __init__(self, device: str | torch.device | None = None, backend: str | None = None,
                 bucket_mb: float | None = None, timeout_s: float | None = None):
        info = init_distributed(backend=backend, timeout_s=timeout_s)
        if info.world_size < 2:
            raise RuntimeError("the processes engine needs a launcher with >= 2 ranks "
                               "(mpirun -np K, torchrun --nproc_per_node K)")
        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.info = info
        self.comm = TorchDistComm(bucket_mb=bucket_mb)
        self.world_size = info.world_size
        self.rank = info.rank
        self.is_main = info.rank == 0

    def prepare(self, model: nn.Module) -> ModuleWorkers:
        model = model.to(self.device)
        # every rank starts from rank 0's x_0, whatever its seed did
        with torch.no_grad():
            flat = [t for t in list(model.parameters()) + list(model.buffers())]
            for t in flat:
                torch.distributed.broadcast(t, src=0)
        return ModuleWorkers(model)

    def mean_over_workers(self, values: Tensor) -> Tensor:
        return self.comm.all_reduce_mean_scalars(values.float().mean().reshape(1))[0]

    def min_over_ranks(self, value: int) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return int(t.item())

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
