"""Where the K workers run — one algorithm, several engines (docs/method.md, "Engines").

- ``processes``: one worker per process (mpirun, torchrun, srun, a Kubernetes MPIJob), gradients
  averaged by torch.distributed;
- ``horovod``: one worker per process under ``horovodrun``, gradients averaged by Horovod;
- ``virtual``: K workers in one process sharing one x_t, a worker axis on what differs (points,
  local gradients, BatchNorm statistics), batched with ``torch.func`` on a GPU;
- ``single``: one worker.

``make_engine("auto", workers=K)`` picks horovod under ``horovodrun --gloo``, processes under
another launcher, virtual for K > 1, else single. An engine changes where gradients are
averaged, never the arithmetic.
"""

from __future__ import annotations

import os

import torch

from .comm import (CommBase, Communicator, CountingComm, LocalComm, OneWorker, Points, TorchDistComm, VirtualComm,
                   average_, scale_per_worker_, total_worker_norms, worker_norms)
from .ddp import DDPComm, register_ddp
from .horovod import HorovodComm, HorovodEngine
from .launch import DistInfo, init_distributed, under_launcher, world_info_from_env
from .processes import ProcessEngine
from .protocols import Engine, Workers
from .single import PRECISIONS, Execution, ModuleWorkers, SingleEngine
from .virtual import VirtualEngine, VirtualWorkers, batched_by_default

__all__ = [
    "ENGINES", "make_engine", "init_distributed", "world_info_from_env", "under_launcher",
    "DistInfo", "Communicator", "CommBase", "Points", "OneWorker", "average_", "worker_norms", "total_worker_norms",
    "scale_per_worker_", "LocalComm", "TorchDistComm", "DDPComm", "register_ddp", "VirtualComm", "CountingComm", "HorovodComm",
    "Engine", "Workers", "SingleEngine", "ProcessEngine", "HorovodEngine", "VirtualEngine", "ModuleWorkers", "VirtualWorkers",
    "Execution", "PRECISIONS", "batched_by_default",
]

ENGINES = ("auto", "processes", "horovod", "virtual", "single")


def _share_cpu_threads(local_ranks: int) -> None:
    """Ranks on one host split its CPU threads unless OMP_NUM_THREADS says otherwise: without it
    each rank takes every core, and 2 ranks on 2 cores ran 12x slower (Horovod's busy background
    thread makes it worse)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # a rank bound to fewer cores (mpirun --bind-to core) already sees only those
    share = cores if cores < (os.cpu_count() or 1) else cores // max(local_ranks, 1)
    torch.set_num_threads(max(1, share))


def make_engine(kind: str = "auto", workers: int | None = None, device=None, batched: bool | None = None,
                bucket_mb: float | None = None, ddp: bool = False, backend: str | None = None):
    """Build an engine. ``workers`` is K; under a launcher it must equal the number of ranks.
    The processes engine's ``bucket_mb`` (gradient buckets) and ``ddp`` (DDP with extrap's hook
    instead of one flat all-reduce): see ``ProcessEngine``; its ``backend`` (``gloo``, ``nccl``,
    ``mpi``; default ``EXTRAP_BACKEND``, else NCCL on GPU and Gloo on CPU): see
    ``init_distributed``. The virtual engine's ``batched``: vmap (True) or the per-worker loop
    (False); ``None``: vmap on a GPU, the loop on a CPU (see ``VirtualWorkers``)."""
    if kind not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {kind!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    launched = world_info_from_env()
    if kind == "auto":
        if launched.world_size > 1:
            kind = "horovod" if launched.launcher == "horovod" else "processes"
        else:
            kind = "virtual" if (workers or 1) > 1 else "single"
    if kind in ("processes", "horovod"):
        if launched.launcher == "none" and (workers or 1) > 1:
            start = "horovodrun -np K" if kind == "horovod" else "mpirun -np K or torchrun --nproc-per-node K"
            raise ValueError(f"engine: {kind} runs one process per worker, but no launcher started this one "
                             f"(start it with {start}, or use the virtual engine)")
        if workers is not None and workers != launched.world_size:
            raise ValueError(f"workers: {workers} requested but the launcher started "
                             f"{launched.world_size} ranks")
        _share_cpu_threads(launched.local_size)
        if kind == "horovod":
            return HorovodEngine(device=device)
        return ProcessEngine(device=device, bucket_mb=bucket_mb, ddp=ddp, backend=backend)
    if launched.world_size > 1:
        raise ValueError(f"engine: {kind!r} runs in one process, but a launcher started "
                         f"{launched.world_size} ranks (use --engine processes)")
    if kind == "virtual":
        return VirtualEngine(workers or 1, device=device, batched=batched)
    if (workers or 1) != 1:
        raise ValueError(f"workers: the single engine runs one worker, got {workers}")
    return SingleEngine(device=device)
