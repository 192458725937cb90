"""Figures 1–5 and 7 from the records' curves.

Curves are drawn against training steps and averaged over the seeds that completed, point by
point, with a shaded band of ± one standard deviation over seeds when there is more than one.
Where the records carry a trace (``TrainConfig.log_every``), the training losses come from it:
the loss at x_t on the task's fixed training subset and the mini-batch loss at the workers' x̃,
every N steps; otherwise from the evaluations. A study's figure (``write_study_figure``, see
``results.study``) draws each method at its tuned learning rate, with the target.
A method none of whose seeds completed is drawn dotted from its diverged/failed runs and says so
in the legend. Labels, the order of methods, their colours and the figure's title and setting
come from the records (their item config's); a method whose config gives no colour gets a spare
one (``method_colors``).

Drawing goes through ``matplotlib.figure.Figure`` and the Agg canvas directly — never pyplot — so
no GUI backend is touched, no global figure state is left behind, and a caller's own pyplot
backend (a notebook's, say) is not switched.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .records import about_of, int_field, methods_of, unique_ints, variant_of, variants_of
from .study import LOSS, build_study, loss_key, study_records
from .collate import FIGURE_ITEMS
from .tables import collect_cells

__all__ = ["FIGURE_ITEMS", "method_colors", "write_figure", "figure1", "figure2", "figure3", "figure4", "figure5", "figure7",
           "write_study_figure", "write_tuned_figures"]


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


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)


def _per_method_panels(records, axes, panels, colors) -> None:
    """Draw each (variant, method) on each of ``axes``, panel i plotting ``panels[i]`` =
    (y key, x key, record list it is in: "curve" or "smoothness")."""
    groups, variants = _groups(records)
    _, method_labels = methods_of(records)
    _, variant_labels = variants_of(records)
    styles = {v: _LINESTYLES[i % len(_LINESTYLES)] for i, v in enumerate(variants)}
    for (variant, cell), rs in groups.items():
        label = method_labels[cell] + (f" [{variant_labels[variant]}]" if len(variants) > 1 else "")
        for i, (ax, (key, x, source)) in enumerate(zip(axes, panels)):
            series = _series(rs, key, x=x, source=source)
            if series is not None:
                _draw(ax, series, colors[cell], label, styles[variant])
            elif i == 0:  # say in the legend that the method ran but left nothing to draw
                statuses = ", ".join(f"{n} {s}" for s, n in Counter(r.get("status", "?") for r in rs).items())
                ax.plot([], [], color=colors[cell], linestyle=":", label=f"{label} ({statuses}, no curve)")


_BAND = "mean over seeds, band = ± 1 std"


def _traced(records: list[dict], key: str) -> bool:
    """Whether the records' traces (``log_every``) hold ``key``."""
    return any(isinstance(r.get("trace"), list) and any(isinstance(p, dict) and key in p for p in r["trace"])
               for r in records)


def _training_loss_panel(records: list[dict], title: str) -> tuple:
    """The training loss at x_t against steps: the trace's fixed-subset loss where recorded,
    else the evaluations' ``train_loss``."""
    if _traced(records, "train_loss_subset"):
        return ("train_loss_subset", "step", "trace", "step", "training loss at $x_t$ (fixed training subset)",
                title, True)
    return ("train_loss", "step", "curve", "step", "training loss at $x_t$", title, True)


def _batch_loss_panel(records: list[dict], title: str) -> tuple:
    """The mini-batch loss at the workers' x̃ against steps (trace, else per epoch)."""
    source = "trace" if _traced(records, "batch_loss") else "curve"
    return ("batch_loss", "step", source, "step", r"mini-batch loss at the workers' $\tilde{x}$", title, True)


def _curve_panels(records: list[dict], path: Path, colors: dict, panels: list[tuple], title: str) -> None:
    """Two side-by-side panels of per-method curves. Each panel is (y key, x key, record list —
    "curve" or "smoothness" —, x label, y label, title, log y)."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels))
    _per_method_panels(records, axes, [p[:3] for p in panels], colors)
    for ax, (_, _, _, xlabel, ylabel, panel_title, log_y) in zip(axes, panels):
        _finish(ax, xlabel, ylabel, panel_title, log_y=log_y)
    fig.suptitle(textwrap.fill(title, 150, break_on_hyphens=False))
    _save(fig, path)


def figure1(records: list[dict], path: Path, colors: dict) -> None:
    """(a) training loss at x_t vs step of every method; (b) the smoothness probe vs step."""
    _curve_panels(records, path, colors, [
        _training_loss_panel(records, "(a) training loss"),
        ("smoothness", "step", "smoothness", "step",
         r"$\|\nabla f(x_{t+1}) - \nabla f(x_t)\| \,/\, \|x_{t+1} - x_t\|$",
         "(b) local smoothness along the trajectory", False),
    ], f"{_title(records, 'figure1')}, {_batches(records)}: {_BAND}")


def figure2(records: list[dict], path: Path, colors: dict) -> None:
    """Validation perplexity and training loss vs step of each method (2-layer LSTM)."""
    _curve_panels(records, path, colors, [
        ("val_ppl", "step", "curve", "step", f"{_split(records)}-split perplexity (lower is better)",
         f"(a) {_split(records)}-split perplexity", True),
        _training_loss_panel(records, "(b) training loss") if _traced(records, "train_loss_subset")
        else _batch_loss_panel(records, "(b) mini-batch loss"),
    ], f"{_title(records, 'figure2')}, {_batches(records)}: {_BAND}")


def _global_batch(records: list[dict]) -> int | None:
    return next((b for r in records if (b := int_field(r, "global_batch")) is not None), None)


def figure3(records: list[dict], path: Path, colors: dict) -> None:
    """Per global batch (a column each): BLEU vs step above, training loss vs step below."""
    variants = list(dict.fromkeys(variant_of(r) for r in records))
    by_variant = {v: [r for r in records if variant_of(r) == v] for v in variants}
    batch = {v: _global_batch(rs) for v, rs in by_variant.items()}
    variants.sort(key=lambda v: (batch[v] is None, batch[v] or 0, v))
    fig = Figure(figsize=(5.5 * len(variants) + 1, 8), layout="constrained")
    axes = fig.subplots(2, len(variants), squeeze=False, sharex="col")
    for j, v in enumerate(variants):
        rs = by_variant[v]
        loss = _training_loss_panel(rs, "")
        _per_method_panels(rs, [axes[0][j], axes[1][j]], [("bleu", "step", "curve"), loss[:3]], colors)
        name = f"B = {batch[v]}" if batch[v] is not None else (v or "(no variant)")
        _finish(axes[0][j], "step", f"{_split(rs)}-split BLEU", f"{name}: BLEU")
        _finish(axes[1][j], "step", loss[4], f"{name}: training loss", log_y=True)
    title = f"{_title(records, 'figure3')}: {_BAND}"
    fig.suptitle(textwrap.fill(title, int(11 * fig.get_figwidth()), break_on_hyphens=False))
    _save(fig, path)


def _budget(record: dict) -> int | None:
    """Figure 4's epoch budget: the epochs the run was configured with (its record's config)."""
    config = record.get("config")
    epochs = config.get("epochs") if isinstance(config, dict) else None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def figure4(records: list[dict], path: Path, colors: dict) -> None:
    """The final metric (the config's, test top-1: mean ± std over seeds) against the epoch
    budget, a line per method."""
    records = [r for r in records if _budget(r) is not None]
    metric = about_of(records).get("metric") or {}
    key, what = metric.get("key", "test_top1"), metric.get("label", "final test top-1 accuracy (%)")
    cells = collect_cells(records, key, key=lambda r: (r["cell"], _budget(r)))
    methods, labels = methods_of(records)
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.subplots()
    budgets = sorted({b for _, b in cells})
    for cell in methods:
        points = [(b, cells[(cell, b)]) for b in budgets if (cell, b) in cells and cells[(cell, b)].n]
        if not points:
            continue
        lost = sum(c.n_diverged + c.n_failed for (m, _), c in cells.items() if m == cell)
        label = labels[cell] + (f" ({lost} seeds diverged/failed)" if lost else "")
        ax.errorbar([b for b, _ in points], [c.mean for _, c in points], yerr=[c.std or 0.0 for _, c in points],
                    color=colors[cell], marker="o", capsize=3, linewidth=1.6, label=label)
    if budgets:
        ax.set_xticks(budgets)
    _finish(ax, "training budget (epochs)", what, f"{what} vs training budget, mean ± std over seeds")
    title = f"{_title(records, 'figure4')}, {_batches(records)}"
    fig.suptitle(textwrap.fill(title, 80, break_on_hyphens=False))  # a narrow figure
    _save(fig, path)


def _loss_and_accuracy(records: list[dict], path: Path, colors: dict, title: str) -> None:
    _curve_panels(records, path, colors, [
        _training_loss_panel(records, "(a) training loss"),
        ("test_top1", "step", "curve", "step", f"{_split(records)}-split top-1 (%)", "(b) accuracy", False),
    ], f"{title}, {_batches(records)}: {_BAND}")


def figure5(records: list[dict], path: Path, colors: dict) -> None:
    """The appendix's Figure 5: Table 1's runs over time — training loss and test top-1 vs step."""
    _loss_and_accuracy(records, path, colors, f"Figure 5 — the curves of {_title(records, 'table1')}")


def figure7(records: list[dict], path: Path, colors: dict) -> None:
    """The appendix's Figure 7: extrap-SGD without momentum against mini-batch SGD with it, early
    in training — training loss at x_t and test top-1 vs step."""
    _loss_and_accuracy(records, path, colors, _title(records, "figure7"))


_DRAW = {"figure1": figure1, "figure2": figure2, "figure3": figure3, "figure4": figure4, "figure5": figure5,
         "figure7": figure7}
from .collate import FIGURE_SOURCE as SOURCE_ITEM  # noqa: E402  (figure5 draws table1's records)


def write_figure(records: list[dict], item: str, path, colors: dict | None = None) -> Path:
    """Draw ``item`` (figure1 … figure5, figure7) from the records of that item (figure5: table1's) into
    the PNG ``path``."""
    if item not in _DRAW:
        raise ValueError(f"item: expected one of {', '.join(FIGURE_ITEMS)}, got {item!r}")
    records = [r for r in records if r.get("item") == SOURCE_ITEM.get(item, item)]
    colors = colors or method_colors(records)
    path = Path(path)
    _DRAW[item](records, path, colors)
    return path


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
    import json

    from reproduce.tuning import point_label  # noqa: PLC0415

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
        for (p2, c2), other in study.tuning.items():  # the method tuned without γ, at the same rates
            if p2 != panel or c2 == cell:
                continue
            for key, runs in other.items():
                point = json.loads(key)
                if "gamma_factor" in point or point.get("base_lr") not in rates:
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
                    f"{study.method_labels[cell]} ({study.panel_text(panel)}); dotted: the other method at that rate")
    fig.suptitle(f"{study.title}: how wide is the window where extrapolation helps? (tuning seeds {study.tuning_seeds})")
    return fig
