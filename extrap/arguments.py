"""Argument checks, with one message format: ``name: expected <what>, got <value>``."""

from __future__ import annotations

from .engines.comm import Communicator

__all__ = ["require", "check_optimizer_arguments", "sgd_kernel"]


def require(checks: dict[str, tuple[object, bool, str]]) -> None:
    """Raise ``ValueError`` for the first check ``name: (value, ok, expected)`` that fails."""
    for name, (value, ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"{name}: expected {expected}, got {value!r}")


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_OPTIMIZER_RULES = {  # argument: (test, what it must be)
    **{k: (lambda v: _real(v) and v >= 0, "a float >= 0") for k in ("lr", "weight_decay", "eps", "gamma_factor")},
    **{k: (lambda v: _real(v) and v > 0, "a float > 0") for k in ("lr_scale", "trust")},
    "momentum": (lambda v: _real(v) and 0 <= v < 1, "a float in [0, 1)"),
    "betas": (lambda v: len(v) == 2 and all(_real(b) and 0 <= b < 1 for b in v), "two floats in [0, 1)"),
    "gamma": (lambda v: v is None or _real(v) and v >= 0, "None or a float >= 0"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "comm": (lambda v: v is None or isinstance(v, Communicator),
             "a communicator (extrap.engines.Communicator: average, per_worker, worker_ids, ...)"),
}


def check_optimizer_arguments(**args) -> None:
    """Check ``ExtrapolatedSGD``/``ExtrapolatedAdam``'s numeric and typed arguments by name."""
    require({name: (value, _OPTIMIZER_RULES[name][0](value), _OPTIMIZER_RULES[name][1])
             for name, value in args.items()})


def sgd_kernel(params: list, comm: Communicator, foreach: bool | None, fused: bool | None) -> tuple:
    """``(foreach, fused)`` for torch's SGD: as given, or by default torch's one-pass kernel where it
    has one, but not where a process holds K workers (their models may be [K, ...] tensors): its
    vector body and scalar tail round differently, and would drift equal workers apart."""
    if fused is not None or foreach is not None:
        return foreach, fused
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    fused = len(comm.worker_ids) == 1 and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
    return (None, True) if fused else (True, None)
