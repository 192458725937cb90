"""Where an item's config lies, and reading it.

The paper's items have theirs in ``reproduce/configs/<item>.yaml``, the demo ``reproduce/demo.yaml``,
and a user's own item the file given with ``--config`` (``use_config``). ``reproduce`` runs from
them; ``results`` reads from them the figures an item declares (``results.specs``) and the
presentation of records written before they carried it (``results.records``).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["CONFIGS", "DEMO", "use_config", "config_path", "read_config"]

CONFIGS = Path(__file__).resolve().parent.parent / "reproduce" / "configs"
DEMO = "demo"

_OWN: dict[str, Path] = {}  # a user's own item files (``--config FILE``), by item name


def use_config(path) -> str:
    """Make ``path``, a user's own item file, the config of the item named by its stem; returns
    that name."""
    path = Path(path).resolve()
    _OWN[path.stem] = path
    return path.stem


def config_path(item: str, configs: Path | None = None) -> Path:
    """The config of ``item``: a file given with ``--config``, ``<configs>/<item>.yaml``, or the
    demo's beside that folder (``configs``: by default ``CONFIGS``)."""
    if item in _OWN:
        return _OWN[item]
    configs = CONFIGS if configs is None else configs
    return configs.parent / "demo.yaml" if item == DEMO else configs / f"{item}.yaml"


def read_config(item: str) -> dict | None:
    """``item``'s config as a mapping; None when it has none, it cannot be read as one, or
    ``item`` (as a record names it) is no file name."""
    if not re.fullmatch(r"[\w-]+", item):
        return None
    import yaml  # noqa: PLC0415 (only where a config is read)

    try:
        cfg = yaml.safe_load(config_path(item).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return cfg if isinstance(cfg, dict) else None
