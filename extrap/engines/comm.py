"""Communicators: where the K workers' tensors are averaged, and how one worker's slice of a
tensor is found. The optimizer and the training loop meet the engines only through the
``Communicator`` contract below.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Communicator", "LocalComm", "TorchDistComm", "VirtualComm", "CountingComm", "OneWorker",
           "worker_norms", "total_worker_norms", "scale_per_worker_", "local_backward"]


@runtime_checkable
class Communicator(Protocol):
    """What the optimizer needs to know about the workers this process holds.

    - ``world_size``: K, all workers of the run; ``worker_ids``: the ids of those held here, in
      the order of ``per_worker``'s leading axis (noise streams are seeded by these ids).
    - ``all_reduce_mean_(tensors, kind)``: replace each tensor by its mean over the K workers, in
      place; called once per step for the gradients (``kind="gradients"``) and by post-local SGD
      for the parameters (``kind="parameters"``).
    - ``per_worker(t)``: ``t`` viewed as ``[W, *one worker's shape]`` with W = len(worker_ids),
      sharing t's storage. Every per-worker reduction (LARS and SAM norms, filter norms, noise
      draws, gradient clipping) is taken over this view, so it is the same code whether a process
      holds one worker (a view ``[1, ...]``) or the virtual engine holds K (tensors ``[K, ...]``).

    Where one process's K workers share one x_t (``VirtualComm`` while training is synchronous),
    the communicator also has ``points_of``: {id of a parameter: its ``[K, ...]`` points}, the
    tensors at which the workers compute (x̃) and whose ``.grad`` are their own gradients; and
    ``average(tensors, kind) -> list``: the mean of ``[K, ...]`` tensors over the workers, which
    the optimizer makes x_t's gradient. ``per_worker`` is then given only ``[K, ...]`` tensors.
    A communicator that averages during backward (DDP's hook, ``DDPComm``) also has
    ``no_sync()``: a context in which backward keeps gradients local (see ``local_backward``),
    and ``local_gradients(params)``: each worker's local gradient, which it kept aside before
    averaging ``.grad``.
    """

    world_size: int
    worker_ids: tuple[int, ...]

    def all_reduce_mean_(self, tensors: list[Tensor], kind: str = "gradients") -> None: ...

    def per_worker(self, t: Tensor) -> Tensor: ...


def local_backward(comm: Communicator | None):
    """A context in which backward keeps this worker's gradient local: ``comm.no_sync()`` where
    the communicator averages during backward, else nothing to do."""
    no_sync = getattr(comm, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()


def worker_norms(comm: Communicator, tensors: list[Tensor]) -> Tensor:
    """‖t‖ of each tensor for each worker held: shape [len(tensors), W], one fused norm kernel."""
    views = [comm.per_worker(t) for t in tensors]
    if not views:
        return torch.zeros(0, len(comm.worker_ids))
    slices = [s for v in views for s in v.unbind(0)]
    return torch.stack(torch._foreach_norm(slices)).reshape(len(views), -1)


def total_worker_norms(comm: Communicator, tensors: list[Tensor]) -> Tensor:
    """‖(t_1, ..., t_n)‖ for each worker held, all of its tensors together: shape [W]."""
    return worker_norms(comm, tensors).square().sum(0).sqrt()


def scale_per_worker_(comm: Communicator, tensors: list[Tensor], factors: Tensor) -> None:
    """Multiply worker w's slice of tensor i by ``factors[i, w]`` (or ``factors[w]``), in place."""
    views = [comm.per_worker(t) for t in tensors]
    if not views:
        return
    rows = factors.expand(len(views), -1) if factors.dim() == 1 else factors
    torch._foreach_mul_(views, [r.reshape(-1, *[1] * (v.dim() - 1)) for r, v in zip(rows, views)])


class OneWorker:
    """A process that holds one worker: its tensors are that worker's."""

    world_size: int
    worker_ids: tuple[int, ...]

    def per_worker(self, t: Tensor) -> Tensor:
        return t.unsqueeze(0)


class LocalComm(OneWorker):
    """One worker: averaging is the identity. Its id (which seeds its noise) is by default this
    process's torch.distributed rank, or 0."""

    def __init__(self, worker_id: int | None = None):
        dist = torch.distributed
        if worker_id is None:
            worker_id = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world_size = 1
        self.worker_ids = (worker_id,)

    def all_reduce_mean_(self, tensors: list[Tensor], kind: str = "gradients") -> None:
        return None


def _flat_buckets(tensors: list[Tensor], bucket_bytes: int | None) -> list[list[Tensor]]:
    """Consecutive tensors of one dtype and device, each bucket at most ``bucket_bytes``."""
    buckets: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        last = buckets[-1] if buckets else None
        fits = bucket_bytes is None or size + t.numel() * t.element_size() <= bucket_bytes
        if last and last[0].dtype == t.dtype and last[0].device == t.device and fits:
            last.append(t)
            size += t.numel() * t.element_size()
        else:
            buckets.append([t])
            size = t.numel() * t.element_size()
    return buckets


class TorchDistComm(OneWorker):
    """Processes: one torch.distributed all-reduce per bucket of a flattened copy (one bucket,
    so one call per step, unless ``bucket_mb`` is set). Gloo on CPU, NCCL on GPU."""

    def __init__(self, group=None, bucket_mb: float | None = None):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("TorchDistComm needs torch.distributed initialised "
                               "(extrap.engines.init_distributed)")
        self._dist = dist
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.worker_ids = (dist.get_rank(group),)
        self.bucket_bytes = None if bucket_mb is None else int(bucket_mb * 2**20)

    def all_reduce_mean_(self, tensors: list[Tensor], kind: str = "gradients") -> None:
        if self.world_size == 1:
            return
        for bucket in _flat_buckets(tensors, self.bucket_bytes):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            self._dist.all_reduce(flat, group=self.group)  # SUM: Gloo has no AVG
            flat.div_(self.world_size)
            torch._foreach_copy_(bucket, [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in bucket]), bucket)])

    def all_reduce_mean_scalars(self, values: Tensor) -> Tensor:
        """Mean of a small metrics tensor across ranks (not gradient traffic)."""
        out = values.detach().clone()
        if self.world_size > 1:
            self._dist.all_reduce(out, group=self.group)
            out.div_(self.world_size)
        return out


class VirtualComm:
    """K virtual workers in one process: every per-worker tensor carries the worker axis,
    [K, ...], and is averaged over it.

    ``points_of`` (set by ``VirtualWorkers``): while training is synchronous the workers share
    one x_t, and each parameter's K points are a ``[K, ...]`` tensor; ``None`` when the
    parameters are themselves ``[K, ...]`` (each worker its own model)."""

    def __init__(self, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"num_workers: expected >= 1, got {num_workers}")
        self.world_size = num_workers
        self.worker_ids = tuple(range(num_workers))
        self.points_of: dict[int, Tensor] | None = None
        self.split = None  # set with points_of: gives every worker its own model (post-local SGD)

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]:
        """The mean over the worker axis of each [K, ...] tensor."""
        return [t.mean(0) for t in tensors]

    def all_reduce_mean_(self, tensors: list[Tensor], kind: str = "gradients") -> None:
        if self.world_size == 1 or not tensors:
            return
        k = self.world_size
        for bucket in _flat_buckets(tensors, None):
            mean = torch.cat([t.reshape(k, -1) for t in bucket], dim=1).mean(0)
            parts = mean.split([t[0].numel() for t in bucket])
            torch._foreach_copy_(bucket, [c.view(1, *t.shape[1:]).expand_as(t) for c, t in zip(parts, bucket)])

    def per_worker(self, t: Tensor) -> Tensor:
        return t


class CountingComm:
    """Wraps a communicator and counts its calls and the values it moves, per ``kind``.

    ``calls["gradients"]`` and ``values["gradients"]`` after n steps are what the tests (one
    all-reduce of the parameters' size per step) and the benchmarks compare against DDP.
    """

    def __init__(self, inner):
        self.inner = inner
        self.calls: Counter = Counter()
        self.values: Counter = Counter()
        self.bytes: Counter = Counter()

    world_size = property(lambda self: self.inner.world_size)
    worker_ids = property(lambda self: self.inner.worker_ids)

    def _count(self, tensors: list[Tensor], kind: str) -> None:
        numel = [self.inner.per_worker(t)[0].numel() for t in tensors]  # one worker's values
        self.calls[kind] += 1
        self.values[kind] += sum(numel)
        self.bytes[kind] += sum(n * t.element_size() for n, t in zip(numel, tensors))

    def all_reduce_mean_(self, tensors: list[Tensor], kind: str = "gradients") -> None:
        self._count(tensors, kind)
        self.inner.all_reduce_mean_(tensors, kind)

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]:
        self._count(tensors, kind)
        return self.inner.average(tensors, kind)

    def __getattr__(self, name):
        return getattr(self.inner, name)
