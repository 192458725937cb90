"""extrap inside a user's ``DistributedDataParallel``: a communication hook that keeps each rank's
local gradient aside while DDP averages ``.grad`` as usual.

For each of DDP's buckets, as backward fills it, the hook copies the bucket (this rank's local
gradient, accumulated over ``no_sync()`` micro-batches where there were any) and then starts
averaging the bucket itself, as DDP's own hook does; the end of backward waits for the averages. So after backward ``.grad`` holds the average, exactly
as in plain DDP: whatever the loop does to it before ``step()`` (clipping, GradScaler's
``unscale_``) keeps its plain-DDP meaning, and the update uses it. The copy is what this rank
extrapolates with next step; ``step()`` takes it from ``DDPComm.local_gradients`` and frees it of
the loss scale.
"""

import inspect
import warnings

import torch
from torch import Tensor, nn
from torch.autograd import Variable

from .comm import TorchDistComm

__all__ = ["DDPComm", "register_ddp", "ddp_buffer_kwargs", "ddp_keeping_buffers"]

KEEPS = (None, "gradient", "deviation")  # what the hook keeps of each rank's bucket


class DDPComm(TorchDistComm):
    """The communicator of an optimizer registered on a DDP model (see ``register_ddp``).

    Gradients: DDP averages ``.grad`` through ``hook``, which keeps this rank's local gradient
    (``keep="gradient"``), its deviation from the average (``"deviation"``, the ``stochastic``
    perturbation), or nothing (``None``). Parameters (post-local SGD's model averaging): a
    flattened all-reduce, as ``TorchDistComm``.
    """

    averages_in_backward = True

    def __init__(self, ddp_model: nn.Module, keep: str | None = "gradient"):
        if keep not in KEEPS:
            raise ValueError(f"keep: expected one of {KEEPS}, got {keep!r}")
        super().__init__(group=ddp_model.process_group)
        self.model = ddp_model
        self.keep = keep
        self.local_phase = lambda: False  # True: no averaging this step (PostLocalSGD sets it)
        self.hook_calls = self.hook_bytes = 0  # buckets (and their bytes) all-reduced so far
        self._copies: dict[int, Tensor] = {}  # bucket index -> this rank's copy, reused every step
        self._local: dict[int, Tensor] = {}  # id of a parameter -> its view in its bucket's copy
        self._averaged = False  # a backward through the DDP model since the last step
        self._in_flight: list[tuple[list[Tensor], Tensor, Tensor | None, object]] = []  # this backward's buckets

    def hook(self, state, bucket) -> torch.futures.Future[torch.Tensor]:  # DDP checks this annotation
        """DDP's communication hook: keep a copy of the bucket, then start averaging the bucket in
        place (divided by K first, then all-reduced, as DDP's default hook does). The all-reduces
        overlap the rest of backward; ``_finish`` waits for them at its end, on the thread that
        runs backward, so no Python runs on the communication threads."""
        buffer = bucket.buffer()
        self._averaged = True
        copy = None
        if self.keep is not None:
            index = bucket.index()
            copy = self._copies.get(index)
            if copy is None or copy.shape != buffer.shape or copy.dtype != buffer.dtype or copy.device != buffer.device:
                copy = self._copies[index] = torch.empty_like(buffer)
            copy.copy_(buffer)
            params = list(bucket.parameters())
            for p, view in zip(params, copy.split([p.numel() for p in params])):
                self._local[id(p)] = view.view_as(p)
        if self.world_size > 1 and not self.local_phase():
            if not self._in_flight:  # the first bucket of this backward
                Variable._execution_engine.queue_callback(self._finish)
            buffer.div_(self.world_size)
            work = self._dist.all_reduce(buffer, group=self.group, async_op=True)  # SUM of the K-ths
            self._in_flight.append((list(bucket.parameters()), buffer, copy, work))
            self.hook_calls += 1
            self.hook_bytes += buffer.numel() * buffer.element_size()
        future = torch.futures.Future()
        future.set_result(buffer)
        return future

    def _finish(self) -> None:
        """At the end of backward: wait for the buckets' all-reduces and put the averages in
        ``.grad`` (DDP copies the same buckets there too, whichever of the two runs first); for
        ``stochastic``, keep g^k − ḡ against the raw average."""
        in_flight, self._in_flight = self._in_flight, []
        for params, buffer, copy, work in in_flight:
            work.wait()
            if self.keep == "deviation":
                copy.sub_(buffer)
            pairs = [(p.grad, m.view_as(p)) for p, m in zip(params, buffer.split([p.numel() for p in params]))
                     if p.grad is not None]
            if pairs:
                torch._foreach_copy_([g for g, _ in pairs], [m for _, m in pairs])

    def local_gradients(self, params: list[Tensor]) -> list[Tensor]:
        """This rank's kept gradient (or deviation) of each parameter, as the last backward left
        it: still multiplied by the loss scale, where the loss was scaled. Views into the hook's
        copies, valid until the next backward."""
        missing = [p for p in params if id(p) not in self._local]
        if missing:
            raise RuntimeError(f"extrap.register_ddp: {len(missing)} of the optimizer's gradients did not pass "
                               "through the DDP model's buckets; run backward through the DDP model and give "
                               "the optimizer its parameters only")
        return [self._local[id(p)] for p in params]

    def average(self, tensors: list[Tensor], kind: str = "gradients") -> list[Tensor]:
        """Gradients: nothing to do, DDP averaged them during backward; checks that it did."""
        if kind != "gradients":
            return super().average(tensors, kind)
        if not tensors:
            return []
        if not self._averaged and self.world_size > 1:
            raise RuntimeError("extrap.register_ddp: no gradients were averaged since the last step; "
                               "run backward through the DDP model (not its .module) before step()")
        self._averaged = False
        return list(tensors)

    def skip_averaging_when(self, predicate) -> None:
        """No all-reduce in a backward where ``predicate()`` holds (post-local SGD's local phase)."""
        self.local_phase = predicate

    def local_backward(self):
        """A backward that keeps its gradient local (the closure of ``extragradient`` and ``sam``)."""
        return self.model.no_sync()


def _buffer_sync_flag() -> str:
    """DDP's switch for copying rank 0's buffers at every forward: the argument and attribute
    ``forward_sync_buffers`` from torch 2.13 on, ``broadcast_buffers`` before."""
    from torch.nn.parallel import DistributedDataParallel

    return ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers")


def ddp_buffer_kwargs() -> dict:
    """The ``DistributedDataParallel`` keyword that leaves each rank's buffers (BatchNorm
    statistics) its own after construction, as ``register_ddp`` needs: ``forward_sync_buffers=False``
    from torch 2.13 on, ``broadcast_buffers=False`` before. ``DDP(model, **extrap.ddp_buffer_kwargs())``,
    or Lightning's ``DDPStrategy(**extrap.ddp_buffer_kwargs())``."""
    return {_buffer_sync_flag(): False}


def ddp_keeping_buffers(module: nn.Module, **kwargs) -> nn.Module:
    """``DistributedDataParallel(module, **kwargs)`` that leaves each rank's buffers alone after
    construction."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, **ddp_buffer_kwargs(), **kwargs)


def register_ddp(ddp_model: nn.Module, optimizer) -> DDPComm:
    """Make ``optimizer`` (an ``ExtrapolatedSGD``/``ExtrapolatedAdam``) run extrap exactly under
    ``ddp_model``, a ``DistributedDataParallel``. Call it once, after building both and before the
    first backward (and before wrapping the optimizer in ``PostLocalSGD``); returns the
    communicator it gave the optimizer.

    After backward ``.grad`` holds DDP's average, as in plain DDP, and the loop may clip it or
    unscale it (GradScaler) before ``step()``; each rank extrapolates with its own raw local
    gradient, which the hook keeps aside.

    Each rank's BatchNorm statistics are its own worker's, so DDP must not copy rank 0's buffers
    to every rank at each forward: where it would, this turns that off and says so (DDP's
    ``forward_sync_buffers=False``, ``broadcast_buffers=False`` before torch 2.13, does it
    silently).
    """
    from torch.nn.parallel import DistributedDataParallel

    from ..optim import ExtrapolatedAdam, ExtrapolatedSGD

    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(f"ddp_model: expected a torch.nn.parallel.DistributedDataParallel, got {type(ddp_model).__name__}")
    if not isinstance(optimizer, (ExtrapolatedSGD, ExtrapolatedAdam)):
        raise TypeError(f"optimizer: expected an ExtrapolatedSGD or ExtrapolatedAdam, got {type(optimizer).__name__}")
    if optimizer.comm is not None:
        raise ValueError("optimizer: it already has comm=...; register_ddp gives it the DDP communicator, "
                         "so build it with comm=None")
    flag = _buffer_sync_flag()
    if getattr(ddp_model, flag) and any(True for _ in ddp_model.module.buffers()):
        setattr(ddp_model, flag, False)
        warnings.warn(f"extrap.register_ddp: set the DDP model's {flag}=False, so that each rank keeps its "
                      f"own BatchNorm statistics, as each worker does; build it with "
                      "DDP(..., **extrap.ddp_buffer_kwargs()) to silence this", stacklevel=2)
    ours = {id(p) for p in ddp_model.parameters()}
    outside = sum(id(p) not in ours for g in optimizer.param_groups for p in g["params"] if p.requires_grad)
    if outside:
        raise ValueError(f"optimizer: {outside} of its parameters are not the DDP model's, so DDP would not "
                         "average their gradients; give it the DDP model's parameters only")
    keep = ("deviation" if optimizer.perturbation == "stochastic" else "gradient") if optimizer.kind.keeps_local_grad else None
    comm = DDPComm(ddp_model, keep=keep)
    ddp_model.register_comm_hook(None, comm.hook)
    optimizer.comm = comm
    return comm
