"""Count the places where the host waits for the device: a training step should have none.

``HostSyncCounter`` is a context manager. Inside it, every operation that makes the host read a
tensor's value is counted by name:

- at the dispatcher (a ``TorchDispatchMode``): ``aten::_local_scalar_dense`` (``.item()``,
  ``bool(t)``, ``float(t)``, ``int(t)``), device-to-host copies, blocking host-to-device copies
  (without ``non_blocking=True`` the host waits for the device's queue), and the operations
  whose output size depends on the data (``nonzero``, ``masked_select``, boolean-mask indexing,
  ``unique``), which read the device to size their result;
- above it (a ``TorchFunctionMode``): ``Tensor.tolist`` and ``Tensor.numpy``, which on a CPU
  tensor never reach the dispatcher but on a GPU tensor are device-to-host copies.

On the CPU nothing is a synchronisation, but the same code on a GPU would be: so a CPU test of
the counts holds the GPU path to the same standard. ``counts`` is a ``collections.Counter``;
``total`` its sum. ``HostSyncCounter(optimizer)`` leaves out reads of the optimizer's ``step``
counters, which torch keeps on the host by design (unless ``capturable`` or ``fused``): reading
them never waits for the device. The modes slow every operation down, so use the counter in tests and in
short measurements, not while training for real: ``tests/test_host_syncs.py`` and
``python -m bench.train_loop --host-reads``.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter"]

_aten = torch.ops.aten
_DATA_DEPENDENT = {_aten.nonzero.default, _aten.masked_select.default, _aten._unique2.default,
                   _aten.unique_consecutive.default, _aten.unique_dim.default}
_HOST_READS = {torch.Tensor.tolist, torch.Tensor.numpy}


def _device(t) -> str | None:
    return t.device.type if isinstance(t, torch.Tensor) else None


class _Dispatch(TorchDispatchMode):
    def __init__(self, counts: Counter, on_host: Callable[[torch.Tensor], bool]):
        super().__init__()
        self.counts, self.on_host = counts, on_host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = None
        if func is _aten._local_scalar_dense.default:
            name = None if self.on_host(args[0]) else "item"
        elif func in _DATA_DEPENDENT:
            name = func.overloadpacket.__name__
        elif func is _aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            name = "boolean index"
        elif func in (_aten._to_copy.default, _aten.copy_.default):
            src = args[1] if func is _aten.copy_.default else args[0]
            dst = args[0] if func is _aten.copy_.default else out
            non_blocking = kwargs.get("non_blocking", args[2] if func is _aten.copy_.default and len(args) > 2 else False)
            if _device(src) not in (None, "cpu", "meta") and _device(dst) == "cpu":
                name = "device-to-host copy"
            elif _device(src) == "cpu" and _device(dst) not in (None, "cpu", "meta") and not non_blocking:
                name = "blocking host-to-device copy"
        if name is not None:
            self.counts[name] += 1
        return out


class _Function(TorchFunctionMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            self.counts[func.__name__] += 1
        return func(*args, **(kwargs or {}))


class HostSyncCounter:
    """``with HostSyncCounter() as syncs: ...`` then ``syncs.total``, ``syncs.counts``."""

    def __init__(self, optimizer: torch.optim.Optimizer | None = None):
        self.counts: Counter = Counter()
        self.optimizer = optimizer
        self._modes = (_Function(self.counts), _Dispatch(self.counts, self._on_host))

    def _on_host(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is one of the optimizer's step counters on the CPU."""
        if self.optimizer is None or t.device.type != "cpu":
            return False
        return any(state.get("step") is t for state in self.optimizer.state.values() if isinstance(state, dict))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> "HostSyncCounter":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
