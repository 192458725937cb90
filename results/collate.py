"""Everything ``python -m results DIR`` writes: the tables and figures of the items in DIR."""

from __future__ import annotations

from pathlib import Path

from .protocol import build_tuned_study, is_tuned
from .records import load_records
from .study import build_study, study_items
from .tables import build_table, table_items

FIGURE_ITEMS = ("figure1", "figure2", "figure3", "figure4", "figure5", "figure7")
# figures drawn from another item's records (the appendix's Figure 5: Table 1's curves)
FIGURE_SOURCE = {"figure5": "table1"}

__all__ = ["write_all", "records_files", "RECORDS_FILE"]

RECORDS_FILE = "records.jsonl"


def records_files(directory) -> list[Path]:
    """``directory/records.jsonl`` and those one level down (``directory/*/records.jsonl``: one
    per Kubernetes job, say), in that order; empty when there are none."""
    directory = Path(directory)
    top = [directory / RECORDS_FILE] if (directory / RECORDS_FILE).is_file() else []
    return top + sorted(p for p in directory.glob(f"*/{RECORDS_FILE}") if p.is_file())


def write_all(directory) -> list[Path]:
    """Read ``directory/records.jsonl`` (and ``directory/*/records.jsonl``) and write, for each
    paper item present, ``tableN.{md,tex,csv}`` or ``figureN.png`` into ``directory``, and for
    an item run as a study (``results.study``) ``<item>.study.{md,csv,png}``; return the paths
    written.

    Items whose records name no table layout and that are not figures (the demo's, say) are
    ignored. Raises
    FileNotFoundError when there is no records file.
    """
    directory = Path(directory)
    files = records_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory / RECORDS_FILE}: no such file")
    records = load_records(files)
    present = {r["item"] for r in records}
    written: list[Path] = []
    for item in table_items(records):
        if item in present:
            table = build_table(records, item)
            for suffix, text in (("md", table.to_markdown()), ("tex", table.to_latex()), ("csv", table.to_csv())):
                path = directory / f"{item}.{suffix}"
                path.write_text(text, encoding="utf-8")
                written.append(path)
    for item in study_items(records):  # seeds with loss targets: a tuned study, or a rate grid (the demo)
        tuned = is_tuned([r for r in records if r.get("item") == item])
        study = build_tuned_study(records, item) if tuned else build_study(records, item)
        for suffix, text in (("md", study.to_markdown()), ("csv", study.to_csv())):
            path = directory / f"{item}.study.{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
        from . import figures  # noqa: PLC0415 (matplotlib only when there is a figure to draw)

        if tuned:
            written += figures.write_tuned_figures(study, records, directory)
        else:
            written.append(figures.write_study_figure(records, item, directory / f"{item}.study.png"))
    figures = [item for item in FIGURE_ITEMS if FIGURE_SOURCE.get(item, item) in present]
    if figures:
        from .figures import method_colors, write_figure  # matplotlib only when there is a figure to draw

        sources = {FIGURE_SOURCE.get(item, item) for item in figures}
        colors = method_colors([r for r in records if r["item"] in sources])
        for item in figures:
            written.append(write_figure(records, item, directory / f"{item}.png", colors))
    return written
