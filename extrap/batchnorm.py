"""The training loss at x_t with BatchNorm statistics of x_t.

During extrap training every forward runs at a worker's x̃, so the running BatchNorm statistics
describe the x̃ points, not x_t: a loss at x_t in eval mode with them is biased, the more so the
farther x̃ lies from x_t. ``reestimated_batch_norm`` re-estimates them at x_t first, as
``torch.optim.swa_utils.update_bn`` does for averaged weights (a few batches, no gradient, the
cumulative mean of the batches' statistics), and puts the training statistics back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

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
    try:
        update_bn(batches, module)  # no_grad, train mode for the pass, the module's mode restored
        yield module
    finally:
        with torch.no_grad():
            for b, s in saved:
                b.copy_(s)
