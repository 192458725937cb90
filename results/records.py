"""Reading ``records.jsonl`` and naming what is in it.

A record is one finished (item, variant, cell, seed) as the ``reproduce/`` scripts append it
(docs/reproducing.md). The file is append-only and may end in a
partial line after a crash, and a rerun cell appends a second record for the same key:
``load_records`` skips what does not parse (saying so on stderr, with the line number) and keeps
the last record of each key.

How a record is shown comes from the record itself: the runner copies its item config's labels,
order, colours and ``about`` (title, setting, metric, layout) into it (``presentation``), so
``results/`` keeps no table of labels or orders of its own. Records written before they carried
these get them from their item's config (``results.configs``) when they are read.

``identity`` says when two runs are the same run: the runner refuses to resume or skip a run
whose identity changed, and a study compares its arms by it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from .configs import read_config

__all__ = ["load_records", "presentation", "methods_of", "variants_of", "about_of", "metric_of", "variant_of",
           "record_key", "int_field", "unique_ints", "identity", "canonical", "IDENTITY_EXCLUDES"]


def presentation(cfg: dict, variants: list[str], variant: str, cell: str) -> dict:
    """What a record carries from its item config ``cfg`` for ``results/`` to show it: the cell's
    label, colour and place among the cells, the variant's label and place among ``variants``,
    and the config's ``about``. A cell or variant the config lacks gets no label or place."""
    cells, about = list(cfg.get("cells") or {}), cfg.get("about") or {}
    settings = (cfg.get("cells") or {}).get(cell) or {}
    shown = {"about": {key: value for key, value in about.items() if key != "variant_labels"}}
    if variant in variants:
        shown.update(variant_label=(about.get("variant_labels") or {}).get(variant, variant),
                     variant_order=variants.index(variant))
    if cell in cells:
        shown.update(method=settings.get("label", cell), order=cells.index(cell))
        shown.update({"color": settings["color"]} if "color" in settings else {})
    return shown


def _with_presentation(record: dict, cache: dict) -> dict:
    """A record that predates ``about`` gets its item config's presentation (when there is one);
    ``cache`` holds the configs read so far, by item."""
    if "about" in record:
        return record
    if record["item"] not in cache:
        cache[record["item"]] = read_config(record["item"])
    if (cfg := cache[record["item"]]) is None:
        return record
    variants = list(cfg.get("variants") or {"default": {}})
    return {**presentation(cfg, variants, variant_of(record), record["cell"]), **record}


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
    configs: dict = {}
    return [_with_presentation(r, configs) for r in latest.values()]


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
            except RecursionError:
                _warn(f"{path}:{lineno}: skipped, nested too deeply to be a record")
                continue
            record = _printable(record)
            if not isinstance(record, dict):
                _warn(f"{path}:{lineno}: skipped, a JSON {type(record).__name__}, not an object")
                continue
            if not isinstance(record.get("item"), str) or not isinstance(record.get("cell"), str):
                _warn(f"{path}:{lineno}: skipped, no 'item' or 'cell' string")
                continue
            latest[record_key(record)] = record


def _printable(value):
    """``value`` with every string made encodable (a lone surrogate, which JSON's ``\\ud800`` can
    carry, becomes U+FFFD), so that tables, CSV and figures can be written whatever a record says."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if not value.isascii() else value
    if isinstance(value, list):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    return value


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


def int_field(record: dict, key: str) -> int | None:
    """An integer field of the record (workers, local_batch, global_batch), or None."""
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def unique_ints(records: list[dict], key: str) -> list[int]:
    """The distinct integer values of ``key`` over ``records``, sorted."""
    return sorted({r[key] for r in records if isinstance(r.get(key), int) and not isinstance(r.get(key), bool)})


def _ordered(records: list[dict], key, order_key: str, label_key: str) -> tuple[list, dict]:
    """The distinct ``key(record)`` values in their config order (the records' ``order_key``;
    those without one after the others, in order of appearance) and each one's label (the
    records' ``label_key``, else the value itself)."""
    first: dict = {}
    for i, r in enumerate(records):
        value = key(r)
        order = r.get(order_key)
        rank = (0, order, i) if isinstance(order, int) and not isinstance(order, bool) else (1, 0, i)
        if value not in first or rank < first[value][0]:
            label = r.get(label_key)
            first[value] = (rank, label if isinstance(label, str) and label else (value or "(no variant)"))
    values = sorted(first, key=lambda v: first[v][0])
    return values, {v: first[v][1] for v in values}


def methods_of(records: list[dict]) -> tuple[list[str], dict[str, str]]:
    """The records' cells in their config's order, and each cell's label (the record's
    ``method``, written from the config's ``label``)."""
    return _ordered(records, lambda r: r["cell"], "order", "method")


def variants_of(records: list[dict]) -> tuple[list[str], dict[str, str]]:
    """The records' variants in their config's order, and each one's label (``variant_label``)."""
    return _ordered(records, variant_of, "variant_order", "variant_label")


def about_of(records: list[dict]) -> dict:
    """How the item is shown (its config's ``about``: title, setting, metric, rows), from its
    records; empty when they carry none."""
    return next((r["about"] for r in records if isinstance(r.get("about"), dict)), {})


# what does not change what a run computes: how it is shown, how many seeds its item runs, where
# the data lie, which engine runs it (they agree: tests/test_engines.py), its checkpoint rhythm
IDENTITY_EXCLUDES = ("label", "color", "seeds", "data_dir", "engine", "target_loss", "checkpoint_every",
                     "checkpoint_minutes", "tensorboard")


def identity(settings) -> dict:
    """What makes two runs the same run: their resolved settings, less how they are shown. The
    runner refuses to resume or skip a run whose identity changed; the study compares arms by it."""
    if not isinstance(settings, dict):
        return {}
    return {k: canonical(v) for k, v in settings.items() if k not in IDENTITY_EXCLUDES}


def canonical(value):
    """A setting as identity compares it: floats to 12 significant digits, so that a rate reached
    by arithmetic (0.1 · 0.1 / 0.05 = 0.20000000000000004) is the rate written 0.2."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value
