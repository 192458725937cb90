"""A run's scalars as TensorBoard event files (``--tensorboard``, or ``tensorboard: true`` in a
config): every trace point (``trace/lr``, ``trace/gamma``, ``trace/batch_loss``, the losses at
x_t) and every evaluation (``eval/train_loss``, the task's metric, ...), at their step, written by
rank 0 into ``<run folder>/tensorboard/``. ``tensorboard --logdir runs/`` shows every run.

TensorBoard is an optional extra: ``pip install 'extrap[tensorboard]'`` (``make install`` has it).
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["available", "TensorBoardLog"]


def available() -> bool:
    """Whether torch's SummaryWriter can be built (the ``tensorboard`` package is installed)."""
    try:
        import tensorboard  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """``trace(point)`` and ``evaluation(point)`` are ``extrap.train.train``'s ``on_trace`` and
    ``on_eval``; ``close()`` flushes the file."""

    def __init__(self, directory: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (an optional extra)

        self.writer = SummaryWriter(log_dir=str(directory))

    def _scalars(self, prefix: str, point: dict) -> None:
        for key, value in point.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, global_step=point["step"])

    def trace(self, point: dict) -> None:
        self._scalars("trace", point)

    def evaluation(self, point: dict) -> None:
        self._scalars("eval", point)

    def close(self) -> None:
        self.writer.close()
