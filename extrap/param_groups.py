"""Parameter groups by rule: weight decay (and LARS) never on BatchNorm weights or biases."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["no_decay_names", "weight_decay_groups"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that take no weight decay: every parameter of a normalisation
    layer (BatchNorm, LayerNorm, GroupNorm) and every bias (``bias``, ``bias_ih_l0``,
    ``in_proj_bias``, ...)."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            if isinstance(module, _NORMS) or "bias" in p_name:
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def weight_decay_groups(
    model: nn.Module,
    weight_decay: float,
    named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Two optimizer groups: decayed weights, and BatchNorm/bias tensors with ``weight_decay=0``
    and ``lars=False`` (nor does LARS adapt them, the usual LARS practice).

    ``named_parameters`` supplies the tensors when they are not the model's own (the stacked
    tensors of virtual workers, named as in the model). ``log`` reports the counts (default: the
    ``extrap`` logger, at INFO).
    """
    skip = no_decay_names(model)
    own = dict(model.named_parameters())
    named = list(own.items() if named_parameters is None else named_parameters)
    unknown = [n for n, _ in named if n not in own]
    if unknown:
        raise ValueError(f"named_parameters: {unknown[0]!r} is not a parameter of the model")
    decay = [(n, p) for n, p in named if p.requires_grad and n not in skip]
    plain = [(n, p) for n, p in named if p.requires_grad and n in skip]
    count = lambda ps: sum(own[n].numel() for n, _ in ps)  # noqa: E731 (on the model: one worker's values)
    report = log or logging.getLogger("extrap").info
    report(f"weight decay {weight_decay:g} on {len(decay)} tensors ({count(decay):,} values); "
           f"none on {len(plain)} BatchNorm/bias tensors ({count(plain):,} values)")
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in plain], "weight_decay": 0.0, "lars": False},
    ]
