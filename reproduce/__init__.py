"""The paper's items: one config in ``configs/`` and one script per item (``python -m reproduce.<item>``);
and the demo (``make demo``), whose config is ``demo.yaml`` beside this file, run by the same runner."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
ITEMS = tuple(sorted(p.stem for p in CONFIGS.glob("*.yaml")))  # one config (and script) per item
DEMO = "demo"


_OWN: dict[str, Path] = {}  # a user's own item files (``--config FILE``), by item name


def use_config(path) -> str:
    """Make ``path``, a user's own item file, the config of the item named by its stem; returns
    that name."""
    path = Path(path).resolve()
    _OWN[path.stem] = path
    return path.stem


def config_path(item: str) -> Path:
    """The config of ``item``: a file given with ``--config``, one of ``ITEMS``, or the demo."""
    if item in _OWN:
        return _OWN[item]
    return CONFIGS.parent / "demo.yaml" if item == DEMO else CONFIGS / f"{item}.yaml"


# what does not change what a run computes: how it is shown, how many seeds its item runs, where
# the data lie, which engine runs it (they agree: tests/test_engines.py), its checkpoint rhythm
IDENTITY_EXCLUDES = ("label", "color", "seeds", "data_dir", "engine", "target_loss", "checkpoint_every",
                     "checkpoint_minutes", "tensorboard")


def identity(settings) -> dict:
    """What makes two runs the same run: their resolved settings, less how they are shown. The
    runner refuses to resume or skip a run whose identity changed; the study compares arms by it."""
    if not isinstance(settings, dict):
        return {}
    return {k: _canonical(v) for k, v in settings.items() if k not in IDENTITY_EXCLUDES}


def _canonical(value):
    """A setting as identity compares it: floats to 12 significant digits, so that a rate reached
    by arithmetic (0.1 · 0.1 / 0.05 = 0.20000000000000004) is the rate written 0.2."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value
