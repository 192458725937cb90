"""The paper's items: one config in ``configs/`` and one script per item (``python -m reproduce.<item>``)."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
ITEMS = tuple(sorted(p.stem for p in CONFIGS.glob("*.yaml")))  # one config (and script) per item
