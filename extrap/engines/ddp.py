"""extrap inside a user's ``DistributedDataParallel``: a communication hook that keeps each rank's
local gradient.

Plain DDP averages ``.grad`` during backward, so an extrap optimizer stepping after it would keep
the *average* as every rank's "local" gradient: all ranks would extrapolate to the same point,
and ``stochastic`` would be mini-batch SGD. ``register_ddp`` replaces DDP's all-reduce with a hook
that, for each of DDP's buckets as backward fills it, starts an asynchronous all-reduce of a copy
and hands DDP the bucket unchanged. So after backward ``.grad`` is this rank's local gradient, the
averages are in flight (overlapping the rest of backward, as in DDP), and the optimizer's
``step()`` keeps the local gradient and then takes the average from ``DDPComm.all_reduce_mean_``.
"""

import inspect
import warnings

import torch
from torch import Tensor, nn

from .comm import TorchDistComm

__all__ = ["DDPComm", "register_ddp", "refuse_without_comm", "ddp_keeping_buffers"]


class DDPComm(TorchDistComm):
    """The communicator of an optimizer registered on a DDP model (see ``register_ddp``).

    Gradients: the hook started one all-reduce per DDP bucket during backward;
    ``all_reduce_mean_`` waits for them and writes the means into ``.grad``. Parameters
    (post-local SGD's model averaging): a flattened all-reduce, as ``TorchDistComm``.
    """

    def __init__(self, ddp_model: nn.Module):
        super().__init__(group=ddp_model.process_group)
        self.model = ddp_model
        self.local_phase = lambda: False  # True: no averaging this step (PostLocalSGD sets it)
        self.hook_calls = self.hook_bytes = 0  # buckets (and their bytes) all-reduced so far
        self._copies: dict[int, Tensor] = {}  # per bucket index, reused from step to step
        self._pending: dict[int, tuple[list[Tensor], Tensor, object]] = {}

    def hook(self, state, bucket) -> torch.futures.Future[torch.Tensor]:  # DDP checks this annotation
        """DDP's communication hook: start averaging a copy of the bucket; return it unchanged."""
        buffer = bucket.buffer()
        if self.world_size > 1 and not self.local_phase():
            index = bucket.index()
            if index in self._pending:  # a second backward before step(): its copy is in flight
                self._pending.pop(index)[2].wait()
            copy = self._copies.get(index)
            if copy is None or copy.shape != buffer.shape or copy.dtype != buffer.dtype or copy.device != buffer.device:
                copy = self._copies[index] = torch.empty_like(buffer)
            copy.copy_(buffer)
            work = self._dist.all_reduce(copy, group=self.group, async_op=True)  # SUM: Gloo has no AVG
            self._pending[index] = (list(bucket.parameters()), copy, work)
            self.hook_calls += 1
            self.hook_bytes += copy.numel() * copy.element_size()
        future = torch.futures.Future()
        future.set_result(buffer)
        return future

    def all_reduce_mean_(self, tensors: list[Tensor], kind: str = "gradients") -> None:
        if kind != "gradients":
            return super().all_reduce_mean_(tensors, kind)
        if self.world_size == 1 or not tensors:
            return
        if not self._pending:
            raise RuntimeError("extrap.register_ddp: no gradients were averaged since the last step; "
                               "run backward through the DDP model (not its .module) before step()")
        covered = set()
        for params, copy, work in self._pending.values():
            work.wait()
            copy.div_(self.world_size)
            means = copy.split([p.numel() for p in params])
            pairs = [(p.grad, m.view_as(p)) for p, m in zip(params, means) if p.grad is not None]  # unused: None
            if pairs:
                torch._foreach_copy_([g for g, _ in pairs], [m for _, m in pairs])
            covered.update(id(g) for g, _ in pairs)
        self._pending.clear()
        missing = sum(id(t) not in covered for t in tensors)
        if missing:
            raise RuntimeError(f"extrap.register_ddp: {missing} of the optimizer's gradients are not in the "
                               "DDP model's buckets; give the optimizer the DDP model's parameters only")

    def skip_averaging_when(self, predicate) -> None:
        """No all-reduce in a backward where ``predicate()`` holds (post-local SGD's local phase)."""
        self.local_phase = predicate

    def no_sync(self):
        """A backward that keeps its gradient local (the closure of ``extragradient`` and ``sam``)."""
        return self.model.no_sync()


def _buffer_sync_flag() -> str:
    """DDP's switch for copying rank 0's buffers at every forward: the argument and attribute
    ``forward_sync_buffers`` from torch 2.13 on, ``broadcast_buffers`` before."""
    from torch.nn.parallel import DistributedDataParallel

    return ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers")


def ddp_keeping_buffers(module: nn.Module, **kwargs) -> nn.Module:
    """``DistributedDataParallel(module, **kwargs)`` that leaves each rank's buffers alone after
    construction."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, **{_buffer_sync_flag(): False}, **kwargs)


def register_ddp(ddp_model: nn.Module, optimizer) -> DDPComm:
    """Make ``optimizer`` (an ``ExtrapolatedSGD``/``ExtrapolatedAdam``) run extrap exactly under
    ``ddp_model``, a ``DistributedDataParallel``. Call it once, after building both and before the
    first backward (and before wrapping the optimizer in ``PostLocalSGD``); returns the
    communicator it gave the optimizer.

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
                      f"own BatchNorm statistics, as each worker does; build it with {flag}=False to "
                      "silence this", stacklevel=2)
    comm = DDPComm(ddp_model)
    ddp_model.register_comm_hook(None, comm.hook)
    optimizer.comm = comm
    return comm


def refuse_without_comm(perturbation: str) -> None:
    """Refuse to run a perturbation that needs each worker's own gradient in a process group of
    several ranks without a communicator: .grad may be an average already (DDP), and then every
    worker would extrapolate to the same point."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            f"perturbation={perturbation!r} needs each rank's local gradient, but this optimizer has no "
            f"communicator in a process group of {dist.get_world_size()} ranks, so it cannot tell a local "
            "gradient from one DistributedDataParallel has averaged. Under DDP call "
            "extrap.register_ddp(ddp_model, optimizer) once after building both; without DDP pass "
            "comm=extrap.engines.TorchDistComm() to average the gradients in step().")
