"""One ``init_distributed()`` for every launcher: torchrun, mpirun (Open MPI, MPICH), Slurm's
srun, horovodrun --gloo (read here; the horovod engine initialises Horovod itself), or plain
environment variables; one process when none of them is present.

Under ``mpirun`` torch.distributed still needs a rendezvous address. If ``MASTER_ADDR`` is unset,
rank 0 picks its address and a free port and shares them with the other ranks through mpi4py.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

__all__ = ["DistInfo", "world_info_from_env", "init_distributed", "under_launcher", "collective_timeout_s", "BACKENDS"]

BACKENDS = ("gloo", "nccl", "mpi")  # torch.distributed's

# (rank, world size, local rank, local size) variables, by launcher; first match wins.
_LAUNCHERS = {
    "torchrun": ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    "openmpi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                "OMPI_COMM_WORLD_LOCAL_SIZE"),
    "mpich": ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    "slurm": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
    "horovod": ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE"),  # horovodrun --gloo
}


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_info_from_env(environ=None) -> DistInfo:
    """Read rank and world size from the first launcher whose variables are set."""
    env = os.environ if environ is None else environ
    for launcher, (r, w, lr, ls) in _LAUNCHERS.items():
        if r in env and w in env:
            values = {}
            for name, default in ((r, None), (w, None), (lr, "0"), (ls, "1")):
                text = str(env.get(name, default)).split("(")[0].split(",")[0]  # Open MPI: "4(x2)", "2,2"
                try:
                    values[name] = int(text)
                except ValueError:
                    raise ValueError(f"{name}: the {launcher} launcher's variable is not an integer, got "
                                     f"{env.get(name)!r}") from None
            return DistInfo(values[r], values[w], values[lr], values[ls], launcher)
    return DistInfo()


def under_launcher(environ=None) -> bool:
    """True when this process is one of several started by a launcher."""
    return world_info_from_env(environ).world_size > 1


# what to set where MASTER_ADDR is missing, by launcher (mpirun's ranks share rank 0's instead)
_RENDEZVOUS_HINTS = {
    "slurm": "in the batch script, before srun: export MASTER_ADDR=$(scontrol show hostnames "
             "\"$SLURM_JOB_NODELIST\" | head -n 1) MASTER_PORT=29500 (examples/slurm.sbatch)",
    "horovod": "under horovodrun use --engine horovod, or set MASTER_ADDR and MASTER_PORT",
    "torchrun": "set MASTER_ADDR and MASTER_PORT (the address and a free port of rank 0's host)",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _share_rendezvous(info: DistInfo) -> None:
    """Under MPI with no MASTER_ADDR: rank 0's address and a free port, broadcast with mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(
            f"launched by {info.launcher} without MASTER_ADDR: set MASTER_ADDR/MASTER_PORT, or "
            f"install mpi4py so rank 0 can share them ({e})") from None
    addr = port = None
    if info.rank == 0:
        # One node: loopback. Several: this host's address, which the others must reach.
        addr = "127.0.0.1" if info.local_size == info.world_size else socket.gethostbyname(socket.getfqdn())
        port = _free_port()
    if MPI.COMM_WORLD.Get_size() != info.world_size:  # mpi4py sees no MPI launch: each rank alone
        raise RuntimeError(f"{info.launcher}: MASTER_ADDR is not set and MPI sees {MPI.COMM_WORLD.Get_size()} of "
                           f"the {info.world_size} ranks; set MASTER_ADDR and MASTER_PORT to rank 0's host and a free port")
    addr, port = MPI.COMM_WORLD.bcast((addr, port), root=0)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)


def collective_timeout_s() -> float:
    """How long a collective may wait for the other ranks before it fails: ``EXTRAP_TIMEOUT_S``
    (default 300 s). A hung rank then ends the job with a timeout error instead of a hang; a
    dead one is noticed by the launcher (mpirun, torchrun) at once."""
    value = os.environ.get("EXTRAP_TIMEOUT_S", "300")
    try:
        timeout = float(value)
    except ValueError:
        raise ValueError(f"EXTRAP_TIMEOUT_S: expected seconds, got {value!r}") from None
    if not 0 < timeout < math.inf:
        raise ValueError(f"EXTRAP_TIMEOUT_S: expected a finite number of seconds > 0, got {value!r}")
    return timeout


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Initialise torch.distributed from the launcher's variables (no-op for one process).

    ``backend``: the argument, else the ``EXTRAP_BACKEND`` variable, else ``nccl`` when CUDA is
    available and ``gloo`` otherwise. ``gloo`` on GPUs lets several ranks share one GPU, which
    NCCL refuses (the baseline of K processes on one device). On GPU each rank takes the device
    of its local rank (modulo the number of devices). ``timeout_s``: see ``collective_timeout_s``. Failures raise:
    there is no silent fall-back to one process.
    """
    if timeout_s is None:
        timeout_s = collective_timeout_s()
    info = world_info_from_env()
    if info.world_size == 1:
        return info
    import torch.distributed as dist

    if dist.is_initialized():
        return info
    if "MASTER_ADDR" not in os.environ:
        if info.launcher in ("openmpi", "mpich"):
            _share_rendezvous(info)
        else:
            raise RuntimeError(f"{info.launcher}: MASTER_ADDR is not set; {_RENDEZVOUS_HINTS[info.launcher]}")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = backend or os.environ.get("EXTRAP_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="env://", rank=info.rank,
                            world_size=info.world_size, timeout=timedelta(seconds=timeout_s))
    return info
