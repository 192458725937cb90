"""A study over learning rates and seeds: how many steps each method takes to reach a training-loss
target, with 95 % intervals over seeds (docs/laptop/README.md).

An item's records form a study when their settings name a ``target_loss`` (the ``laptop``
scale's configs do) and carry a trace (``log_every``). Each (method, variant) is an *arm* of
seeds. Where a method's variants differ in nothing but ``base_lr``, they are a rate grid and the
method is shown at its tuned rate; other variants (Figure 3's batch sizes) are each shown.

- **steps to target**: the first traced step at which the training loss at x_t on the fixed
  subset (``train_loss_subset``) is at or below the target. A seed that never gets there, or
  diverges first, has none and is counted as not reaching it.
- **tuned rate** of a method: the rate at which most seeds reached the target, ties broken by
  the fewer mean steps (the paper tunes each method's rate the same way, on its own grid). The
  choice uses the same seeds it reports, so the tuned row flatters every method alike.
- **95 % interval**: mean ± t(0.975, n − 1) · s / √n over the seeds that reached the target (the
  final loss: over the completed seeds), Student's t from scipy; none below two seeds.
- **smoothness**: a seed's mean of the local gradient-Lipschitz probe along its trajectory.

``build_study(records, item)`` gives the arms; ``Study.to_markdown()`` / ``to_csv()`` the grid
and the tuned table, and ``results.figures.write_study_figure`` the tuned rates' curves and the
grid at a glance.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field

from .records import about_of, identity, methods_of, variant_of, variants_of
from .tables import fixed

__all__ = ["Arm", "Study", "build_study", "study_items", "study_records", "steps_to_target", "interval", "LOSS",
           "BN_LOSS", "loss_key", "loss_area", "choose", "targets_of", "finite", "interval_text"]

LOSS = "train_loss_subset"  # the trace's training loss at x_t on a fixed subset, running BatchNorm statistics
BN_LOSS = "train_loss_bn"  # the same with BatchNorm statistics re-estimated at x_t


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def targets_of(record: dict) -> list[float]:
    """The record's training-loss targets (``target_loss``: a number or a list), in order."""
    config = record.get("config")
    value = config.get("target_loss") if isinstance(config, dict) else None
    values = value if isinstance(value, list) else [value]
    return [float(v) for v in values if finite(v)]


def _target(record: dict) -> float | None:
    """The record's (first) training-loss target."""
    return next(iter(targets_of(record)), None)


def _trace(record: dict) -> list[tuple[int, float]]:
    """(step, training loss at x_t) of the record's trace, in order (``loss_key``)."""
    trace = record.get("trace") if isinstance(record.get("trace"), list) else []
    key = loss_key(record)
    return [(p["step"], float(p[key])) for p in trace
            if isinstance(p, dict) and finite(p.get("step")) and finite(p.get(key))]


def loss_key(record: dict) -> str:
    """The trace's training loss at x_t the study reads: with BatchNorm statistics re-estimated at
    x_t (``train_loss_bn``) where the run measured it, else with training's running statistics."""
    trace = record.get("trace") if isinstance(record.get("trace"), list) else []
    return BN_LOSS if any(isinstance(p, dict) and BN_LOSS in p for p in trace) else LOSS


def loss_area(record: dict) -> float | None:
    """The area under the training loss at x_t over the run, per step: the trapezoid rule over the
    trace's points divided by the steps they span (the mean loss along the run). Infinite for a
    diverged run, None without two points."""
    if record.get("status") == "diverged":
        return math.inf
    trace = _trace(record)
    if len(trace) < 2:
        return None
    area = sum((s1 - s0) * (l0 + l1) / 2 for (s0, l0), (s1, l1) in zip(trace, trace[1:]))
    return area / (trace[-1][0] - trace[0][0])


def choose(by_point: dict) -> str | None:
    """The key of ``{key: [records]}`` whose records have the lowest mean ``loss_area`` (a
    diverged seed makes it infinite), ties to the first key in sorted order whatever order the
    records came in; None when no key has a measured record."""
    scores = {}
    for key, records in by_point.items():
        areas = [loss_area(r) for r in records]
        areas = [a for a in areas if a is not None]
        if areas:
            scores[key] = statistics.fmean(areas) if all(math.isfinite(a) for a in areas) else math.inf
    return min(scores, key=lambda k: (scores[k], k)) if scores else None


def steps_to_target(record: dict, target: float) -> int | None:
    """The first traced step whose training loss at x_t is <= ``target``; None when none is."""
    return next((int(step) for step, loss in _trace(record) if loss <= target), None)


def interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high): the Student-t interval of the mean; None below two values."""
    if len(values) < 2:
        return None
    from scipy.stats import t  # noqa: PLC0415 (only where an interval is asked for)

    mean = statistics.fmean(values)
    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def interval_text(values: list[float], digits: int) -> str:
    """``12.3 [10.1, 14.5]``, or the lone value, or "—"."""
    if not values:
        return "—"
    ci = interval(values)
    if ci is None:
        return fixed(values[0], digits)
    return f"{fixed(ci[0], digits)} [{fixed(ci[1], digits)}, {fixed(ci[2], digits)}]"


@dataclass
class Arm:
    """The seeds of one (method, learning rate)."""

    base_lr: float | None
    seeds: list = field(default_factory=list)
    steps: list[int] = field(default_factory=list)        # of the seeds that reached the target
    final_loss: list[float] = field(default_factory=list)  # last traced loss of the completed seeds
    smoothness: list[float] = field(default_factory=list)  # each probed seed's mean along its path
    metric: list[float] = field(default_factory=list)      # the item's final metric, completed seeds
    n_diverged: int = 0

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def reached(self) -> int:
        return len(self.steps)

    def rank(self) -> tuple:
        """Smaller is better: more seeds at the target, then fewer mean steps."""
        return (-self.reached / max(self.n, 1), statistics.fmean(self.steps) if self.steps else math.inf)


@dataclass
class Study:
    item: str
    title: str
    target: float
    methods: list[str]
    method_labels: dict[str, str]
    variants: list[str]
    variant_labels: dict[str, str]
    arms: dict[tuple[str, str], Arm]  # (method, variant)
    global_batch: list[int]
    metric: dict = field(default_factory=dict)  # the config's about.metric: key, label
    setting: str = ""
    rate_grid: bool = True  # the variants differ only in base_lr: each method is tuned over them

    def tuned(self, method: str) -> str | None:
        """The method's variant (rate) that reaches the target most often, then fastest."""
        runs = [v for v in self.variants if (method, v) in self.arms]
        return min(runs, key=lambda v: self.arms[method, v].rank()) if runs else None

    def shown(self) -> list[tuple[str, str]]:
        """The (method, variant) arms of the main table: each method at its tuned rate over a rate
        grid; otherwise (other variants: batch sizes, say) every arm."""
        if self.rate_grid:
            return [(m, v) for m in self.methods if (v := self.tuned(m)) is not None]
        return [(m, v) for v in self.variants for m in self.methods if (m, v) in self.arms]

    @property
    def probed(self) -> bool:
        """Whether any run measured the smoothness along its path."""
        return any(arm.smoothness for arm in self.arms.values())

    def setting_line(self) -> str:
        """``<setting>, global batch B = <B>``: what the runs were."""
        return f"{self.setting}, global batch B = {', '.join(map(str, self.global_batch)) or 'not recorded'}"

    def _caption(self) -> str:
        return (f"{self.setting_line()}. Steps until the training loss at x_t on a fixed "
                f"training subset is at most {self.target:g} (mean [95 % interval] over the seeds that got "
                f"there; reached = seeds that got there / seeds run).")

    def to_markdown(self) -> str:
        line = lambda texts: "| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |"  # noqa: E731
        lines = [f"**{self.title}, steps to a training-loss target.** {self._caption()}", ""]
        if self.rate_grid and len(self.variants) > 1:
            lines += self._grid_lines(line) + ["", "Each method at its tuned rate (most seeds reaching the "
                                               "target, then fewest steps).", ""]
        metric = [f"final {self.metric.get('label', self.metric['key'])}"] if "key" in self.metric else []
        probed = self.probed
        lines += [line(["method", "rate" if self.rate_grid else "variant", "reached", "steps to target",
                        "final training loss", *metric, *(["smoothness (mean along the path)"] if probed else [])]),
                  "|---|---|" + "---:|" * (3 + len(metric) + probed)]
        for m, v in self.shown():
            arm = self.arms[m, v]
            lines.append(line([self.method_labels[m], self.variant_labels[v], f"{arm.reached}/{arm.n}",
                               interval_text(arm.steps, 1), interval_text(arm.final_loss, 4),
                               *([interval_text(arm.metric, 2)] if metric else []),
                               *([interval_text(arm.smoothness, 2)] if probed else [])]))
        return "\n".join(lines) + "\n"

    def _grid_lines(self, line) -> list[str]:
        lines = ["Every rate of the grid: reached, and steps to the target.", "",
                 line(["method", *(self.variant_labels[v] for v in self.variants)]),
                 "|---|" + "---:|" * len(self.variants)]
        for m in self.methods:
            texts = []
            for v in self.variants:
                arm = self.arms.get((m, v))
                if arm is None:
                    texts.append("—")
                    continue
                diverged = f", {arm.n_diverged} diverged" if arm.n_diverged else ""
                texts.append(f"{arm.reached}/{arm.n}{diverged}: {interval_text(arm.steps, 1)}")
            lines.append(line([self.method_labels[m], *texts]))
        return lines

    def to_csv(self) -> str:
        """One line per (method, variant): whether the main table shows it (a method's tuned rate),
        counts, the per-seed values (';'-joined) and the steps' interval."""
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(["method", "variant", "base_lr", "shown", "n", "reached", "n_diverged", "steps",
                      "steps_mean", "steps_low", "steps_high", "final_loss", "smoothness", "metric"])
        for (m, v), arm in self.arms.items():
            ci = interval([float(s) for s in arm.steps]) or ("", "", "")
            out.writerow([m, v, "" if arm.base_lr is None else repr(arm.base_lr), int((m, v) in self.shown()), arm.n,
                          arm.reached, arm.n_diverged, ";".join(map(str, arm.steps)), *map(str, ci),
                          ";".join(repr(x) for x in arm.final_loss), ";".join(repr(x) for x in arm.smoothness),
                          ";".join(repr(x) for x in arm.metric)])
        return buf.getvalue()


def study_items(records: list[dict]) -> list[str]:
    """The items among the records that are studies: their settings name a ``target_loss``."""
    return list(dict.fromkeys(r["item"] for r in records if _target(r) is not None))


def study_records(records: list[dict], item: str) -> list[dict]:
    """``item``'s records that name a training-loss target."""
    return [r for r in records if r.get("item") == item and _target(r) is not None]


def build_study(records: list[dict], item: str) -> Study:
    """The arms of ``item``'s study from its records that name a target. The target is the last
    record's: ``target_loss`` is not part of a run's identity, so it may be set after some runs
    have finished (from a first seed's curve), and the newest record carries the config's value."""
    records = study_records(records, item)
    if not records:
        raise ValueError(f"item: no records of {item!r} that name a target_loss")
    target = _target(records[-1])
    about = about_of(records)
    metric = about["metric"] if isinstance(about.get("metric"), dict) and "key" in about["metric"] else {}
    methods, method_labels = methods_of(records)
    variants, variant_labels = variants_of(records)
    arms: dict[tuple[str, str], Arm] = {}
    for r in sorted(records, key=lambda r: str(r.get("seed"))):
        config = r.get("config") if isinstance(r.get("config"), dict) else {}
        lr = config.get("base_lr")
        arm = arms.setdefault((r["cell"], variant_of(r)), Arm(float(lr) if finite(lr) else None))
        arm.seeds.append(r.get("seed"))
        if r.get("status") == "diverged":
            arm.n_diverged += 1
        steps = steps_to_target(r, target)
        if steps is not None:
            arm.steps.append(steps)
        trace = _trace(r)
        if r.get("status") == "completed" and trace:
            arm.final_loss.append(trace[-1][1])
        final = r.get("final") if isinstance(r.get("final"), dict) else {}
        if r.get("status") == "completed" and finite(final.get(metric.get("key"))):
            arm.metric.append(float(final[metric["key"]]))
        probes = [p["smoothness"] for p in r.get("smoothness") or [] if isinstance(p, dict) and finite(p.get("smoothness"))]
        if probes:
            arm.smoothness.append(statistics.fmean(probes))
    settings = {}  # per (method, variant): what the runs computed, besides the seed and the rate
    for r in records:
        config = {k: v for k, v in identity(r.get("config")).items() if k not in ("seed", "base_lr")}
        settings.setdefault(r["cell"], {})[variant_of(r)] = json.dumps(config, sort_keys=True, default=str)
    rate_grid = all(len(set(by_variant.values())) == 1 for by_variant in settings.values())
    batches = sorted({r["global_batch"] for r in records if isinstance(r.get("global_batch"), int)})
    return Study(item, about.get("title", item), target, methods, method_labels, variants, variant_labels, arms,
                 batches, metric, about.get("setting", item), rate_grid)
