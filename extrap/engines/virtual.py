"""K virtual workers in one process on one device.

Each worker has its own parameters (equal to the others' x_t while training is synchronous, its
own x̃ when perturbed, its own model in post-local SGD's local phase), its own BatchNorm buffers,
random stream and data shard. All of it lives in tensors with a leading worker axis ``[K, ...]``
that one optimizer updates elementwise; ``VirtualComm`` averages over that axis and is the
optimizer's only view of it.

Two ways to run the K forwards and backwards:
- batched (default): ``torch.func.functional_call`` under ``torch.func.vmap`` — one pass over the
  model for all K workers, so K workers cost one model's Python overhead;
- loop: the same functional call once per worker, the reference the batched path is tested
  against.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from .comm import VirtualComm
from .single import Execution, SingleEngine, split_aux, to_channels_last

__all__ = ["VirtualWorkers", "VirtualEngine", "stack_trees"]


def stack_trees(trees: list):
    """Stack same-shaped pytrees of tensors leaf by leaf along a new leading axis."""
    return tree_map(lambda *leaves: torch.stack(leaves), *trees)


class VirtualWorkers:
    """K copies of a model as stacked leaf tensors; ``forward_backward`` takes ``[K, b, ...]``."""

    def __init__(self, model: nn.Module, num_workers: int, batched: bool = True, execution: Execution = Execution()):
        self.num_workers, self.execution = num_workers, execution
        # a model may declare ``vmap_compatible = False`` (no batching rule for one of its kernels)
        self.batched = batched and getattr(model, "vmap_compatible", True)
        self.template = copy.deepcopy(model)  # structure only: its tensors are swapped in
        k = num_workers

        def stacked(p: Tensor) -> Tensor:  # [K, ...]: the K workers' copies side by side
            t = p.detach().unsqueeze(0).repeat(k, *([1] * p.dim()))
            return (to_channels_last(t) if execution.channels_last and p.dim() == 4 else t).requires_grad_(p.requires_grad)

        self.params = {n: stacked(p) for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().unsqueeze(0).repeat(k, *([1] * b.dim())).clone()
                        for n, b in model.named_buffers()}
        self._eval = None
        self._batched_losses: dict = {}  # loss_fn -> the K-worker function (vmapped, compiled)

    def named_parameters(self):
        return iter(self.params.items())

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def train(self, mode: bool = True) -> "VirtualWorkers":
        self.template.train(mode)
        return self

    def _worker_loss(self, params, buffers, inputs, targets, loss_fn):
        out = functional_call(self.template, (params, buffers), (inputs,), tie_weights=False)
        return loss_fn(out, targets)

    def forward_backward(self, loss_fn: Callable, inputs, targets):
        """Each worker's loss on its own batch (``inputs[k]``; inputs and targets may be pytrees
        of tensors with a leading worker axis), summed and backpropagated: worker k's slice of
        every ``.grad`` is the gradient of its own loss. Returns the K losses, or ``(losses, aux)``
        with one aux per worker when ``loss_fn`` returns ``(loss, aux)``."""
        inputs = self.execution.layout(inputs, image_dims=5)
        with self.execution.autocast(self.device):
            if self.batched:
                losses, aux = split_aux(self._batched_loss(loss_fn)(self.params, self.buffers, inputs, targets))
                aux = None if aux is None else [tree_map(lambda t: t[k], aux) for k in range(self.num_workers)]
            else:
                outs = [split_aux(self._worker_loss({n: p[k] for n, p in self.params.items()},
                                                    {n: b[k] for n, b in self.buffers.items()},
                                                    tree_map(lambda t: t[k], inputs),
                                                    tree_map(lambda t: t[k], targets), loss_fn))
                        for k in range(self.num_workers)]
                losses = torch.stack([loss for loss, _ in outs])
                aux = None if outs[0][1] is None else [a for _, a in outs]
        losses.sum().backward()
        return losses.detach() if aux is None else (losses.detach(), aux)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def _batched_loss(self, loss_fn: Callable):
        """All K workers' losses as one ``vmap`` of the functional model (compiled where asked)."""
        if loss_fn not in self._batched_losses:
            fn = vmap(lambda p, b, x, y: self._worker_loss(p, b, x, y, loss_fn), randomness="different")
            compile_backend = self.execution.compile
            self._batched_losses[loss_fn] = fn if compile_backend is None else torch.compile(fn, backend=compile_backend)
        return self._batched_losses[loss_fn]

    @torch.no_grad()
    def eval_module(self, worker: int = 0) -> nn.Module:
        """A module holding worker ``worker``'s parameters and buffers (call outside perturb/step)."""
        if self._eval is None:
            self._eval = copy.deepcopy(self.template)
        for n, t in self._eval.named_parameters():
            t.copy_(self.params[n][worker])
        for n, t in self._eval.named_buffers():
            t.copy_(self.buffers[n][worker])
        return self._eval

    def state_dict(self) -> dict:
        return {"params": {n: p.detach() for n, p in self.params.items()}, "buffers": dict(self.buffers)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for n, p in self.params.items():
            p.copy_(state["params"][n])
        for n, b in self.buffers.items():
            b.copy_(state["buffers"][n])


class VirtualEngine(SingleEngine):
    """K workers simulated in this process; rank 0 of one, so it alone prints and writes."""

    kind = "virtual"

    def __init__(self, num_workers: int, device: str | torch.device | None = None, batched: bool = True):
        super().__init__(device)
        self.comm = VirtualComm(num_workers)
        self.world_size = num_workers
        self.batched = batched

    def prepare(self, model: nn.Module, execution: Execution = Execution()) -> VirtualWorkers:
        return VirtualWorkers(model.to(self.device), self.world_size, batched=self.batched, execution=execution)

    def stack(self, per_worker: list):
        """Stack the K workers' batches (pytrees of tensors) along a new leading axis."""
        return stack_trees(per_worker)

    def worker_batch(self, stacked):
        """The K workers take the stacked batch ``[K, b, ...]`` as it is."""
        return stacked

    def mean_over_workers(self, values: Tensor) -> Tensor:
        return values.float().mean()
