"""The library as a dependency: ``import extrap`` says nothing that ``import torch`` does not, and
the library prints nothing on its own (it logs, or warns)."""

import subprocess
import sys

import torch
from torch import nn

from conftest import ROOT


def _output(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_importing_extrap_says_nothing_more_than_importing_torch():
    assert _output("import extrap") == _output("import torch")


def test_the_library_prints_nothing_on_its_own(capsys, caplog):
    from extrap import ExtrapolatedSGD, weight_decay_groups

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with caplog.at_level("INFO", logger="extrap"):
        groups = weight_decay_groups(model, 1e-4)
    opt = ExtrapolatedSGD(groups, lr=0.1, lr_scale=2.0)
    opt.zero_grad()
    opt.perturb()
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    assert capsys.readouterr() == ("", "")
    assert "weight decay 0.0001 on 2 tensors" in caplog.text  # the counts go to the extrap logger
