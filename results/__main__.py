"""``python -m results DIR``: rebuild DIR's tables and figures from DIR/records.jsonl (and from
DIR/*/records.jsonl: one folder per Kubernetes job).

Prints one line per file written. Exit status 0 when something was written, 1 when the records
hold none of the paper's items, 2 when DIR has no records.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .collate import RECORDS_FILE, records_files, write_all


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m results", description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path, help=f"a run directory holding {RECORDS_FILE}")
    args = ap.parse_args(argv)
    records = args.dir / RECORDS_FILE
    if not records_files(args.dir):
        print(f"error: {records}: no such file, nor {args.dir}/*/{RECORDS_FILE} (expected the records "
              f"the reproduce/ scripts append)", file=sys.stderr)
        return 2
    try:
        written = write_all(args.dir)
    except OSError as e:  # a read-only folder, a full disk, a directory where a file goes
        print(f"error: cannot write into {args.dir}: {e.filename or ''} ({e.strerror or e})", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"error: {records}: no records of a table, figure or study, nothing written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
