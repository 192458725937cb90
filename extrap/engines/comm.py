"""Communicators: where the K workers' tensors are averaged, and how one worker's slice of a
tensor is found. The optimizer and the training loop meet the engines only through the
``Communicator`` contract below, and, where K workers share one x_t, through a ``Points`` store.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Callable, ContextManager, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Communicator", "Points", "CommBase", "LocalComm", "TorchDistComm", "VirtualComm", "CountingComm",
           "OneWorker", "average_", "worker_norms", "total_worker_norms", "scale_per_worker_"]


class Points:
    """Where the workers compute, when that is not at the parameters themselves: while K workers
    in one process share one x_t, each parameter's K points x̃ are one ``[K, ...]`` tensor whose
    ``.grad`` holds the K workers' own gradients. This base is the plain case, no such points
    (the parameters are where their workers compute); ``VirtualWorkers`` keeps a store with them.
    A communicator carries the store of the model prepared last; an optimizer takes it once."""

    def of(self, p: Tensor) -> Tensor:
        """The tensor ``p``'s workers compute at: ``p`` itself here."""
        return p

    def shared(self, params) -> list[tuple[Tensor, Tensor]]:
        """(x_t, its ``[K, ...]`` points) for each of ``params`` whose workers share x_t; [] here."""
        return []

    def split(self, optimizer) -> None:
        """Give each worker its own model from here on (post-local SGD's local phase); nothing here."""

    def zero_grad(self, params, set_to_none: bool = True) -> None:
        """Clear the points' gradients, as the optimizer's ``zero_grad`` clears the parameters'."""
        for _, q in self.shared(params):
            if q.grad is not None:
                q.grad = None if set_to_none else q.grad.zero_()


NO_POINTS = Points()


@runtime_checkable
class Communicator(Protocol):
    """What the optimizer needs to know about the workers this process holds.

    - ``world_size``: K, all workers of the run; ``worker_ids``: the ids of those held here, in
      the order of ``per_worker``'s leading axis (noise streams are seeded by these ids).
    - ``average(tensors, kind) -> list``: each tensor's mean over the K workers, in one worker's
      shape (``per_worker(t)[0]``). It may average the tensors themselves in place and return
      them (processes), or leave them and return new tensors (``[K, ...]`` tensors of virtual
      workers); ``average_`` puts the means back in place either way. Called once per step for
      the gradients (``kind="gradients"``) and by post-local SGD for the parameters.
    - ``per_worker(t)``: ``t`` viewed as ``[W, *one worker's shape]`` with W = len(worker_ids),
      sharing t's storage. Every per-worker reduction (LARS and SAM norms, filter norms, noise
      draws, gradient clipping) is taken over this view, so it is the same code whether a process
      holds one worker (a view ``[1, ...]``) or the virtual engine holds K (tensors ``[K, ...]``).
    - ``points``: the ``Points`` store of the workers that share one x_t, or ``NO_POINTS``.
    - ``averages_in_backward``: True where backward itself averages ``.grad`` (DDP's hook); such a
      communicator keeps each worker's raw gradient aside, ``local_gradients(params)``.
    - ``local_backward()``: a context in which backward keeps this worker's gradient local (DDP's
      ``no_sync``); ``skip_averaging_when(predicate)``: no averaging in a backward where
      ``predicate()`` holds (post-local SGD's local phase).

    ``CommBase`` supplies the defaults of the last three for a communicator that averages in
    ``average`` only.
    """

    world_size: int
    worker_ids: tuple[int, ...]
    points: Points
    averages_in_backward: bool

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]: ...

    def per_worker(self, t: Tensor) -> Tensor: ...

    def local_gradients(self, params: list[Tensor]) -> list[Tensor]: ...

    def local_backward(self) -> ContextManager: ...

    def skip_averaging_when(self, predicate: Callable[[], bool]) -> None: ...


class CommBase:
    """The defaults of a communicator that averages only when ``average`` is called."""

    world_size: int
    worker_ids: tuple[int, ...]
    points: Points = NO_POINTS
    averages_in_backward = False

    def local_gradients(self, params: list[Tensor]) -> list[Tensor]:
        raise RuntimeError(f"{type(self).__name__} keeps no local gradients: .grad is each worker's own until step()")

    def local_backward(self) -> ContextManager:
        return contextlib.nullcontext()

    def skip_averaging_when(self, predicate: Callable[[], bool]) -> None:
        return None  # averaging happens in step(), which post-local SGD calls with average=False


def average_(comm: Communicator, tensors: list[Tensor], kind: str = "gradients") -> None:
    """Replace each tensor by its mean over the K workers, in place."""
    moved = [(t, m) for t, m in zip(tensors, comm.average(tensors, kind)) if m is not t]
    if moved:
        torch._foreach_copy_([t for t, _ in moved], [m.expand_as(t) for t, m in moved])


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


class OneWorker(CommBase):
    """A process that holds one worker: its tensors are that worker's."""

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

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]:
        return list(tensors)


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
    so one call per step, unless ``bucket_mb`` is set), averaged in place. Gloo on CPU, NCCL on GPU."""

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

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]:
        if self.world_size > 1:
            for bucket in _flat_buckets(tensors, self.bucket_bytes):
                flat = torch.cat([t.reshape(-1) for t in bucket])
                self._dist.all_reduce(flat, group=self.group)  # SUM: Gloo has no AVG
                flat.div_(self.world_size)
                torch._foreach_copy_(bucket, [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in bucket]), bucket)])
        return list(tensors)

    def all_reduce_mean_scalars(self, values: Tensor) -> Tensor:
        """Mean of a small metrics tensor across ranks (not gradient traffic)."""
        out = values.detach().clone()
        if self.world_size > 1:
            self._dist.all_reduce(out, group=self.group)
            out.div_(self.world_size)
        return out


class VirtualComm(CommBase):
    """K virtual workers in one process: every per-worker tensor carries the worker axis,
    [K, ...], and is averaged over it. ``points`` is set by ``VirtualWorkers``: the store of the
    model prepared last, whose K workers share one x_t while training is synchronous."""

    def __init__(self, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"num_workers: expected >= 1, got {num_workers}")
        self.world_size = num_workers
        self.worker_ids = tuple(range(num_workers))
        self.points = NO_POINTS

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]:
        """The mean over the worker axis of each [K, ...] tensor (new tensors; the inputs stay)."""
        return [t.mean(0) for t in tensors]

    def per_worker(self, t: Tensor) -> Tensor:
        return t


class CountingComm:
    """Wraps a communicator and counts its ``average`` calls and the values they move, per
    ``kind``.

    ``calls["gradients"]`` and ``values["gradients"]`` after n steps are what the tests (one
    all-reduce of the parameters' size per step) and the benchmarks compare against DDP.
    """

    def __init__(self, inner: Communicator):
        self.inner = inner
        self.calls: Counter = Counter()
        self.values: Counter = Counter()
        self.bytes: Counter = Counter()

    world_size = property(lambda self: self.inner.world_size)
    worker_ids = property(lambda self: self.inner.worker_ids)
    points = property(lambda self: self.inner.points)
    averages_in_backward = property(lambda self: self.inner.averages_in_backward)

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]:
        numel = [self.inner.per_worker(t)[0].numel() for t in tensors]  # one worker's values
        self.calls[kind] += 1
        self.values[kind] += sum(numel)
        self.bytes[kind] += sum(n * t.element_size() for n, t in zip(numel, tensors))
        return self.inner.average(tensors, kind)

    def per_worker(self, t: Tensor) -> Tensor:
        return self.inner.per_worker(t)

    def local_gradients(self, params: list[Tensor]) -> list[Tensor]:
        return self.inner.local_gradients(params)

    def local_backward(self) -> ContextManager:
        return self.inner.local_backward()

    def skip_averaging_when(self, predicate: Callable[[], bool]) -> None:
        self.inner.skip_averaging_when(predicate)
