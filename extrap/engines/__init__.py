"""Where the K workers run — one algorithm, three engines (SPEC §5).

- ``processes``: one worker per process (mpirun, torchrun, srun, a Kubernetes MPIJob);
- ``virtual``: K workers in one process, stacked, batched with ``torch.func``;
- ``single``: one worker.

``make_engine("auto", workers=K)`` picks processes under a launcher, virtual for K > 1, else
single. An engine changes where gradients are averaged, never the arithmetic.
"""

from __future__ import annotations

from .comm import CountingComm, LocalComm, TorchDistComm, VirtualComm
from .launch import DistInfo, init_distributed, under_launcher, world_info_from_env
from .processes import ProcessEngine
from .single import ModuleWorkers, SingleEngine
from .virtual import VirtualEngine, VirtualWorkers

__all__ = [
    "ENGINES", "make_engine", "init_distributed", "world_info_from_env", "under_launcher",
    "DistInfo", "LocalComm", "TorchDistComm", "VirtualComm", "CountingComm", "SingleEngine",
    "ProcessEngine", "VirtualEngine", "ModuleWorkers", "VirtualWorkers",
]

ENGINES = ("auto", "processes", "virtual", "single")


def make_engine(kind: str = "auto", workers: int | None = None, device=None, batched: bool = True):
    """Build an engine. ``workers`` is K; under a launcher it must equal the number of ranks."""
    if kind not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {kind!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    launched = world_info_from_env()
    if kind == "auto":
        kind = "processes" if launched.world_size > 1 else ("virtual" if (workers or 1) > 1 else "single")
    if kind == "processes":
        if workers is not None and workers != launched.world_size:
            raise ValueError(f"workers: {workers} requested but the launcher started "
                             f"{launched.world_size} ranks")
        return ProcessEngine(device=device)
    if launched.world_size > 1:
        raise ValueError(f"engine: {kind!r} runs in one process, but a launcher started "
                         f"{launched.world_size} ranks (use --engine processes)")
    if kind == "virtual":
        return VirtualEngine(workers or 1, device=device, batched=batched)
    if (workers or 1) != 1:
        raise ValueError(f"workers: the single engine runs one worker, got {workers}")
    return SingleEngine(device=device)
