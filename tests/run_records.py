"""The records an item's runs wrote into an output folder, read back for the tests to compare."""

import json
from pathlib import Path


def records(out: Path) -> list[dict]:
    """Every record in ``out``/records.jsonl, in the order they were appended."""
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def strip_times(record: dict) -> dict:
    """``record`` less what differs between two runs of the same computation: its wall-clock
    times and the commit it was made at."""
    return {**record, "curve": [{k: v for k, v in p.items() if k != "time_s"} for p in record["curve"]],
            "time_s": None, "git": None}
