"""Reading ``records.jsonl`` and naming what is in it.

A record is one finished (item, variant, cell, seed) as the ``reproduce/`` scripts append it
(README "Reproducing the paper's tables and figures"). The file is append-only and may end in a
partial line after a crash, and a rerun cell appends a second record for the same key:
``load_records`` skips what does not parse (saying so on stderr, with the line number) and keeps
the last record of each key.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

__all__ = ["load_records", "METHOD_LABELS", "method_label", "order_methods", "metric_of", "variant_of",
           "record_key", "int_field", "unique_ints"]

# Human labels of the method slugs, in the paper's wording where it has one.
METHOD_LABELS = {
    "sgd-nolars": "mini-batch SGD w/o LARS",
    "extrap-sgd-nolars": "extrap-SGD w/o LARS",
    "sgd": "mini-batch SGD",
    "smoothout": "SmoothOut",
    "uniform-noise": "uniform noise",
    "stochastic-noise": "stochastic (anisotropic) noise",
    "extrap-sgd": "extrap-SGD",
    "sgd+post-local": "mini-batch SGD + post-local SGD",
    "extrap-sgd+post-local": "extrap-SGD + post-local SGD",
    "adam": "Adam",
    "extrap-adam": "extrap-Adam",
    "gaussian-noise": "Gaussian noise",
    "filter-gaussian": "filter-wise Gaussian noise",
    "filter-uniform": "filter-wise uniform noise",
    "extragradient": "extragradient",
    "sam": "SAM",
}

# The order methods are listed in when an item does not fix one: Table 1's, then Table 2's, then
# the rest of the framework (docs/method.md). Slugs not listed follow in the order they first appear.
_DEFAULT_ORDER = ["sgd-nolars", "extrap-sgd-nolars", "sgd", "smoothout", "uniform-noise",
                  "stochastic-noise", "extrap-sgd", "sgd+post-local", "extrap-sgd+post-local",
                  "gaussian-noise", "filter-gaussian", "filter-uniform", "extragradient", "sam",
                  "adam", "extrap-adam"]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def record_key(record: dict) -> tuple:
    """The identity of a record: (item, variant, cell, seed); a rerun replaces its predecessor."""
    seed = record.get("seed")
    if not isinstance(seed, (int, float, str, type(None))):  # keep the key hashable
        seed = json.dumps(seed, sort_keys=True)
    return (record.get("item"), variant_of(record), record.get("cell"), seed)


def load_records(paths) -> list[dict]:
    """The records of one ``records.jsonl`` file, or of several read in the order given, the last
    one of each (item, variant, cell, seed).

    Blank lines are ignored. A line that is not a JSON object (a partial line left by a crash, a
    corrupt one) is skipped with a warning on stderr naming the file and line number. A key seen
    twice keeps its first position in the list and its last line's content.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    latest: dict[tuple, dict] = {}
    for path in map(Path, paths):
        _read_into(latest, path)
    return list(latest.values())


def _read_into(latest: dict[tuple, dict], path: Path) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                _warn(f"{path}:{lineno}: skipped, not valid JSON ({e.msg}, column {e.colno}; "
                      f"a partial line from an interrupted run?)")
                continue
            if not isinstance(record, dict):
                _warn(f"{path}:{lineno}: skipped, a JSON {type(record).__name__}, not an object")
                continue
            if not isinstance(record.get("item"), str) or not isinstance(record.get("cell"), str):
                _warn(f"{path}:{lineno}: skipped, no 'item' or 'cell' string")
                continue
            latest[record_key(record)] = record


def variant_of(record: dict) -> str:
    """The record's variant as a string ('' when the item has only one setting)."""
    variant = record.get("variant")
    return "" if variant is None else str(variant)


def metric_of(record: dict, key: str) -> float | None:
    """``record['final'][key]`` as a finite float, or None when absent or not a finite number."""
    final = record.get("final")
    value = final.get(key) if isinstance(final, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def int_field(record: dict, key: str, pattern: str | None = None) -> int | None:
    """An integer field of the record, or failing that one parsed from its variant by ``pattern``
    (a regex with one group), e.g. the workers of variant ``"K=16,b=256"`` by ``r"K=(\\d+)"``."""
    value = record.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if pattern is not None:
        match = re.search(pattern, variant_of(record))
        if match:
            return int(match.group(1))
    return None


def unique_ints(records: list[dict], key: str) -> list[int]:
    """The distinct integer values of ``key`` over ``records``, sorted."""
    return sorted({r[key] for r in records if isinstance(r.get(key), int) and not isinstance(r.get(key), bool)})


def method_label(slug: str) -> str:
    """The human label of a method slug (the slug itself when it has none)."""
    return METHOD_LABELS.get(slug, slug)


def order_methods(slugs, preferred: list[str] | None = None) -> list[str]:
    """The distinct ``slugs`` with those in ``preferred`` (default: the paper's order) first, in
    that order, then the others in the order they first appear."""
    preferred = _DEFAULT_ORDER if preferred is None else preferred
    seen = list(dict.fromkeys(slugs))
    return [s for s in preferred if s in seen] + [s for s in seen if s not in preferred]
