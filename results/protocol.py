"""A tuned study (``reproduce.tuning``): what each method was given, what tuning chose, and how
the choices compare on the confirmation seeds.

The records of such a study carry ``stage`` (``tune`` or ``confirm``), ``point`` (the grid values
of the run) and ``panel`` (the config variant: a batch size, say). From them:

- **tuning**, per (panel, method): every grid point with its mean area under the training-loss
  curve over the tuning seeds (``results.study.loss_area``), its seeds reaching each target, and
  the point chosen (``results.study.choose``, the rule tuning used);
- **confirmation**, per (panel, method) on the seeds tuning never used: seeds reaching each
  target and the steps to it, the area under the loss curve, the final loss, the item's metric,
  the smoothness along the path, with Student-t 95 % intervals; and each method's area minus the
  first method's, paired by seed (the seeds share the initial model and the data order).

The loss is the training loss at x_t on a fixed training subset with BatchNorm statistics
re-estimated at x_t (``train_loss_bn``), where the runs measured it. A grid point is named here
for a folder (``point_name``) and for people (``point_label``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

from .records import about_of, canonical, methods_of, variant_of
from .study import BN_LOSS, choose, finite, interval_text, loss_area, loss_key, steps_to_target, targets_of

__all__ = ["TunedStudy", "build_tuned_study", "is_tuned", "point_name", "point_label", "point_key", "stage_runs"]

SHORT = {"base_lr": "lr", "trust": "trust", "gamma_factor": "gf", "lars_lookahead": "la", "momentum": "m"}
LABELS = {"base_lr": "η_base", "trust": "τ", "gamma_factor": "γ factor", "lars_lookahead": "look-ahead trust",
          "momentum": "β"}


def _text(v) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else f"{v:g}"


def point_name(point: dict) -> str:
    """A grid point as a variant name (a folder name): ``lr0.05-trust0.02-gf0.5-la1``."""
    return "-".join(f"{SHORT.get(k, k)}{int(v) if isinstance(v, bool) else f'{v:g}'}" for k, v in point.items())


def point_label(point: dict) -> str:
    """A grid point for people: ``η_base 0.05, τ 0.02, γ factor 0.5, look-ahead trust on``."""
    return ", ".join(f"{LABELS.get(k, k)} {_text(v)}" for k, v in point.items())


def is_tuned(records: list[dict]) -> bool:
    """Whether the records come from the tuning protocol (they carry a ``stage``)."""
    return any(r.get("stage") in ("tune", "confirm") for r in records)


def point_key(point: dict | None) -> str:
    """A grid point as the study compares points: its keys sorted and its numbers as a run's
    identity compares them (12 significant digits), so a rate reached by arithmetic
    (0.20000000000000004) is the rate written 0.2, whatever the order its keys were written in."""
    return json.dumps(canonical(point or {}), sort_keys=True)


def stage_runs(records: list[dict], item: str, stage: str) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """The runs of one stage (``tune`` or ``confirm``) of ``item``: (panel, cell) -> {point_key:
    [records]}, one record per seed (the last one, as the runner keeps the last record of a run).
    Tuning (``reproduce.tuning``) and the collator read the records through this one view."""
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        if r.get("item") == item and r.get("stage") == stage and isinstance(r.get("cell"), str):
            panel = str(r.get("panel", variant_of(r)))
            out.setdefault((panel, r["cell"]), {}).setdefault(point_key(r.get("point")), {})[str(r.get("seed"))] = r
    return {k: {key: list(seeds.values()) for key, seeds in points.items()} for k, points in out.items()}


@dataclass
class Seeds:
    """The runs of one setting over seeds, and what the study reads from each."""

    records: list[dict] = field(default_factory=list)

    @property
    def seeds(self) -> list:
        return [r.get("seed") for r in self.records]

    def areas(self) -> list[float]:
        return [a for r in self.records if (a := loss_area(r)) is not None]

    def mean_area(self) -> float:
        areas = self.areas()
        return math.inf if not areas or any(not math.isfinite(a) for a in areas) else sum(areas) / len(areas)

    def steps(self, target: float) -> list[int]:
        return [s for r in self.records if (s := steps_to_target(r, target)) is not None]

    def final_losses(self) -> list[float]:
        out = []
        for r in self.records:
            key = loss_key(r)
            trace = [p for p in r.get("trace") or [] if isinstance(p, dict) and finite(p.get(key))]
            if r.get("status") == "completed" and trace:
                out.append(float(trace[-1][key]))
        return out

    def finals(self, key: str | None) -> list[float]:
        if key is None:
            return []
        return [float(r["final"][key]) for r in self.records if r.get("status") == "completed"
                and isinstance(r.get("final"), dict) and finite(r["final"].get(key))]

    def smoothness(self) -> list[float]:
        out = []
        for r in self.records:
            probes = [p["smoothness"] for p in r.get("smoothness") or [] if isinstance(p, dict)
                      and finite(p.get("smoothness"))]
            if probes:
                out.append(sum(probes) / len(probes))
        return out

    @property
    def diverged(self) -> int:
        return sum(r.get("status") == "diverged" for r in self.records)


@dataclass
class TunedStudy:
    item: str
    title: str
    setting: str
    targets: list[float]
    methods: list[str]
    method_labels: dict[str, str]
    panels: list[str]
    tuning: dict  # (panel, cell) -> {point key: Seeds}
    chosen: dict  # (panel, cell) -> point key
    confirm: dict  # (panel, cell) -> (point key, Seeds)
    metric: dict = field(default_factory=dict)
    global_batch: dict = field(default_factory=dict)  # panel -> B
    superseded: dict = field(default_factory=dict)  # (panel, cell, point key) -> Seeds: confirmed, not chosen

    @property
    def tuning_seeds(self) -> list:
        return sorted({s for points in self.tuning.values() for runs in points.values() for s in runs.seeds})

    @property
    def confirm_seeds(self) -> list:
        return sorted({s for _, runs in self.confirm.values() for s in runs.seeds})

    def panel_text(self, panel: str) -> str:
        b = self.global_batch.get(panel)
        return f"B = {b:,}" if b else panel

    def paired_difference(self, panel: str, cell: str, against: str | None = None) -> list[float]:
        """Per confirmation seed, this method's loss area minus ``against``'s (default: the first
        method's)."""
        first = against or next((m for m in self.methods if (panel, m) in self.confirm), None)
        if first is None or first == cell or (panel, cell) not in self.confirm or (panel, first) not in self.confirm:
            return []
        base = {r.get("seed"): loss_area(r) for r in self.confirm[(panel, first)][1].records}
        out = []
        for r in self.confirm[(panel, cell)][1].records:
            a, b = loss_area(r), base.get(r.get("seed"))
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
                out.append(a - b)
        return out

    def to_markdown(self) -> str:
        line = lambda texts: "| " + " | ".join(str(t).replace("|", "\\|") for t in texts) + " |"  # noqa: E731
        targets = ", ".join(f"{t:g}" for t in self.targets)
        runs = [r for points in self.tuning.values() for s in points.values() for r in s.records] + \
               [r for _, s in self.confirm.values() for r in s.records]
        bn = any(loss_key(r) == BN_LOSS for r in runs)  # models without BatchNorm have nothing to re-estimate
        stage = "tuned and confirmed" if self.confirm else "tuned; confirmation not yet run"
        out = [f"**{self.title}, {stage}.** {self.setting}. The loss is the training loss at x_t on a fixed "
               f"training subset{' with BatchNorm statistics re-estimated at x_t' if bn else ''}; its area is the "
               f"mean loss along the run (trapezoids over the trace, per step); targets {targets}.", "",
               f"Tuning seeds {self.tuning_seeds}; confirmation seeds {self.confirm_seeds} (never used for "
               f"tuning). Each method's setting is the grid point with the lowest mean area over the tuning seeds.", ""]
        out += ["### What each method was given", "",
                line(["method", "panel", "configurations", "tuning runs", "chosen"]), "|---|---|---:|---:|---|"]
        for (panel, cell), points in self.tuning.items():
            runs = sum(len(s.records) for s in points.values())
            out.append(line([self.method_labels[cell], self.panel_text(panel), len(points), runs,
                             _label(self.chosen.get((panel, cell)))]))
        metric = self.metric.get("key")
        out += ["", "### Confirmation", "", "Mean [95 % interval] over the confirmation seeds; reached = seeds "
                "that got to the target / seeds run; Δ area = the method's area minus the first method's, "
                "paired by seed.", ""]
        head = ["method", "panel", "setting", "area under the loss", "Δ area", "final loss",
                *[f"steps to {t:g}" for t in self.targets], *([f"final {self.metric.get('label', metric)}"]
                                                             if metric else [])]
        probed = any(s.smoothness() for _, s in self.confirm.values())
        head += ["smoothness"] if probed else []
        out += [line(head), "|---|---|---|" + "---:|" * (len(head) - 3)]
        for panel in self.panels:
            for cell in self.methods:
                if (panel, cell) not in self.confirm:
                    continue
                key, runs = self.confirm[(panel, cell)]
                diff = self.paired_difference(panel, cell)
                steps = [f"{len(runs.steps(t))}/{len(runs.records)}: {interval_text(runs.steps(t), 1)}" for t in self.targets]
                out.append(line([self.method_labels[cell], self.panel_text(panel), _label(key),
                                 interval_text(runs.areas(), 3) + (f" ({runs.diverged} diverged)" if runs.diverged else ""),
                                 interval_text(diff, 3) if diff else "—", interval_text(runs.final_losses(), 3), *steps,
                                 *([interval_text(runs.finals(metric), 2)] if metric else []),
                                 *([interval_text(runs.smoothness(), 2)] if probed else [])]))
        pairs = [(panel, a, b, diff) for panel in self.panels for i, a in enumerate(self.methods) if i
                 for b in self.methods[i + 1:] for diff in [self.paired_difference(panel, b, a)] if diff]
        if pairs:  # the differences the Δ column does not show: between the later methods
            out += ["", "Δ area between the other methods, paired by seed:", ""]
            out += [f"- {self.method_labels[b]} − {self.method_labels[a]} ({self.panel_text(panel)}): "
                    f"{interval_text(diff, 3)}" for panel, a, b, diff in pairs]
        if self.superseded:
            out += ["", "Also in the records, not shown above: confirmation runs at a point tuning no longer "
                    "chooses (an earlier choice, made before the tuning records it is chosen from were complete): "
                    + "; ".join(f"{self.method_labels[cell]} ({self.panel_text(panel)}) at {_label(key)}, "
                                f"{len(runs.records)} seeds, area {interval_text(runs.areas(), 3)}"
                                for (panel, cell, key), runs in self.superseded.items()) + "."]
        out += ["", "### Tuning", "", "Every grid point: mean area over the tuning seeds (lower is better), and "
                "the seeds reaching each target. ✓ marks the chosen point.", ""]
        for (panel, cell), points in self.tuning.items():
            out += [f"**{self.method_labels[cell]}** ({self.panel_text(panel)})", "",
                    line(["setting", "mean area", *[f"reached {t:g}" for t in self.targets]]),
                    "|---|---:|" + "---:|" * len(self.targets)]
            for key, runs in sorted(points.items(), key=lambda kv: _sort_key(kv[0])):
                area = runs.mean_area()
                mark = " ✓" if key == self.chosen.get((panel, cell)) else ""
                out.append(line([_label(key) + mark, f"{area:.3f}" if math.isfinite(area) else
                                 f"— ({runs.diverged} diverged)" if runs.diverged else "—",
                                 *[f"{len(runs.steps(t))}/{len(runs.records)}" for t in self.targets]]))
            out.append("")
        return "\n".join(out)

    def to_csv(self) -> str:
        """One line per (stage, panel, method, setting): seeds, areas, steps per target."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["stage", "panel", "method", "point", "chosen", "seeds", "areas", "mean_area",
                    *[f"steps_to_{t:g}" for t in self.targets]])
        rows = [("tune", p, c, k, s) for (p, c), points in self.tuning.items() for k, s in points.items()]
        rows += [("confirm", p, c, k, s) for (p, c), (k, s) in self.confirm.items()]
        rows += [("superseded", p, c, k, s) for (p, c, k), s in self.superseded.items()]
        for stage, panel, cell, key, runs in rows:
            w.writerow([stage, panel, cell, key, int(key == self.chosen.get((panel, cell))),
                        ";".join(map(str, runs.seeds)), ";".join(repr(a) for a in runs.areas()), repr(runs.mean_area()),
                        *[";".join(map(str, runs.steps(t))) for t in self.targets]])
        return buf.getvalue()


def _label(key: str | None) -> str:
    if key is None:
        return "—"
    return point_label(json.loads(key)) or "as configured"


def _sort_key(key: str) -> tuple:
    point = json.loads(key)
    return tuple((k, float(v)) for k, v in sorted(point.items()))


def build_tuned_study(records: list[dict], item: str) -> TunedStudy:
    """The tuning and confirmation of ``item`` from its records (``is_tuned``). Confirmation shows
    each method's runs at the point tuning chooses from these records; confirmation runs at other
    points (an earlier choice, before the tuning records changed) are named in ``superseded``."""
    records = [r for r in records if r.get("item") == item and r.get("stage") in ("tune", "confirm")]
    if not records:
        raise ValueError(f"item: no tuned-study records of {item!r}")
    about = about_of(records)
    methods, labels = methods_of(records)
    panels = list(dict.fromkeys(str(r.get("panel", variant_of(r))) for r in records))
    tuning = {k: {key: Seeds(runs) for key, runs in points.items()} for k, points in stage_runs(records, item, "tune").items()}
    chosen = {k: choose({key: s.records for key, s in points.items()}) for k, points in tuning.items()}
    confirm: dict = {}
    superseded: dict = {}
    for k, points in stage_runs(records, item, "confirm").items():
        # a tuned cell confirms at its chosen point; an untuned one (or one whose tuning measured
        # nothing to choose by) at its one point, as configured
        at = chosen.get(k) or (next(iter(points)) if len(points) == 1 else None)
        if at in points:
            confirm[k] = (at, Seeds(points[at]))
        superseded.update({(*k, key): Seeds(runs) for key, runs in points.items() if key != at})
    order = {m: i for i, m in enumerate(methods)}
    tuning = dict(sorted(tuning.items(), key=lambda kv: (panels.index(kv[0][0]), order[kv[0][1]])))
    metric = about["metric"] if isinstance(about.get("metric"), dict) and "key" in about["metric"] else {}
    batches = {str(r.get("panel", variant_of(r))): r["global_batch"] for r in records
               if isinstance(r.get("global_batch"), int)}
    setting = about.get("setting", item)
    return TunedStudy(item, about.get("title", item), setting, targets_of(records[-1]), methods, labels, panels,
                      tuning, chosen, confirm, metric, batches, superseded)
