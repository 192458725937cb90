"""The paper's items: one config in ``configs/`` and one script per item (``python -m reproduce.<item>``);
and the demo (``make demo``), whose config is ``demo.yaml`` beside this file, run by the same runner.

Where a config lies and what makes two runs the same run are shared with the collator, and live
there (``results.configs``, ``results.records``)."""

from pathlib import Path

from results import configs as _configs
from results.configs import DEMO, use_config  # noqa: F401 (the runner's)
from results.records import IDENTITY_EXCLUDES, identity  # noqa: F401 (the runner's, the tests')

CONFIGS: Path = _configs.CONFIGS  # where the runner reads the items' configs
ITEMS = tuple(sorted(p.stem for p in CONFIGS.glob("*.yaml")))  # one config (and script) per item


def config_path(item: str) -> Path:
    """The config of ``item``: a file given with ``--config``, one of ``ITEMS``, or the demo."""
    return _configs.config_path(item, CONFIGS)
