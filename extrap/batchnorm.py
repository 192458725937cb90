"""The training loss at x_t with BatchNorm statistics of x_t.

During extrap training every forward runs at a worker's x̃, so the running BatchNorm statistics
describe the x̃ points, not x_t: a loss at x_t in eval mode with them is biased, the more so the
farther x̃ lies from x_t. ``reestimated_batch_norm`` re-estimates them at x_t first, as
``torch.optim.swa_utils.update_bn`` does for averaged weights (a few batches, no gradient, the
cumulative mean of the batches' statistics), and puts the training statistics back afterwards.

``update_bn`` gets the cumulative mean from ``momentum=None``, for which BatchNorm reads its batch
counter from the device at every forward (``1 / float(num_batches_tracked)``): a host
synchronisation per layer and batch. Here the i-th batch runs with ``momentum = 1/i``, a Python
number, which is the same update with nothing read back (``tests/test_batchnorm.py`` compares the
two).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["has_batch_norm", "reestimated_batch_norm"]


def _batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` holds BatchNorm layers with running statistics."""
    return bool(_batch_norms(module))


@contextmanager
def reestimated_batch_norm(module: nn.Module, batches: Iterable[Tensor]) -> Iterator[nn.Module]:
    """Inside the block, ``module``'s BatchNorm running statistics are those of ``batches`` (model
    inputs) at its current parameters; on leaving, the statistics it had are restored."""
    layers = _batch_norms(module)
    saved = [(b, b.clone()) for m in layers for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
    momenta, was_training = [m.momentum for m in layers], module.training
    try:
        try:
            module.train()
            with torch.no_grad():
                for m in layers:
                    m.reset_running_stats()
                for i, batch in enumerate(batches, start=1):
                    for m in layers:
                        m.momentum = 1.0 / i  # running = (1 - 1/i) running + (1/i) batch: the mean so far
                    module(batch)
        finally:  # the block sees the module as the caller left it, but for its statistics
            for m, momentum in zip(layers, momenta):
                m.momentum = momentum
            module.train(was_training)
        yield module
    finally:
        with torch.no_grad():
            for b, s in saved:
                b.copy_(s)
