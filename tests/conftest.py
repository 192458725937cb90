import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"
# every run the tests start reads the project's data slices beside the checkout, where they are,
# and never fetches a dataset (reproduce.config: EXTRAP_DATA_DIR, EXTRAP_DOWNLOAD)
if SHARED_DATA.is_dir():
    os.environ.setdefault("EXTRAP_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("EXTRAP_DOWNLOAD", "0")

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `make test`: pytest-xdist workers share the cores
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def find_mpirun():
    """mpirun from this interpreter's environment (make install puts it in .venv), or PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("mpirun", path=path)


def launcher_env() -> dict:
    """Environment for subprocess launches: the project importable, Open MPI allowed as root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PRTE_MCA_rmaps_default_mapping_policy"] = ":oversubscribe"
    return env


@pytest.fixture
def mpirun():
    exe = find_mpirun()
    if exe is None:
        pytest.skip("mpirun not found: `make install` installs Open MPI into .venv")
    return exe
