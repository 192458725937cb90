"""Everything ``python -m results DIR`` writes: the tables and figures of the items in DIR."""

from __future__ import annotations

from pathlib import Path

from .protocol import build_tuned_study, is_tuned
from .records import load_records
from .specs import declared_figures
from .study import build_study, study_items
from .tables import build_table, table_items

__all__ = ["write_all", "records_files", "RECORDS_FILE"]

RECORDS_FILE = "records.jsonl"


def records_files(directory) -> list[Path]:
    """``directory/records.jsonl`` and those one level down (``directory/*/records.jsonl``: one
    per Kubernetes job, say), in that order; empty when there are none."""
    directory = Path(directory)
    top = [directory / RECORDS_FILE] if (directory / RECORDS_FILE).is_file() else []
    return top + sorted(p for p in directory.glob(f"*/{RECORDS_FILE}") if p.is_file())


def write_all(directory) -> list[Path]:
    """Read ``directory/records.jsonl`` (and ``directory/*/records.jsonl``) and write into
    ``directory``, for each item present: ``tableN.{md,tex,csv}`` where its config's ``about``
    lays out a table, ``<item>.study.{md,csv,png}`` where it ran as a study (``results.study``),
    and ``<name>.png`` for each figure its config declares (``results.specs``); return the paths
    written.

    Items whose records name no table layout, no study and no figure are ignored. Raises
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
    declared = declared_figures(records)  # the figures the items' configs declare (Table 1's: Figure 5)
    if declared:
        from .figures import draw_figure, method_colors  # matplotlib only when there is a figure to draw

        sources = {item for item, _ in declared.values()}
        colors = method_colors([r for r in records if r["item"] in sources])
        for name, (item, spec) in declared.items():
            written.append(draw_figure(records, item, spec, directory / f"{name}.png", colors))
    return written
