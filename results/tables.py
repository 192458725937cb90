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

from .records import about_of, int_field, methods_of, metric_of, unique_ints, variant_of, variants_of

__all__ = ["Cell", "Table", "build_table", "collect_cells", "table_items", "latex_escape", "fixed"]

MISSING = "—"

def table_items(records: list[dict]) -> list[str]:
    """The items among the records that are tables: their config's ``about`` names a metric and
    what the rows are."""
    items = dict.fromkeys(r["item"] for r in records)
    return [item for item in items
            if {"metric", "rows"} <= set(about_of([r for r in records if r["item"] == item]))]


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
        value = fixed(self.mean, digits)
        if self.std is not None:
            value += f" ± {fixed(self.std, digits)}"
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


def fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, or in 3 significant digits beyond a million (an extreme
    value then reads ``1e+308``, not three hundred digits)."""
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"


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
    k = next((v for r in rs if (v := int_field(r, "workers")) is not None), None)
    b = next((v for r in rs if (v := int_field(r, "local_batch")) is not None), None)
    if k is None or b is None:
        return (1, 0, 0, variant), variant or "(no variant)"
    return (0, k, b, variant), f"K={k} × b={b}"


def build_table(records: list[dict], item: str) -> Table:
    """The table of ``item`` from the records of that item, as its config's ``about`` says:
    title, setting, metric (key, label, which way is better) and ``rows`` (``cells``: the
    methods as rows and the variants as columns; ``variants``: the other way round, the
    variants being K × b splits, labelled and sorted by workers, then local batch).

    Methods and variants are those present in the records, in their config's order.
    """
    records = [r for r in records if r.get("item") == item]
    about = about_of(records)
    metric = about.get("metric") if isinstance(about.get("metric"), dict) else {}
    if not records or "key" not in metric:
        raise ValueError(f"item: no records of {item!r} that name a table's metric")
    methods, method_labels = methods_of(records)
    if about.get("rows", "cells") == "cells":
        variants, variant_labels = variants_of(records)
        rows, row_labels, columns, column_labels = methods, method_labels, variants, variant_labels
        key = lambda r: (r["cell"], variant_of(r))  # noqa: E731
        row_header = "method"
    else:
        seen = list(dict.fromkeys(variant_of(r) for r in records))
        split = {v: _split_label(records, v) for v in seen}
        variants = sorted(seen, key=lambda v: split[v][0])
        rows, row_labels = variants, {v: split[v][1] for v in variants}
        columns, column_labels = methods, method_labels
        key = lambda r: (variant_of(r), r["cell"])  # noqa: E731
        row_header = "K × b"
    what, higher = metric.get("label", metric["key"]), metric.get("higher_is_better", True)
    caption = (f"{about.get('setting', item)}: {what}, {'higher' if higher else 'lower'} is better, at "
               f"{_batch_phrase(records, with_split=row_header == 'method')}. Mean ± std over seeds "
               f"(n = seeds in the mean; diverged and failed seeds are excluded and counted); "
               f"{MISSING} = not run.")
    return Table(item=item, title=about.get("title", item), caption=caption, metric=metric["key"],
                 row_header=row_header, rows=rows, columns=columns, row_labels=row_labels,
                 column_labels=column_labels, cells=collect_cells(records, metric["key"], key))
