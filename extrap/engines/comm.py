"""Communicators: where the K workers' tensors are averaged. The optimizer calls one method,
``all_reduce_mean_(tensors, kind)``, once per step for the gradients (``kind="gradients"``) and
post-local SGD once per averaging for the parameters (``kind="parameters"``).

Each communicator says which workers it holds (``worker_ids``) and whether their tensors carry a
leading worker axis (``stacked``: virtual workers).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

__all__ = ["LocalComm", "TorchDistComm", "VirtualComm", "CountingComm"]


class LocalComm:
    """One worker: averaging is the identity."""

    stacked = False

    def __init__(self, worker_id: int = 0):
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


class TorchDistComm:
    """Processes: one torch.distributed all-reduce per bucket of a flattened copy (one bucket,
    so one call per step, unless ``bucket_mb`` is set). Gloo on CPU, NCCL on GPU."""

    stacked = False

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
    """K virtual workers in one process: tensors are stacked [K, ...] and averaged over axis 0."""

    stacked = True

    def __init__(self, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"num_workers: expected >= 1, got {num_workers}")
        self.world_size = num_workers
        self.worker_ids = tuple(range(num_workers))

    def all_reduce_mean_(self, tensors: list[Tensor], kind: str = "gradients") -> None:
        if self.world_size == 1 or not tensors:
            return
        k = self.world_size
        for bucket in _flat_buckets(tensors, None):
            mean = torch.cat([t.reshape(k, -1) for t in bucket], dim=1).mean(0)
            parts = mean.split([t[0].numel() for t in bucket])
            torch._foreach_copy_(bucket, [c.view(1, *t.shape[1:]).expand_as(t) for c, t in zip(parts, bucket)])


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

    stacked = property(lambda self: self.inner.stacked)
    world_size = property(lambda self: self.inner.world_size)
    worker_ids = property(lambda self: self.inner.worker_ids)

    def all_reduce_mean_(self, tensors: list[Tensor], kind: str = "gradients") -> None:
        per_worker = (lambda t: t[0].numel()) if self.inner.stacked else (lambda t: t.numel())
        self.calls[kind] += 1
        self.values[kind] += sum(per_worker(t) for t in tensors)
        self.bytes[kind] += sum(per_worker(t) * t.element_size() for t in tensors)
        self.inner.all_reduce_mean_(tensors, kind)

    def __getattr__(self, name):
        return getattr(self.inner, name)
