"""The results collator: tables and figures of the paper's items from a run directory's records.

    python -m results DIR          # DIR/records.jsonl -> DIR/tableN.{md,tex,csv}, DIR/figureN.png

or from Python::

    records = results.load_records("runs/table1/records.jsonl")
    table = results.build_table(records, "table1")     # rows, columns, cells (mean, std, n, ...)
    print(table.to_markdown())
    results.write_all("runs/table1")                     # -> list of the paths written

The figures are those the items' configs declare (``figures:``, ``results.specs``). It imports
no torch: collating needs the records and, for figures, matplotlib (Agg canvas only).
"""

from .collate import RECORDS_FILE, records_files, write_all
from .records import about_of, load_records, methods_of, variants_of
from .tables import Cell, Table, build_table, table_items

__all__ = ["load_records", "build_table", "write_all", "Table", "Cell", "methods_of", "variants_of", "about_of",
           "table_items", "RECORDS_FILE", "records_files", "write_figure"]


def write_figure(records, item, path, colors=None):
    """Draw the figure ``item`` (figure1, figure5, ...) that one of the records' items declares in
    its config into the PNG ``path``; see ``results.specs`` and ``results.figures``."""
    from .figures import write_figure as draw  # matplotlib is imported only when a figure is drawn

    return draw(records, item, path, colors)
