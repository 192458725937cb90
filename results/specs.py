"""The figures an item's config declares (its ``figures:`` section), read and checked.

Each figure is a file, ``<name>.png`` beside the tables, drawn from the records of the item whose
config declares it by one of the drawers of ``results.figures``: table1's config declares the
appendix's Figure 5 (Table 1's runs over time), figure1's config Figure 1. For instance::

    figures:
      figure5:
        draw: curves                  # one of DRAWERS
        title: "Figure 5 — the curves of {title}, {batches}"
        panels:
          - title: (a) training loss
            log_y: true
            y:                        # the first of these the records hold; else the last
              - {key: train_loss_subset, from: trace, label: "training loss at $x_t$ (fixed training subset)"}
              - {key: train_loss, from: curve, label: "training loss at $x_t$"}
          - title: (b) accuracy
            y: {key: test_top1, from: curve, label: "{split}-split top-1 (%)"}

A panel's ``y`` is one series or a list of them tried in order: ``key`` in the records' ``from``
list (``SOURCES``), drawn with ``label`` on the y axis and, where it gives one, its own
``title``. ``final_vs_setting`` draws one panel whose ``x`` is a run setting (``{setting: epochs,
label: ...}``) and whose ``y`` is ``{from: final}``: the item's metric (its ``about.metric``)
unless a ``key`` and ``label`` are given. Texts may hold placeholders (``PLACEHOLDERS``), filled
from the records when the figure is drawn; any other brace (``$\\tilde{x}$``) is left as written.
A figure's ``title`` defaults to ``DEFAULT_TITLE``; the curve drawers add what the band is.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from .configs import config_path, read_config

__all__ = ["DRAWERS", "SOURCES", "PLACEHOLDERS", "PLACEHOLDER", "DEFAULT_TITLE", "Series", "Panel", "FigureSpec",
           "read_figures", "declared_figures"]

DRAWERS = {
    "curves": "the panels side by side, a line per method (and variant) against steps: mean over seeds, band ± 1 std",
    "curves_by_batch": "as curves, a column per global batch (sorted), the panels one above the other",
    "final_vs_setting": "one panel, a line per method: the final metric (mean ± std over seeds) at each value of "
                        "a run setting",
}
SOURCES = {"curve": "the evaluations", "trace": "the trace points (log_every)",
           "smoothness": "the smoothness probes (probe_every)", "final": "the run's final values"}
PLACEHOLDERS = {
    "title": "the item's title and setting (its about)", "batches": "the global batch(es) and workers",
    "split": "the split the task evaluated", "column": "the column's global batch (curves_by_batch)",
    "metric": "the y label (final_vs_setting)",
}
DEFAULT_TITLE = "{title}, {batches}"
_OWN_PLACEHOLDERS = {"column": "curves_by_batch", "metric": "final_vs_setting"}  # filled by one drawer only
PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True)
class Series:
    """What a panel draws: ``key`` in the records' ``source`` list (None: the item's metric)."""

    key: str | None
    source: str
    label: str | None
    title: str | None = None


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]  # the first the records hold is drawn; else the last
    log_y: bool = False
    x_setting: str | None = None  # final_vs_setting: the run setting along x
    x_label: str | None = None


@dataclass(frozen=True)
class FigureSpec:
    name: str
    draw: str
    title: str
    panels: tuple[Panel, ...]


def _mapping(value, where: str, keys: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - keys, key=str)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; expected {', '.join(sorted(keys))}")
    missing = sorted(required - set(value))
    if missing:
        raise ValueError(f"{where}: expected a {missing[0]!r}")
    return value


def _text(value, where: str, draw: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a text, got {value!r}")
    for name in PLACEHOLDER.findall(value):
        if _OWN_PLACEHOLDERS.get(name, draw) != draw:
            raise ValueError(f"{where}: {{{name}}} is filled by the {_OWN_PLACEHOLDERS[name]} drawer only")
    return value


def _series(value, where: str, draw: str, metric: dict) -> Series:
    final = draw == "final_vs_setting"
    s = _mapping(value, where, {"key", "from", "label", "title"}, {"from"} if final else {"key", "from", "label"})
    if s["from"] not in SOURCES or (s["from"] == "final") != final:
        expected = "final" if final else ", ".join(k for k in SOURCES if k != "final")
        raise ValueError(f"{where}.from: expected {expected} for the {draw} drawer, got {s['from']!r}")
    if "key" in s and not (isinstance(s["key"], str) and s["key"]):
        raise ValueError(f"{where}.key: expected a record's key, got {s['key']!r}")
    if "key" not in s and "key" not in metric:
        raise ValueError(f"{where}: expected a key, or the item's about.metric to name one")
    return Series(s.get("key"), s["from"], _text(s["label"], f"{where}.label", draw) if "label" in s else None,
                  _text(s["title"], f"{where}.title", draw) if "title" in s else None)


def _panel(value, where: str, draw: str, metric: dict) -> Panel:
    final = draw == "final_vs_setting"
    p = _mapping(value, where, {"title", "y", "log_y"} | ({"x"} if final else set()), {"y"} | ({"x"} if final else set()))
    ys = p["y"] if isinstance(p["y"], list) else [p["y"]]
    if not ys or (final and len(ys) > 1):
        raise ValueError(f"{where}.y: expected {'one series' if final else 'a series or a list of them'}, got {p['y']!r}")
    series = tuple(_series(y, f"{where}.y" + (f"[{i}]" if isinstance(p["y"], list) else ""), draw, metric)
                   for i, y in enumerate(ys))
    if not isinstance(p.get("log_y", False), bool):
        raise ValueError(f"{where}.log_y: expected true or false, got {p['log_y']!r}")
    x = _mapping(p["x"], f"{where}.x", {"setting", "label"}, {"setting", "label"}) if final else {}
    if final and not (isinstance(x["setting"], str) and x["setting"]):
        raise ValueError(f"{where}.x.setting: expected a run setting's name, got {x['setting']!r}")
    return Panel(_text(p.get("title", ""), f"{where}.title", draw), series, p.get("log_y", False),
                 x.get("setting"), _text(x["label"], f"{where}.x.label", draw) if final else None)


def read_figures(cfg: dict) -> dict[str, FigureSpec]:
    """The figures ``cfg`` (an item's config) declares, by name, checked: a ValueError names the
    first key that is wrong (``figures.figure1.panels[0].y.from: ...``)."""
    section = cfg.get("figures")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"figures: expected a mapping of figure names to figures, got {section!r}")
    about = cfg.get("about") if isinstance(cfg.get("about"), dict) else {}
    metric = about.get("metric") if isinstance(about.get("metric"), dict) else {}
    out = {}
    for name, value in section.items():
        where = f"figures.{name}"
        if not (isinstance(name, str) and re.fullmatch(r"[\w-]+", name)):
            raise ValueError(f"figures: {name!r} is no file name (letters, digits, - and _)")
        f = _mapping(value, where, {"draw", "title", "panels"}, {"draw", "panels"})
        if f["draw"] not in DRAWERS:
            raise ValueError(f"{where}.draw: expected one of {', '.join(DRAWERS)}, got {f['draw']!r}")
        panels = f["panels"]
        if not isinstance(panels, list) or not panels or (f["draw"] == "final_vs_setting" and len(panels) > 1):
            expected = "one panel" if f["draw"] == "final_vs_setting" else "a list of panels"
            raise ValueError(f"{where}.panels: expected {expected}, got {panels!r}")
        out[name] = FigureSpec(name, f["draw"], _text(f.get("title", DEFAULT_TITLE), f"{where}.title", f["draw"]),
                               tuple(_panel(p, f"{where}.panels[{i}]", f["draw"], metric) for i, p in enumerate(panels)))
    return out


def _natural(name: str) -> list:
    """figure2 before figure10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def declared_figures(records: list[dict]) -> dict[str, tuple[str, FigureSpec]]:
    """The figures the configs of the records' items declare: name -> (the declaring item, its
    declaration), by name (a name two items declare: the first item's, in the records' order). A
    config whose ``figures`` cannot be read is said on stderr and its figures left out."""
    declared: dict[str, tuple[str, FigureSpec]] = {}
    for item in dict.fromkeys(r["item"] for r in records):
        cfg = read_config(item)
        try:
            specs = read_figures(cfg) if cfg is not None else {}
        except ValueError as e:
            print(f"warning: {config_path(item)}: {e}; its figures are not drawn", file=sys.stderr, flush=True)
            continue
        for name, spec in specs.items():
            declared.setdefault(name, (item, spec))
    return {name: declared[name] for name in sorted(declared, key=_natural)}
