"""The examples a user copies run as documented, so they cannot rot; examples/engine_equivalence.py
is run by tests/test_engines.py and tests/test_ddp.py."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT, launcher_env

EXAMPLES = ROOT / "examples"


def losses(cmd: list[str]) -> list[float]:
    proc = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [float(v) for v in re.findall(r"mean training loss ([0-9.]+)", proc.stdout)]


@pytest.mark.slow
def test_ddp_example_trains_and_equals_its_virtual_workers_twin():
    """examples/ddp_train.py under torchrun with 2 ranks, and examples/virtual_workers.py with 2
    virtual workers: the same per-epoch losses, and they fall."""
    ddp = losses([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  str(EXAMPLES / "ddp_train.py"), "--epochs", "2"])
    virtual = losses([sys.executable, str(EXAMPLES / "virtual_workers.py"), "--workers", "2", "--epochs", "2"])
    assert len(ddp) == len(virtual) == 2
    assert ddp == pytest.approx(virtual, rel=1e-3)
    assert ddp[1] < 0.5 * ddp[0]
