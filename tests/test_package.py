"""The installable package is ``extrap`` alone: the built wheel holds no other top-level name, and
it imports and trains in a fresh virtual environment that has torch (and what torch needs) only."""

import importlib.metadata as metadata
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import ROOT

FIVE_STEPS = """
import torch, extrap
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
opt = extrap.ExtrapolatedSGD(model.parameters(), lr=0.1, perturbation="extrap")
x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
losses = []
for _ in range(5):
    opt.zero_grad()
    opt.perturb()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    losses.append(loss.item())
assert losses[-1] < losses[0], losses
for suite_module in ("numpy", "yaml", "sklearn", "matplotlib", "models", "data", "reproduce"):
    try:
        __import__(suite_module)
    except ImportError:
        continue
    raise SystemExit(f"{suite_module} is importable: the environment is not torch alone")
print("ok", extrap.__file__)
"""


def torch_closure() -> list[metadata.Distribution]:
    """torch's distribution and those it requires (no extras), as installed here."""
    seen, todo, out = set(), ["torch"], []
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        out.append(dist)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def link_installed(dists: list[metadata.Distribution], into: Path) -> None:
    """Symlink each distribution's top-level files and folders (and its metadata) into ``into``."""
    into.mkdir()
    for dist in dists:
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(dist.locate_file(top))
            if top != ".." and not top.startswith("__") and source.exists() and not (into / top).exists():
                (into / top).symlink_to(source)


@pytest.mark.slow
def test_the_wheel_is_extrap_alone_and_trains_with_torch_alone(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("extrap-*.whl")
    names = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in names if not n.endswith(".dist-info")} == {"extrap"}

    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    link_installed(torch_closure(), tmp_path / "torch-alone")  # no download: this machine's torch
    (site / "torch-alone.pth").write_text(str(tmp_path / "torch-alone") + "\n")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([python, "-c", FIVE_STEPS], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ") and str(env_dir) in proc.stdout  # the wheel's extrap, not the checkout's
