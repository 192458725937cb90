"""The paper's items: one config in ``configs/`` and one script per item (``python -m reproduce.<item>``);
and the demo (``make demo``), whose config is ``demo.yaml`` beside this file, run by the same runner."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
ITEMS = tuple(sorted(p.stem for p in CONFIGS.glob("*.yaml")))  # one config (and script) per item
DEMO = "demo"


def config_path(item: str) -> Path:
    """The config of ``item``: one of ``ITEMS``, or the demo."""
    return CONFIGS.parent / "demo.yaml" if item == DEMO else CONFIGS / f"{item}.yaml"
