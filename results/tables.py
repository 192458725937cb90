"""Tables 1–3: the final metric of each (row, column) as mean ± std over seeds.

A cell averages the seeds that completed with a finite metric; diverged and failed seeds are left
out of the mean and counted beside it, so a method that diverges on one seed in three reads
``90.10 ± 0.20 (n=2, 1 diverged)`` rather than a silently better or NaN mean. A (row, column)
with no record at all is "—" (not run). Each table renders to Markdown (a caption line stating the
metric and the global batch, then the table), LaTeX (booktabs) and CSV (one row per cell, with
the per-seed values, so everything in the other two can be recomputed from it).
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field

from .records import int_field, method_label, metric_of, order_methods, unique_ints, variant_of

__all__ = ["Cell", "Table", "build_table", "collect_cells", "TABLE_ITEMS", "METRICS", "latex_escape"]

MISSING = "—"

# metric key -> (what it is, higher is better)
METRICS = {
    "test_top1": ("test top-1 accuracy (%)", True),
    "val_ppl": ("validation perplexity", False),
    "bleu": ("test BLEU", True),
}


@dataclass(frozen=True)
class _Layout:
    title: str
    setting: str
    methods_as_rows: bool
    method_order: list[str]
    variant_order: list[str] = field(default_factory=list)
    variant_labels: dict[str, str] = field(default_factory=dict)
    metric: str = "test_top1"


_LAYOUTS = {
    "table1": _Layout(
        "Table 1", "ResNet-20 and VGG-11 (down-scaled) on CIFAR-10 with learning-rate decay",
        methods_as_rows=True,
        method_order=["sgd-nolars", "extrap-sgd-nolars", "sgd", "smoothout", "uniform-noise",
                      "stochastic-noise", "extrap-sgd"],
        variant_order=["resnet20", "vgg11"],
        variant_labels={"resnet20": "ResNet-20", "vgg11": "VGG-11 (down-scaled)"}),
    "table2": _Layout(
        "Table 2", "ResNet-20 on CIFAR-10 and CIFAR-100, with and without post-local SGD",
        methods_as_rows=True,
        method_order=["sgd", "sgd+post-local", "extrap-sgd", "extrap-sgd+post-local"],
        variant_order=["cifar10", "cifar100"],
        variant_labels={"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}),
    "table3": _Layout(
        "Table 3", "ResNet-20 on CIFAR-10 at a fixed global batch split as K workers × local batch b",
        methods_as_rows=False,
        method_order=["sgd", "extrap-sgd", "sgd+post-local", "extrap-sgd+post-local"]),
}
TABLE_ITEMS = tuple(_LAYOUTS)


@dataclass
class Cell:
    """The seeds of one (row, column): the metric of those that completed, and counts of the rest."""

    values: list[float] = field(default_factory=list)
    seeds: list = field(default_factory=list)
    n_diverged: int = 0
    n_failed: int = 0

    @property
    def n(self) -> int:
        """Seeds in the mean (completed, with a finite metric)."""
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (statistics.stdev, n − 1); None below two seeds."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    def text(self, digits: int = 2) -> str:
        """``91.23 ± 0.15 (n=3)``, ``91.23 (n=1)``, ``90.10 ± 0.20 (n=2, 1 diverged)``,
        ``diverged (n=3)``."""
        lost = [f"{k} {what}" for k, what in ((self.n_diverged, "diverged"), (self.n_failed, "failed")) if k]
        if not self.values:
            if self.n_diverged and self.n_failed:
                return f"no completed seed ({', '.join(lost)})"
            return f"{'diverged' if self.n_diverged else 'failed'} (n={self.n_diverged + self.n_failed})"
        value = f"{self.mean:.{digits}f}"
        if self.std is not None:
            value += f" ± {self.std:.{digits}f}"
        return f"{value} ({', '.join([f'n={self.n}', *lost])})"


@dataclass
class Table:
    """Rows × columns of cells; ``cells`` lacks the (row, column) pairs that were not run."""

    item: str
    title: str
    caption: str
    metric: str
    row_header: str
    rows: list[str]
    columns: list[str]
    row_labels: dict[str, str]
    column_labels: dict[str, str]
    cells: dict[tuple[str, str], Cell]
    digits: int = 2

    def cell(self, row: str, column: str) -> Cell | None:
        return self.cells.get((row, column))

    def _text(self, row: str, column: str) -> str:
        cell = self.cell(row, column)
        return MISSING if cell is None else cell.text(self.digits)

    def to_markdown(self) -> str:
        """A bold caption line, a blank line, then a GitHub-flavoured Markdown table."""
        line = lambda texts: "| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |"  # noqa: E731
        lines = [f"**{self.title}.** {self.caption}", "",
                 line([self.row_header, *(self.column_labels[c] for c in self.columns)]),
                 "|---|" + "---:|" * len(self.columns)]
        for row in self.rows:
            lines.append(line([self.row_labels[row], *(self._text(row, c) for c in self.columns)]))
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A ``table`` float around a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
        head = [self.row_header.capitalize(), *(self.column_labels[c] for c in self.columns)]
        lines = [f"% {self.title}, written by `python -m results`; needs \\usepackage{{booktabs}}",
                 "\\begin{table}[t]", "\\centering",
                 f"\\caption{{{latex_escape(self.caption)}}}", f"\\label{{tab:{latex_escape(self.item)}}}",
                 f"\\begin{{tabular}}{{l{'r' * len(self.columns)}}}", "\\toprule",
                 " & ".join(latex_escape(h) for h in head) + " \\\\", "\\midrule"]
        for row in self.rows:
            texts = [self.row_labels[row], *(self._text(row, c) for c in self.columns)]
            lines.append(" & ".join(latex_escape(t) for t in texts) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """One line per (row, column): keys (slugs / variants), mean, std, n, n_diverged,
        n_failed and the per-seed values joined by ';'. Missing cells have n = 0 and empty fields."""
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(["row", "column", "mean", "std", "n", "n_diverged", "n_failed", "values"])
        for row in self.rows:
            for column in self.columns:
                cell = self.cell(row, column) or Cell()
                out.writerow([row, column, "" if cell.mean is None else repr(cell.mean),
                              "" if cell.std is None else repr(cell.std), cell.n, cell.n_diverged,
                              cell.n_failed, ";".join(repr(v) for v in cell.values)])
        return buf.getvalue()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "±": r"$\pm$", "×": r"$\times$", "—": "---", "–": "--", "≤": r"$\leq$", "≥": r"$\geq$"}


def latex_escape(text: str) -> str:
    """``text`` safe in LaTeX body text: specials escaped, ±/× in math mode, dashes as TeX dashes."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


def collect_cells(records: list[dict], metric: str, key) -> dict:
    """Group the records into cells by ``key(record)`` and sort each seed into its cell's values
    (completed, finite metric), diverged count or failed count."""
    cells: dict[tuple[str, str], Cell] = {}
    by_seed = lambda r: (0, r["seed"], "") if isinstance(r.get("seed"), int) else (1, 0, str(r.get("seed")))  # noqa: E731
    for r in sorted(records, key=by_seed):
        cell = cells.setdefault(key(r), Cell())
        value = metric_of(r, metric)
        status = r.get("status")
        if status == "diverged":
            cell.n_diverged += 1
        elif status == "completed" and value is not None:
            cell.values.append(value)
            cell.seeds.append(r.get("seed"))
        else:  # failed, an unknown status, or "completed" without a finite metric
            cell.n_failed += 1
    return cells


def _batch_phrase(records: list[dict], with_split: bool) -> str:
    batches = unique_ints(records, "global_batch")
    if not batches:
        return "global batch not recorded"
    if len(batches) > 1:
        return "global batches B = " + ", ".join(map(str, batches))
    phrase = f"global batch B = {batches[0]}"
    workers, local = unique_ints(records, "workers"), unique_ints(records, "local_batch")
    if with_split and len(workers) == 1 and len(local) == 1:
        phrase += f" (K = {workers[0]} workers × b = {local[0]})"
    return phrase


def _split_label(records: list[dict], variant: str) -> tuple[tuple, str]:
    """Table 3's row: (sort key, label) from the variant's workers and local batch."""
    rs = [r for r in records if variant_of(r) == variant]
    k = next((v for r in rs if (v := int_field(r, "workers", r"K\s*=\s*(\d+)")) is not None), None)
    b = next((v for r in rs if (v := int_field(r, "local_batch", r"b\s*=\s*(\d+)")) is not None), None)
    if k is None or b is None:
        return (1, 0, 0, variant), variant or "(no variant)"
    return (0, k, b, variant), f"K={k} × b={b}"


def build_table(records: list[dict], item: str) -> Table:
    """The table of ``item`` ("table1", "table2" or "table3") from the records of that item.

    Rows and columns are the methods and variants present in the records, methods in the paper's
    order then any others, variants in the paper's order (Table 3: by workers, then local batch).
    """
    if item not in _LAYOUTS:
        raise ValueError(f"item: expected one of {', '.join(TABLE_ITEMS)}, got {item!r}")
    layout = _LAYOUTS[item]
    records = [r for r in records if r.get("item") == item]
    methods = order_methods((r["cell"] for r in records), layout.method_order)
    method_labels = {m: method_label(m) for m in methods}
    seen = list(dict.fromkeys(variant_of(r) for r in records))
    if layout.methods_as_rows:
        variants = [v for v in layout.variant_order if v in seen]
        variants += [v for v in seen if v not in variants]
        variant_labels = {v: layout.variant_labels.get(v, v or "(no variant)") for v in variants}
        rows, row_labels, columns, column_labels = methods, method_labels, variants, variant_labels
        key = lambda r: (r["cell"], variant_of(r))  # noqa: E731
        row_header = "method"
    else:
        split = {v: _split_label(records, v) for v in seen}
        variants = sorted(seen, key=lambda v: split[v][0])
        rows, row_labels = variants, {v: split[v][1] for v in variants}
        columns, column_labels = methods, method_labels
        key = lambda r: (variant_of(r), r["cell"])  # noqa: E731
        row_header = "K × b"
    what, higher = METRICS[layout.metric]
    caption = (f"{layout.setting}: {what}, {'higher' if higher else 'lower'} is better, at "
               f"{_batch_phrase(records, with_split=layout.methods_as_rows)}. Mean ± std over seeds "
               f"(n = seeds in the mean; diverged and failed seeds are excluded and counted); "
               f"{MISSING} = not run.")
    return Table(item=item, title=layout.title, caption=caption, metric=layout.metric,
                 row_header=row_header, rows=rows, columns=columns, row_labels=row_labels,
                 column_labels=column_labels, cells=collect_cells(records, layout.metric, key))
