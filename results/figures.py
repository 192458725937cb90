"""The figures the items' configs declare (``results.specs``), drawn from the records, and the
studies' figures.

A config's ``figures:`` names each figure, the drawer that draws it and its panels: which of the
records' values, with which labels. The drawers here are generic: ``curves`` (panels side by side,
curves against training steps), ``curves_by_batch`` (the same, a column per global batch) and
``final_vs_setting`` (the final metric against a run setting, a line per method). Curves are
averaged over the seeds that completed, point by point, with a shaded band of ± one standard
deviation over seeds when there is more than one. A method none of whose seeds completed is drawn
dotted from its diverged/failed runs and says so in the legend. Labels, the order of methods,
their colours and the figure's title and setting come from the records (their item config's); a
method whose config gives no colour gets a spare one (``method_colors``).

A study's figure (``write_study_figure``, see ``results.study``) draws each method at its tuned
learning rate, with the target; a tuned study's (``write_tuned_figures``, see
``results.protocol``) the confirmation runs and the sensitivity to γ.

Drawing goes through ``matplotlib.figure.Figure`` and the Agg canvas directly — never pyplot — so
no GUI backend is touched, no global figure state is left behind, and a caller's own pyplot
backend (a notebook's, say) is not switched.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .protocol import point_label
from .records import about_of, int_field, methods_of, unique_ints, variant_of, variants_of
from .specs import PLACEHOLDER, FigureSpec, Panel, Series, declared_figures
from .study import LOSS, build_study, loss_key, study_records
from .tables import collect_cells

__all__ = ["method_colors", "write_figure", "draw_figure", "curves", "curves_by_batch", "final_vs_setting",
           "setting_of", "write_study_figure", "write_tuned_figures"]


_SPARE = matplotlib.colormaps["tab10"].colors
_LINESTYLES = ["-", "--", "-.", (0, (5, 1, 1, 1))]


def method_colors(records: list[dict]) -> dict[str, object]:
    """A colour per method (cell): its config's ``color`` as the records carry it; the methods
    without one take tab10's colours in sorted order, so the same set always gets the same."""
    colors = {}
    for r in records:
        if isinstance(r.get("color"), str) and matplotlib.colors.is_color_like(r["color"]):
            colors.setdefault(r["cell"], r["color"])
    spare = sorted({r["cell"] for r in records} - set(colors))
    colors.update({cell: _SPARE[i % len(_SPARE)] for i, cell in enumerate(spare)})
    return colors


PLOTTABLE = 1e15  # a value beyond ± this (a diverged run's loss, a corrupt record) is left out of a figure


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) <= PLOTTABLE


def _series(records: list[dict], key: str, x: str = "step", source: str = "curve"):
    """(xs, mean, mean − std, mean + std, n_runs, completed) of ``key`` against ``x`` over the
    records' ``source`` lists, from the completed seeds (all seeds if none completed); None when
    nothing to draw."""
    completed = [r for r in records if r.get("status") == "completed"]
    runs = []
    for r in completed or records:
        points = r.get(source) if isinstance(r.get(source), list) else []
        run = [(p[x], float(p[key])) for p in points
               if isinstance(p, dict) and _number(p.get(x)) and _number(p.get(key))]
        if run:
            runs.append(run)
    if not runs:
        return None
    by_x: dict = {}
    for run in runs:
        for xv, yv in run:
            by_x.setdefault(xv, []).append(yv)
    xs = sorted(by_x)
    mean = [statistics.fmean(by_x[v]) for v in xs]
    std = [statistics.stdev(by_x[v]) if len(by_x[v]) > 1 else 0.0 for v in xs]
    return xs, mean, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], len(runs), bool(completed)


def _draw(ax, series, color, label, linestyle="-") -> None:
    xs, mean, lo, hi, n, completed = series
    label = f"{label} (n={n})" if completed else f"{label} (n={n}, none completed)"
    ax.plot(xs, mean, color=color, linestyle=linestyle if completed else ":", linewidth=1.6,
            marker="o" if len(xs) == 1 else None, label=label)
    if n > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def _finish(ax, xlabel: str, ylabel: str, title: str, log_y: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        if log_y and all(min(line.get_ydata(), default=1) > 0 for line in ax.lines):
            ax.set_yscale("log")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "nothing recorded", transform=ax.transAxes, ha="center", va="center", color="0.4")


def _groups(records: list[dict]) -> tuple[dict[tuple[str, str], list[dict]], list[str]]:
    """Records by (variant, cell): variants in order of appearance, methods in the paper's order."""
    variants, _ = variants_of(records)
    methods, _ = methods_of(records)
    groups = {(v, m): [r for r in records if variant_of(r) == v and r["cell"] == m]
              for v in variants for m in methods}
    return {k: rs for k, rs in groups.items() if rs}, variants



def _batches(records: list[dict]) -> str:
    batches = unique_ints(records, "global_batch")
    if not batches:
        return "global batch not recorded"
    workers = unique_ints(records, "workers")
    text = "B = " + ", ".join(map(str, batches))
    return text + (f" (K = {workers[0]} workers)" if len(workers) == 1 else "")


def _title(records: list[dict], item: str) -> str:
    """"Figure N — setting", from the item config's ``about`` as the records carry it."""
    about = about_of(records)
    return " — ".join(t for t in (about.get("title", item), about.get("setting")) if t)


def _split(records: list[dict]) -> str:
    """The split the task evaluated (the records' ``eval_split``), for axis labels."""
    return next((r["eval_split"] for r in records if isinstance(r.get("eval_split"), str)), "evaluation")


def _fill(text: str, **values: str) -> str:
    """A declared text with its placeholders (``results.specs.PLACEHOLDERS``) filled from ``values``."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)


def _holds(records: list[dict], series: Series) -> bool:
    """Whether the records' ``series.source`` lists hold ``series.key`` anywhere."""
    return any(isinstance(r.get(series.source), list)
               and any(isinstance(p, dict) and series.key in p for p in r[series.source]) for r in records)


def _chosen(records: list[dict], panel: Panel) -> Series:
    """The panel's series the records hold first (the trace's loss where traced, say); else its last."""
    return next((s for s in panel.series[:-1] if _holds(records, s)), panel.series[-1])


def _per_method_panels(records, axes, series: list[Series], colors) -> None:
    """Draw each (variant, method) on each of ``axes``, panel i plotting ``series[i]`` against steps."""
    groups, variants = _groups(records)
    _, method_labels = methods_of(records)
    _, variant_labels = variants_of(records)
    styles = {v: _LINESTYLES[i % len(_LINESTYLES)] for i, v in enumerate(variants)}
    for (variant, cell), rs in groups.items():
        label = method_labels[cell] + (f" [{variant_labels[variant]}]" if len(variants) > 1 else "")
        for i, (ax, wanted) in enumerate(zip(axes, series)):
            drawn = _series(rs, wanted.key, source=wanted.source)
            if drawn is not None:
                _draw(ax, drawn, colors[cell], label, styles[variant])
            elif i == 0:  # say in the legend that the method ran but left nothing to draw
                statuses = ", ".join(f"{n} {s}" for s, n in Counter(r.get("status", "?") for r in rs).items())
                ax.plot([], [], color=colors[cell], linestyle=":", label=f"{label} ({statuses}, no curve)")


_BAND = "mean over seeds, band = ± 1 std"


def _finish_panels(axes, records: list[dict], panels, series: list[Series], **values: str) -> None:
    """Label each of ``axes`` as its panel and the series drawn there say."""
    values = {"split": _split(records), **values}
    for ax, panel, s in zip(axes, panels, series):
        _finish(ax, "step", _fill(s.label, **values), _fill(s.title or panel.title, **values), log_y=panel.log_y)


def curves(item: str, records: list[dict], spec: FigureSpec, path: Path, colors: dict) -> None:
    """The panels side by side, each a line per (variant, method) against steps."""
    series = [_chosen(records, p) for p in spec.panels]
    fig = Figure(figsize=(6.5 * len(series), 4.8), layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    _per_method_panels(records, axes, series, colors)
    _finish_panels(axes, records, spec.panels, series)
    title = _fill(spec.title, title=_title(records, item), batches=_batches(records))
    fig.suptitle(textwrap.fill(f"{title}: {_BAND}", 150, break_on_hyphens=False))
    _save(fig, path)


def _global_batch(records: list[dict]) -> int | None:
    return next((b for r in records if (b := int_field(r, "global_batch")) is not None), None)


def curves_by_batch(item: str, records: list[dict], spec: FigureSpec, path: Path, colors: dict) -> None:
    """A column per variant, sorted by its global batch, with the panels one above the other."""
    variants = list(dict.fromkeys(variant_of(r) for r in records))
    by_variant = {v: [r for r in records if variant_of(r) == v] for v in variants}
    batch = {v: _global_batch(rs) for v, rs in by_variant.items()}
    variants.sort(key=lambda v: (batch[v] is None, batch[v] or 0, v))
    rows = len(spec.panels)
    fig = Figure(figsize=(5.5 * len(variants) + 1, 4 * rows), layout="constrained")
    axes = fig.subplots(rows, len(variants), squeeze=False, sharex="col")
    for j, v in enumerate(variants):
        rs = by_variant[v]
        series = [_chosen(rs, p) for p in spec.panels]
        column = [axes[i][j] for i in range(rows)]
        _per_method_panels(rs, column, series, colors)
        name = f"B = {batch[v]}" if batch[v] is not None else (v or "(no variant)")
        _finish_panels(column, rs, spec.panels, series, column=name)
    title = _fill(spec.title, title=_title(records, item), batches=_batches(records))
    fig.suptitle(textwrap.fill(f"{title}: {_BAND}", int(11 * fig.get_figwidth()), break_on_hyphens=False))
    _save(fig, path)


def setting_of(record: dict, key: str) -> int | float | None:
    """The run's setting ``key`` as its record's config holds it (what the run was configured
    with, whatever its variant is called); None when absent or not a number."""
    config = record.get("config")
    value = config.get(key) if isinstance(config, dict) else None
    return value if _number(value) else None


def final_vs_setting(item: str, records: list[dict], spec: FigureSpec, path: Path, colors: dict) -> None:
    """The final metric (mean ± std over seeds) against a run setting (Figure 4: the epoch
    budget), a line per method."""
    (panel,), metric = spec.panels, about_of(records).get("metric") or {}
    (series,) = panel.series
    key = series.key or metric.get("key")
    what = series.label or metric.get("label", key)
    records = [r for r in records if setting_of(r, panel.x_setting) is not None]
    cells = collect_cells(records, key, key=lambda r: (r["cell"], setting_of(r, panel.x_setting)))
    methods, labels = methods_of(records)
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.subplots()
    xs = sorted({x for _, x in cells})
    for cell in methods:
        points = [(x, cells[(cell, x)]) for x in xs if (cell, x) in cells and cells[(cell, x)].n]
        if not points:
            continue
        lost = sum(c.n_diverged + c.n_failed for (m, _), c in cells.items() if m == cell)
        label = labels[cell] + (f" ({lost} seeds diverged/failed)" if lost else "")
        ax.errorbar([x for x, _ in points], [c.mean for _, c in points], yerr=[c.std or 0.0 for _, c in points],
                    color=colors[cell], marker="o", capsize=3, linewidth=1.6, label=label)
    if xs:
        ax.set_xticks(xs)
    _finish(ax, panel.x_label, what, _fill(panel.title, metric=what))
    title = _fill(spec.title, title=_title(records, item), batches=_batches(records))
    fig.suptitle(textwrap.fill(title, 80, break_on_hyphens=False))  # a narrow figure
    _save(fig, path)


_DRAW = {"curves": curves, "curves_by_batch": curves_by_batch, "final_vs_setting": final_vs_setting}


def draw_figure(records: list[dict], item: str, spec: FigureSpec, path, colors: dict | None = None) -> Path:
    """Draw ``spec``, a figure ``item``'s config declares, from ``item``'s records into the PNG ``path``."""
    records = [r for r in records if r.get("item") == item]
    colors = colors or method_colors(records)
    path = Path(path)
    _DRAW[spec.draw](item, records, spec, path, colors)
    return path


def write_figure(records: list[dict], item: str, path, colors: dict | None = None) -> Path:
    """Draw the figure ``item`` (figure1, figure5, ...), which the config of one of the records'
    items declares (figure5: table1's), from that item's records into the PNG ``path``."""
    declared = declared_figures(records)
    if item not in declared:
        raise ValueError(f"item: {item!r} is no figure the records' items declare (they declare "
                         f"{', '.join(declared) or 'none'})")
    source, spec = declared[item]
    return draw_figure(records, source, spec, path, colors)


def write_study_figure(records: list[dict], item: str, path) -> Path:
    """Panels for the arms the study shows (each method at its tuned rate, or every method and
    variant; mean ± 1 std over seeds): the training loss at x_t against steps, with the target;
    the smoothness probe along the path, where the runs probed it (as Figure 1(b)); the item's
    metric, where its config names one; and over a rate grid, the share of seeds reaching the
    target at each rate."""
    study = build_study(records, item)
    records = study_records(records, item)
    colors = method_colors(records)
    grid = study.rate_grid and len(study.variants) > 1
    metric = study.metric.get("key")
    panels = [(LOSS, "trace", "training loss at $x_t$ (fixed training subset)")]
    panels += [("smoothness", "smoothness", "smoothness along the path")] if study.probed else []
    panels += [(metric, "curve", study.metric.get("label", metric))] if metric else []
    fig = Figure(figsize=(6 * (len(panels) + grid), 4.6), layout="constrained")
    axes = list(fig.subplots(1, len(panels) + grid, squeeze=False)[0])
    styles = {v: _LINESTYLES[i % len(_LINESTYLES)] for i, v in enumerate(study.variants)}
    for m, v in study.shown():
        rs = [r for r in records if r["cell"] == m and variant_of(r) == v]
        label = study.method_labels[m] + (f", {study.variant_labels[v]}" if len(study.variants) > 1 else "")
        for ax, (key, source, _) in zip(axes, panels):
            series = _series(rs, key, source=source)
            if series is not None:
                _draw(ax, series, colors[m], label, "-" if study.rate_grid else styles[v])
    axes[0].axhline(study.target, color="0.3", linestyle="--", linewidth=1, label=f"target {study.target:g}")
    axes[0].set_yscale("log")
    which = "each method at its tuned rate" if grid else "mean over seeds"
    for i, (ax, (_, _, ylabel)) in enumerate(zip(axes, panels)):
        title = f"training loss, {which}, band ± 1 std" if i == 0 else ylabel
        _finish(ax, "step", ylabel, f"({'abcd'[i]}) {title}")
    if grid:
        ax = axes[-1]
        for m in study.methods:
            points = sorted((arm.base_lr, arm.reached / arm.n) for (mm, _), arm in study.arms.items()
                            if mm == m and arm.base_lr is not None)
            ax.plot([x for x, _ in points], [y for _, y in points], "o-", color=colors[m], label=study.method_labels[m])
        ax.set_xscale("log")
        rates = sorted({arm.base_lr for arm in study.arms.values() if arm.base_lr is not None})
        ax.set_xticks(rates, labels=[f"{r:g}" for r in rates])
        ax.minorticks_off()
        _finish(ax, "base learning rate (at the base batch, scaled linearly)", "share of seeds reaching the target",
                f"({'abcd'[len(panels)]}) the rate grid")
    fig.suptitle(f"{study.title} — {study.setting_line()}")
    path = Path(path)
    _save(fig, path)
    return path


def write_tuned_figures(study, records: list[dict], directory) -> list[Path]:
    """A tuned study's figures (``results.protocol``): ``<item>.study.png``, the confirmation
    runs of each method's chosen setting (mean ± 1 std over the seeds): the training loss at x_t
    with the targets, the mini-batch loss at the workers' x̃, the smoothness along the path and
    the item's metric where measured; and ``<item>.gamma.png`` where tuning varied
    ``gamma_factor``: steps to the middle target and the loss area against it, one line per
    rate (and look-ahead setting), the untuned method at the same rate as a dashed line."""
    directory = Path(directory)
    colors = method_colors([r for r in records if r.get("item") == study.item])
    confirmed = [(panel, cell, runs) for panel in study.panels for cell in study.methods
                 if (panel, cell) in study.confirm for runs in [study.confirm[(panel, cell)][1]]]
    loss = next((loss_key(r) for _, _, runs in confirmed for r in runs.records), LOSS)
    metric = study.metric.get("key")
    panels = [(loss, "trace", "training loss at $x_t$" + (" (BatchNorm re-estimated)" if loss != LOSS else "")),
              ("batch_loss", "trace", "mini-batch loss at the workers' $\\tilde x$")]
    if any(runs.smoothness() for _, _, runs in confirmed):
        panels.append(("smoothness", "smoothness", "smoothness along the path"))
    if metric:
        panels.append((metric, "curve", study.metric.get("label", metric)))
    fig = Figure(figsize=(5.5 * len(panels), 4.6), layout="constrained")
    axes = list(fig.subplots(1, len(panels), squeeze=False)[0])
    styles = {p: _LINESTYLES[i % len(_LINESTYLES)] for i, p in enumerate(study.panels)}
    for panel, cell, runs in confirmed:
        label = study.method_labels[cell] + (f", {study.panel_text(panel)}" if len(study.panels) > 1 else "")
        for ax, (key, source, _) in zip(axes, panels):
            series = _series(runs.records, key, source=source)
            if series is not None:
                _draw(ax, series, colors[cell], label, styles[panel])
    for t in study.targets:
        axes[0].axhline(t, color="0.3", linestyle="--", linewidth=0.8)
    for ax in axes[:2]:
        ax.set_yscale("log")
    for i, (ax, (_, _, ylabel)) in enumerate(zip(axes, panels)):
        _finish(ax, "step", ylabel, f"({'abcd'[i]})")
    fig.suptitle(f"{study.title} — {study.setting}\nchosen settings on confirmation seeds {study.confirm_seeds}; "
                 "band = ± 1 std")
    paths = [directory / f"{study.item}.study.png"]
    _save(fig, paths[0])
    gamma = _gamma_sensitivity(study, colors)
    if gamma is not None:
        paths.append(directory / f"{study.item}.gamma.png")
        _save(gamma, paths[1])
    return paths


def _gamma_sensitivity(study, colors) -> Figure | None:
    """Steps to the middle target and mean loss area against gamma_factor over the tuning seeds."""
    varied = [(panel, cell, points) for (panel, cell), points in study.tuning.items()
              if len({json.loads(k).get("gamma_factor") for k in points} - {None}) > 1]
    if not varied:
        return None
    target = study.targets[len(study.targets) // 2]
    fig = Figure(figsize=(12, 4.6 * len(varied)), layout="constrained")
    axes = fig.subplots(len(varied), 2, squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    for row, (panel, cell, points) in zip(axes, varied):
        lines: dict = {}
        for key, runs in points.items():
            point = json.loads(key)
            rest = tuple((k, v) for k, v in sorted(point.items()) if k != "gamma_factor")
            lines.setdefault(rest, []).append((point["gamma_factor"], runs))
        rates = sorted({dict(rest).get("base_lr", 0) for rest in lines})
        for rest, values in sorted(lines.items()):
            values.sort(key=lambda v: v[0])
            rest_d = dict(rest)
            color = cmap(rates.index(rest_d.get("base_lr", 0)) / max(len(rates) - 1, 1))
            style = "--" if rest_d.get("lars_lookahead") is False else "-"
            label = point_label({k: v for k, v in rest if k != "trust"})
            xs = [g for g, _ in values]
            steps = [statistics.fmean(r.steps(target)) if r.steps(target) else float("nan") for _, r in values]
            areas = [r.mean_area() if math.isfinite(r.mean_area()) else float("nan") for _, r in values]
            row[0].plot(xs, steps, marker="o", linestyle=style, color=color, label=label)
            row[1].plot(xs, areas, marker="o", linestyle=style, color=color, label=label)
            for x, y, (_, r) in zip(xs, steps, values):
                row[0].annotate(f"{len(r.steps(target))}/{len(r.records)}", (x, y if y == y else 0),
                                fontsize="x-small", textcoords="offset points", xytext=(3, 3))
        for (p2, c2), other in study.tuning.items():  # a method tuned without γ, at a line's rate and trust
            if p2 != panel or c2 == cell:
                continue
            for key, runs in other.items():
                point = json.loads(key)
                if "gamma_factor" in point or point.get("base_lr") not in rates or \
                        not any(all(dict(rest).get(k) == v for k, v in point.items()) for rest in lines):
                    continue
                color = cmap(rates.index(point["base_lr"]) / max(len(rates) - 1, 1))
                if runs.steps(target):
                    row[0].axhline(statistics.fmean(runs.steps(target)), color=color, linestyle=":", linewidth=1)
                if math.isfinite(runs.mean_area()):
                    row[1].axhline(runs.mean_area(), color=color, linestyle=":", linewidth=1)
        factors = sorted({json.loads(k)["gamma_factor"] for k in points if "gamma_factor" in json.loads(k)})
        for ax, ylabel in zip(row, (f"steps to loss {target:g} (seeds reaching it)", "mean loss along the run")):
            ax.set_xscale("log")
            ax.set_xticks(factors, labels=[f"{f:g}" for f in factors])
            ax.minorticks_off()
            _finish(ax, "gamma_factor (γ_t = factor · η_t · b/B)", ylabel,
                    f"{study.method_labels[cell]} ({study.panel_text(panel)})")
    fig.suptitle(f"{study.title}: how wide is the window where extrapolation helps? (tuning seeds {study.tuning_seeds})\n"
                 "dotted: the methods tuned without γ, at a line's rate and τ")
    return fig
