"""The paper's models, built by name: ``build_model(name, **kwargs)`` (SPEC §7)."""

from __future__ import annotations

from torch import nn

from .digits_cnn import DigitsCNN

__all__ = ["build_model", "MODELS", "DigitsCNN"]

MODELS = {"digits_cnn": DigitsCNN}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name; unknown names raise ``ValueError`` listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {', '.join(sorted(MODELS))}, got {name!r}")
    return MODELS[name](**kwargs)
