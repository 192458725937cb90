"""K virtual workers in one process on one device.

While training is synchronous the workers share one x_t: the engine keeps one copy of the
parameters and the optimizer one state. Per worker it keeps only what differs: its point x̃ (a
``[K, ...]`` tensor per parameter, scratch that the optimizer writes and ``step()`` resets to
x_t), its local gradient (the points' ``.grad``, kept by the optimizer), its BatchNorm buffers
(``[K, ...]``), random stream and data shard. ``VirtualComm`` averages over the worker axis and
is the optimizer's only view of it. In post-local SGD's local phase the workers' models differ:
``split`` turns the parameters and the optimizer's state into ``[K, ...]`` tensors, one model
per worker, which the points are then.

Two ways to run the K forwards and backwards:
- batched: ``torch.func.functional_call`` under ``torch.func.vmap`` — one pass over the model for
  all K workers, so K workers cost one model's Python overhead (the default on a GPU);
- loop: the same functional call once per worker, the reference the batched path is tested
  against, and on a CPU the faster of the two (``docs/bench.md``), so its default there.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from .comm import Points, VirtualComm
from .single import Execution, SingleEngine, split_aux, to_channels_last

__all__ = ["VirtualWorkers", "VirtualEngine", "SharedPoints", "batched_by_default"]

SPLIT_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # per model once split


def batched_by_default(device: torch.device) -> bool:
    """vmap on accelerators; the per-worker loop on a CPU, where it measures faster."""
    return torch.device(device).type != "cpu"


class SharedPoints(Points):
    """The points of K virtual workers that share one x_t: each parameter's ``[K, ...]`` tensor,
    until ``split`` gives every worker its own model (then the parameters are where they compute,
    and the points are freed)."""

    def __init__(self, workers: "VirtualWorkers", names: dict[int, str]):
        self._workers, self._names = workers, names  # id of a parameter -> its name

    def of(self, p: Tensor) -> Tensor:
        points = self._workers._points
        return points[self._names[id(p)]] if points is not None and id(p) in self._names else p

    def shared(self, params) -> list[tuple[Tensor, Tensor]]:
        points = self._workers._points
        return [] if points is None else [(p, points[self._names[id(p)]]) for p in params if id(p) in self._names]

    def split(self, optimizer) -> None:
        self._workers.split(optimizer)


class VirtualWorkers:
    """K workers of one model, sharing x_t; ``forward_backward`` takes ``[K, b, ...]``.

    ``parameters()`` are the optimizer's: x_t once (each worker's model as ``[K, ...]`` once
    ``split``). ``points()`` are where the workers compute; their ``.grad`` after
    ``forward_backward`` are the workers' own gradients. ``comm`` (the engine's) is the
    communicator to give the optimizer; it holds the points of the model prepared last. The optimizer's
    ``step()`` resets the points to x_t; change x_t only through it or ``load_state_dict``."""

    def __init__(self, model: nn.Module, num_workers: int, batched: bool | None = None,
                 execution: Execution = Execution(), comm: VirtualComm | None = None):
        self.num_workers, self.execution = num_workers, execution
        self.comm = VirtualComm(num_workers) if comm is None else comm
        device = next(iter(model.parameters())).device
        # a model may declare ``vmap_compatible = False`` (no batching rule for one of its kernels)
        self.batched = (batched_by_default(device) if batched is None else batched) and getattr(model, "vmap_compatible", True)
        self.template = copy.deepcopy(model)  # structure only: its tensors are swapped in
        self.params = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()}
        self._points = {n: self._stacked(p).requires_grad_(p.requires_grad) for n, p in self.params.items()}
        self.buffers = {n: self._stacked(b) for n, b in model.named_buffers()}
        # the comm holds the points of the model prepared last (a run after another on one engine)
        self.comm.points = self.store = SharedPoints(self, {id(p): n for n, p in self.params.items()})
        self._eval = None
        self._losses: dict = {}  # loss_fn -> the workers' loss function (vmapped, compiled)

    def _stacked(self, t: Tensor) -> Tensor:
        """[K, ...]: the K workers' copies side by side (channels-last per worker where asked)."""
        t = t.detach().unsqueeze(0).repeat(self.num_workers, *([1] * t.dim()))
        return to_channels_last(t) if self.execution.channels_last and t.dim() == 5 else t

    @property
    def shared(self) -> bool:
        """Whether the workers share one x_t (until ``split``)."""
        return self._points is not None

    def named_parameters(self):
        return iter(self.params.items())

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def points(self) -> dict[str, Tensor]:
        """The [K, ...] tensors the workers compute at: their x̃ after ``perturb``."""
        return self._points if self.shared else self.params

    @torch.no_grad()
    def split(self, optimizer=None) -> None:
        """Give every worker its own model (post-local SGD's local phase): each parameter and the
        optimizer's per-model state become [K, ...] copies, in place, and the points go."""
        if not self.shared:
            return
        for n, p in self.params.items():
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for key in SPLIT_STATE:
                if key in state:
                    state[key] = self._stacked(state[key])
            p.data = self._stacked(p)
            p.grad = self._points[n].grad  # gradients taken at the points (= x_t) stay this step's
        self._points = None

    def train(self, mode: bool = True) -> "VirtualWorkers":
        self.template.train(mode)
        return self

    def _worker_loss(self, params, buffers, inputs, targets, loss_fn):
        out = functional_call(self.template, (params, buffers), (inputs,), tie_weights=False)
        return loss_fn(out, targets)

    def forward_backward(self, loss_fn: Callable, inputs, targets) -> tuple[Tensor, list | None]:
        """Each worker's loss on its own batch (``inputs[k]``; inputs and targets may be pytrees
        of tensors with a leading worker axis) at its point, summed and backpropagated: worker
        k's slice of every point's ``.grad`` is the gradient of its own loss. Returns ``(the K
        losses, aux)``: one aux per worker where ``loss_fn`` returns ``(loss, aux)``, else None."""
        if self.shared and self.comm.points is not self.store:
            raise RuntimeError("these workers' engine has prepared another model since: one engine "
                               "trains one model at a time")
        inputs, points = self.execution.layout(inputs, image_dims=5), self.points()
        with self.execution.autocast(self.device):
            fn = self._loss(loss_fn)
            if self.batched:
                losses, aux = split_aux(fn(points, self.buffers, inputs, targets))
                aux = None if aux is None else [tree_map(lambda t: t[k], aux) for k in range(self.num_workers)]
            else:
                outs = [split_aux(fn({n: p[k] for n, p in points.items()}, {n: b[k] for n, b in self.buffers.items()},
                                     tree_map(lambda t: t[k], inputs), tree_map(lambda t: t[k], targets)))
                        for k in range(self.num_workers)]
                losses = torch.stack([loss for loss, _ in outs])
                aux = None if outs[0][1] is None else [a for _, a in outs]
        losses.sum().backward()
        return losses.detach(), aux

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def _loss(self, loss_fn: Callable):
        """``(params, buffers, inputs, targets) -> loss``: all K workers' as one ``vmap`` of the
        functional model, or one worker's for the loop; compiled where asked."""
        if loss_fn not in self._losses:
            fn = lambda p, b, x, y: self._worker_loss(p, b, x, y, loss_fn)  # noqa: E731
            fn = vmap(fn, randomness="different") if self.batched else fn
            backend = self.execution.compile
            self._losses[loss_fn] = fn if backend is None else torch.compile(fn, backend=backend)
        return self._losses[loss_fn]

    @torch.no_grad()
    def eval_module(self, worker: int = 0) -> nn.Module:
        """A module holding worker ``worker``'s model (x_t while shared) and buffers (call
        outside perturb/step)."""
        if self._eval is None:
            self._eval = copy.deepcopy(self.template)
        for n, t in self._eval.named_parameters():
            t.copy_(self.params[n] if self.shared else self.params[n][worker])
        for n, t in self._eval.named_buffers():
            t.copy_(self.buffers[n][worker])
        return self._eval

    def state_dict(self) -> dict:
        return {"params": {n: p.detach() for n, p in self.params.items()}, "buffers": dict(self.buffers)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Load x_t (or, from a run in its local phase, the K models: then split) and buffers."""
        if self.shared and any(state["params"][n].dim() > p.dim() for n, p in self.params.items()):
            self.split()  # the optimizer's state comes from its own load_state_dict
        for n, p in self.params.items():
            p.copy_(state["params"][n])
        for n, b in self.buffers.items():
            b.copy_(state["buffers"][n])
        for n, q in (self._points or {}).items():
            q.copy_(self.params[n].expand_as(q))


class VirtualEngine(SingleEngine):
    """K workers simulated in this process; rank 0 of one, so it alone prints and writes."""

    kind = "virtual"

    def __init__(self, num_workers: int, device: str | torch.device | None = None, batched: bool | None = None):
        super().__init__(device)
        self.comm = VirtualComm(num_workers)
        self.world_size = num_workers
        self.batched = batched

    def prepare(self, model: nn.Module, execution: Execution = Execution()) -> VirtualWorkers:
        return VirtualWorkers(model.to(self.device), self.world_size, batched=self.batched, execution=execution,
                              comm=self.comm)

    def worker_batch(self, stacked):
        """The K workers take the stacked batch ``[K, b, ...]`` as it is."""
        return stacked

    def mean_over_workers(self, values: Tensor) -> Tensor:
        return values.float().mean()
