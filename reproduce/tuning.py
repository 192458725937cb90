"""The paper's tuning protocol, for a scale whose config has a ``tuning`` section (docs/laptop/).

The paper tunes each method's hyper-parameters on its own grid and extends a grid until its best
point lies inside (its appendix, "hyper-parameter tuning"). Here:

1. **Tuning.** Each method runs every point of its grid on the tuning seeds (``tuning.seeds``).
   A method may be tuned ``around`` another: it takes that method's chosen setting, and the rates
   neighbouring its chosen rate, and adds its own axes (extrap-SGD's ``gamma_factor`` at SGD's
   best rate and its neighbours). The best point is the one with the lowest mean area under the
   training-loss curve over the tuning seeds (``results.study.loss_area``). Where it lies at an
   edge of the line through it along some axis (its other coordinates held), the grid grows
   there: the axis's next value where the grid has one, else one geometric step past the axis's
   edge (at most ``tuning.extend`` steps per axis); an unordered axis (``lars_lookahead``) gets
   its missing values. Tuning goes on until the best point is inside along every axis
   (``next_points``).
2. **Confirmation.** Each method's chosen point runs on the scale's own seeds (0 .. seeds − 1),
   which tuning never used.

Every run is an ordinary record (``records.jsonl``) with ``stage`` (``tune`` or ``confirm``),
``point`` (its grid values) and ``panel`` (the config variant it belongs to, e.g. a batch size).
The same command resumes the whole protocol: finished runs are skipped, and the choices are
made again from the records, so they come out the same.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import math

from results.protocol import point_key, point_label, point_name, stage_runs  # as the collator names and reads them

__all__ = ["TuningError", "read_tuning", "point_name", "point_label", "next_points", "run_protocol"]


class TuningError(ValueError):
    """A bad ``tuning`` section: one line, exit status 2 (a ``ConfigError`` in the runner)."""


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_tuning(section, cells: list[str]) -> dict:
    """The ``tuning`` section checked: ``seeds`` (a list of distinct integers), ``extend`` (>= 0),
    ``grids`` {cell: {key: [values]}, or {around: cell, neighbours: n, grid: {key: [values]}}}: a
    cell tuned around another takes its chosen setting, the n rates either side of its chosen
    rate (default 1), and its own axes."""
    if not isinstance(section, dict):
        raise TuningError(f"tuning: expected a mapping, got {section!r}")
    seeds = section.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise TuningError(f"tuning.seeds: expected a list of distinct integers, got {seeds!r}")
    extend = section.get("extend", 2)
    if not (isinstance(extend, int) and not isinstance(extend, bool) and extend >= 0):
        raise TuningError(f"tuning.extend: expected an integer >= 0, got {extend!r}")
    grids = section.get("grids")
    if not isinstance(grids, dict) or not grids:
        raise TuningError(f"tuning.grids: expected a mapping of cells to grids, got {grids!r}")
    out = {}
    for cell, grid in grids.items():
        if cell not in cells:
            raise TuningError(f"tuning.grids: unknown cell {cell!r}; the scale runs {', '.join(cells)}")
        around = grid.get("around") if isinstance(grid, dict) else None
        axes = grid.get("grid", {}) if around is not None else grid
        if around is not None and (around not in grids or around == cell or "around" in (grids[around] or {})):
            raise TuningError(f"tuning.grids.{cell}.around: expected another cell tuned on its own grid, got {around!r}")
        if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
            raise TuningError(f"tuning.grids.{cell}: expected {{key: [values]}}, got {axes!r}")
        for key, values in axes.items():
            if not (all(_number(v) for v in values) or all(isinstance(v, bool) for v in values)):
                raise TuningError(f"tuning.grids.{cell}.{key}: expected numbers or booleans, got {values!r}")
        neighbours = grid.get("neighbours", 1) if around is not None else 0
        if not (isinstance(neighbours, int) and not isinstance(neighbours, bool) and neighbours >= 0):
            raise TuningError(f"tuning.grids.{cell}.neighbours: expected an integer >= 0, got {neighbours!r}")
        out[cell] = {"around": around, "neighbours": neighbours, "axes": {k: list(v) for k, v in axes.items()}}
    if not any(g["around"] is None for g in out.values()):
        raise TuningError("tuning.grids: expected at least one cell tuned on its own grid")
    return {"seeds": list(seeds), "extend": extend, "grids": out}


def _key(point: dict) -> str:
    """A point of this grid as the protocol holds it: its values as written, not rounded, so that
    the best point decoded from it, and the points grown from that, keep the values (and so the
    run names) tuning gave them. Records are matched to it by ``point_key``, which rounds."""
    return json.dumps(point, sort_keys=True)


def _extended(values: list, at) -> object | None:
    """The value one geometric step beyond ``at`` when it is an edge of the positive ``values``,
    to 10 significant digits (0.1 · 0.1 / 0.05 is 0.2, not 0.20000000000000004)."""
    ordered = sorted(set(values))
    if len(ordered) < 2 or not all(_number(v) and v > 0 for v in ordered):
        return None
    if at == ordered[0]:
        return float(f"{ordered[0] * ordered[0] / ordered[1]:.10g}")
    if at == ordered[-1]:
        return float(f"{ordered[-1] * ordered[-1] / ordered[-2]:.10g}")
    return None


def next_points(points: list[dict], axes: dict, best: dict, extensions: dict, extend: int,
                known: dict | None = None, capped: list | None = None) -> list[dict]:
    """The points to add so that ``best`` is inside its grid along every axis, on the line through
    it (the other coordinates held at best's): a grid extended along one axis leaves the new
    point's other axes untried, and a point is only chosen once its line has been tried too.

    Along an axis of positive numbers, where ``best`` is the line's lowest (or highest) value: the
    nearest value the axis holds on that side (or ``known[axis]`` holds: the rates the method a
    cell is tuned around already tried), or, past them all, one geometric step beyond (at most
    ``extend`` such steps per axis, counted in ``extensions``); the new value joins ``axes``. Along
    any other axis (``lars_lookahead``): every value the line lacks. Returns them (none: ``best``
    is inside, or at an edge whose axis has spent its ``extend`` steps: that axis joins ``capped``)."""
    tried = {_key(p) for p in points}
    added: list[dict] = []

    def add(key, value):
        point = {**best, key: value}
        if _key(point) not in tried and point not in added:
            added.append(point)

    for key, values in axes.items():
        line = sorted({p[key] for p in points if all(p[k] == best[k] for k in best if k != key)},
                      key=lambda v: (not _number(v), v if _number(v) else str(v)))
        at = best[key]
        if not all(_number(v) and v > 0 for v in values):
            for v in values:
                if v not in line:
                    add(key, v)
            continue
        ordered = sorted(set(values) | set((known or {}).get(key, ())))
        for edge, side in ((line[0], [v for v in ordered if v < at][-1:]), (line[-1], [v for v in ordered if v > at][:1])):
            if at != edge:
                continue
            if side:
                if side[0] not in values:
                    values.append(side[0])
                add(key, side[0])  # the nearest value beyond best on this side
            elif extensions[key] < extend and len(ordered) >= 2:
                beyond = _extended(ordered, at)
                if beyond is not None:
                    extensions[key] += 1
                    values.append(beyond)
                    add(key, beyond)
            elif len(ordered) >= 2 and capped is not None and key not in capped:
                capped.append(key)
    return added


def _neighbours(values: list, at, n: int = 1) -> list:
    ordered = sorted(set(values))
    i = ordered.index(at)
    return ordered[max(0, i - n):i + n + 1]


def run_protocol(item: str, args, runs: list, out, execute_runs, say=print) -> int:
    """Tune, then confirm, every (panel, method) of ``runs`` (the plan's runs on the confirmation
    seeds). ``execute_runs(runs)`` runs what is not finished and returns an exit status."""
    from reproduce.config import check_settings, load_config, plan
    from results.records import load_records
    from results.study import choose

    cfg = load_config(item)
    scale = cfg["scales"][args.scale]
    templates = {(r.variant, r.cell): r for r in runs if r.seed == min(x.seed for x in runs)}
    cells = list(dict.fromkeys(r.cell for r in runs))  # the cells asked for (--only)
    try:
        tuning = read_tuning(scale.get("tuning"), list(cfg.get("cells") or {}))
    except TuningError as e:
        from reproduce.config import ConfigError

        raise ConfigError(str(e)) from None
    overlap = set(tuning["seeds"]) & {r.seed for r in runs}
    if overlap:
        from reproduce.config import ConfigError

        raise ConfigError(f"tuning.seeds: {sorted(overlap)} are also confirmation seeds (0 .. seeds − 1)")
    needed = set(cells) | {tuning["grids"][c]["around"] for c in cells if c in tuning["grids"]}
    tuning["grids"] = {c: g for c, g in tuning["grids"].items() if c in needed}  # and what they are tuned around
    missing = needed - {r.cell for r in runs}
    if missing:  # a cell tuned around another that --only left out: tuned here, not confirmed
        everything = plan(item, argparse.Namespace(**{**vars(args), "only": None}))
        templates.update({(r.variant, r.cell): r for r in everything if r.cell in missing and r.seed == 0})
    panels = list(dict.fromkeys(r.variant for r in runs))
    records_path = out / "records.jsonl"

    orders: dict[str, int] = {}  # each variant's place: the order its point was first planned in

    def make(template, point: dict, seed: int, stage: str):
        variant = point_name(point) if template.variant == "default" else f"{template.variant}.{point_name(point)}"
        order = orders.setdefault(variant, len(orders))
        settings = {**copy.deepcopy(template.settings), **point, "seed": seed}
        shown = dict(template.shown, variant_label=(f"{template.shown.get('variant_label', '')}, " if
                                                    template.variant != "default" else "") + point_label(point),
                     variant_order=order)
        return dataclasses.replace(template, variant=variant, seed=seed, settings=settings, shown=shown,
                                   protocol={"stage": stage, "point": point, "panel": template.variant})

    def records_of(template, points: list[dict]) -> dict[str, list[dict]]:
        """Each point's tuning records, read as the collator reads them (``stage_runs``)."""
        records = load_records(records_path) if records_path.exists() else []
        runs = stage_runs(records, item, "tune").get((template.variant, template.cell), {})
        return {_key(p): runs.get(point_key(p), []) for p in points}

    chosen: dict[tuple[str, str], dict] = {}
    rates: dict[tuple[str, str], list] = {}
    for cell in sorted(tuning["grids"], key=lambda c: tuning["grids"][c]["around"] is not None):
        grid = tuning["grids"][cell]
        for panel in panels:
            template = templates[(panel, cell)]
            axes = copy.deepcopy(grid["axes"])
            if grid["around"] is not None:
                base = chosen[(panel, grid["around"])]
                axes = {**{k: [v] for k, v in base.items()}, **axes}
                if "base_lr" in base:
                    axes["base_lr"] = _neighbours(rates[(panel, grid["around"])], base["base_lr"], grid["neighbours"])
            points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
            for point in points:
                check_settings({k: v for k, v in {**template.settings, **point}.items() if k != "seed"},
                               f"{item} tuning {cell} {point_label(point)}")
            extensions = dict.fromkeys(axes, 0)
            while True:
                todo = [make(template, p, s, "tune") for p in points for s in tuning["seeds"]]
                say(f"tuning {cell}{'' if panel == 'default' else ' (' + panel + ')'}: {len(points)} points × "
                    f"{len(tuning['seeds'])} seeds")
                code = execute_runs(todo)
                if code:
                    return code
                by_point = records_of(template, points)
                best = choose({k: v for k, v in by_point.items()})
                if best is None:
                    best = _key(points[0])
                best_point = json.loads(best)
                known = ({"base_lr": rates[(panel, grid["around"])]}  # neighbours 0: the rate stays fixed
                         if grid["around"] is not None and grid["neighbours"] > 0 else None)
                capped: list = []
                grown = next_points(points, axes, best_point, extensions, tuning["extend"], known, capped)
                if not grown:
                    if capped:  # chosen all the same, and said: the grid may not hold the best setting
                        say(f"tuning {cell}: the best point ({point_label(best_point)}) lies at an edge of its line "
                            f"along {', '.join(capped)}, which has grown by tuning.extend = {tuning['extend']} steps "
                            "already; raise tuning.extend to look further")
                    break
                say(f"tuning {cell}: the best point ({point_label(best_point)}) lies at an edge of its line; "
                    "adding " + "; ".join(point_label(p) for p in grown))
                points += grown
            chosen[(panel, cell)] = {k: best_point[k] for k in axes}
            rates[(panel, cell)] = sorted(set(p["base_lr"] for p in points)) if "base_lr" in axes else []
            say(f"chosen for {cell}{'' if panel == 'default' else ' (' + panel + ')'}: {point_label(chosen[(panel, cell)])}")
    confirm = [make(r, chosen[(r.variant, r.cell)], r.seed, "confirm") for r in runs
               if (r.variant, r.cell) in chosen]
    untuned = [r for r in runs if (r.variant, r.cell) not in chosen]
    for r in untuned:  # a cell without a grid runs as configured, on the confirmation seeds
        r.protocol = {"stage": "confirm", "point": {}, "panel": r.variant}
    say(f"confirming: {len(confirm) + len(untuned)} runs on seeds {sorted({r.seed for r in runs})}")
    return execute_runs(confirm + untuned)
