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
    assert "extrap." not in proc.stderr, proc.stderr[-3000:]  # the examples raise no warning of extrap's own
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


@pytest.mark.slow
@pytest.mark.parametrize("perturbation", ["extrap", "none"])
def test_lightning_and_accelerate_examples_equal_the_ddp_example(perturbation):
    """The same model, shards and batches under Lightning (which starts its 2 processes) and under
    Accelerate (torchrun), with the averaged gradient clipped: the losses of examples/ddp_train.py."""
    flags = ["--epochs", "2", "--clip-norm", "1.0", "--perturbation", perturbation]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = losses([*torchrun, str(EXAMPLES / "ddp_train.py"), *flags])
    lightning = losses([sys.executable, str(EXAMPLES / "lightning_ddp.py"), *flags])
    accelerate = losses([*torchrun, str(EXAMPLES / "accelerate_ddp.py"), *flags])
    assert len(ddp) == 2 and ddp[1] < ddp[0]
    assert lightning == pytest.approx(ddp, rel=1e-3)
    assert accelerate == pytest.approx(ddp, rel=1e-3)


@pytest.mark.slow
def test_the_slurm_batch_script_runs_two_ranks_under_srun(tmp_path):
    """examples/slurm.sbatch with stand-ins for Slurm's scontrol and srun (srun starts the tasks
    with SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, as on a cluster): the ranks meet at the
    address the script sets, and the losses are the 2-rank torchrun run's."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the batch script runs .venv/bin/python: `make install` builds it")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\necho 127.0.0.2\n")
    (bin_dir / "srun").write_text(
        "#!/bin/sh\nfor i in 0 1; do SLURM_PROCID=$i SLURM_NTASKS=2 SLURM_LOCALID=0 \"$@\" & done\nwait\n")
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {k: v for k, v in launcher_env().items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_NODELIST="node[1-2]", SLURM_CPUS_PER_TASK="1")
    proc = subprocess.run(["bash", str(EXAMPLES / "slurm.sbatch")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    srun = [float(v) for v in re.findall(r"mean training loss ([0-9.]+)", proc.stdout)]
    torchrun = losses([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       str(EXAMPLES / "ddp_train.py"), "--epochs", "3"])
    assert srun == pytest.approx(torchrun, rel=1e-3) and len(srun) == 3
