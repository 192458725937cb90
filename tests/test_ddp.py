"""extrap under a user's own DistributedDataParallel (``extrap.register_ddp``): the same trajectory
as the project's engines, per-rank extrapolation and BatchNorm statistics, overlap with backward,
and a loud refusal of the silently wrong set-ups."""

import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import ROOT, find_mpirun, launcher_env
from extrap import ExtrapolatedSGD, PostLocalSGD, register_ddp
from extrap.engines import LocalComm

RUN = str(ROOT / "examples" / "engine_equivalence.py")
STEPS = 20
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

# (name, arguments): every perturbation family, Adam, and post-local SGD with H = 2
CASES = {
    "extrap": ["--perturbation", "extrap"],
    "stochastic": ["--perturbation", "stochastic"],
    "gaussian": ["--perturbation", "gaussian"],
    "sam": ["--perturbation", "sam"],
    "extrap-adam": ["--perturbation", "extrap", "--optimizer", "adam"],
    "post-local": ["--perturbation", "extrap", "--post-local", "2"],
}


def launch(cmd, timeout=300, ok=True):
    proc = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def ranks(path) -> list[dict]:
    """Each rank's record: rank 0's file and rank 1's."""
    return [torch.load(p, weights_only=True) for p in (path, f"{path}.rank1")]


def rel(a: dict, b: dict) -> float:
    return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in b if b[n].is_floating_point())


def run_virtual(tmp_path, args) -> dict:
    out = tmp_path / "virtual.pt"
    launch([sys.executable, RUN, str(out), "--engine", "virtual", "--workers", "2", "--steps", str(STEPS), *args])
    return torch.load(out, weights_only=True)["workers"]


def two_ranks(launcher: str) -> list[str]:
    """The command that starts the example on 2 ranks."""
    if launcher == "torchrun":
        return [*TORCHRUN, RUN]
    exe = find_mpirun()
    if exe is None:
        pytest.skip("mpirun not found: `make install` installs Open MPI into .venv")
    return [exe, "-np", "2", sys.executable, RUN]


def run_ddp(tmp_path, launcher, args, name="ddp.pt") -> list[dict]:
    out = tmp_path / name
    launch([*two_ranks(launcher), str(out), "--engine", "ddp", "--steps", str(STEPS), *args])
    return ranks(out)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_ddp_with_register_ddp_equals_the_virtual_engine_in_float64(tmp_path, case):
    args = [*CASES[case], "--dtype", "float64"]
    virtual = run_virtual(tmp_path, args)
    for launcher in ("torchrun", "mpirun"):
        got = run_ddp(tmp_path, launcher, args, name=f"{launcher}.pt")
        for rank, record in enumerate(got):
            ours, ref = record["workers"][rank], virtual[rank]
            assert rel(ours["params"], ref["params"]) <= 1e-6, (launcher, rank)
            assert rel(ours["buffers"], ref["buffers"]) <= 1e-6, (launcher, rank)


@pytest.mark.slow
def test_ddp_float32_the_ranks_own_points_statistics_and_overlap(tmp_path):
    """float32 to 1e-5; the two ranks' x̃ and BatchNorm statistics differ; with small buckets the
    hook sends a bucket while backward is still computing other gradients."""
    virtual = run_virtual(tmp_path, [])
    got = run_ddp(tmp_path, "torchrun", ["--bucket-mb", "0.01"])
    for rank, record in enumerate(got):
        assert rel(record["workers"][rank]["params"], virtual[rank]["params"]) <= 1e-5
    w0, w1 = got[0]["workers"][0], got[1]["workers"][1]
    assert rel(w0["x_tilde"], w1["x_tilde"]) > 1e-3
    assert rel(w0["buffers"], w1["buffers"]) > 1e-2
    assert got[0]["hook_calls"] > STEPS  # several buckets per step
    assert got[0]["late_grads"] > 0  # gradients computed after a bucket was already sent


@pytest.mark.slow
def test_stochastic_under_ddp_is_not_minibatch_sgd(tmp_path):
    stochastic = run_ddp(tmp_path, "torchrun", ["--perturbation", "stochastic"], name="s.pt")
    none = run_ddp(tmp_path, "torchrun", ["--perturbation", "none"], name="n.pt")
    assert rel(stochastic[0]["workers"][0]["params"], none[0]["workers"][0]["params"]) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_ddp_without_the_hook_is_refused_at_the_first_step(tmp_path, launcher):
    proc = launch([*two_ranks(launcher), str(tmp_path / "x.pt"), "--engine", "ddp", "--no-hook", "--steps", "3"], ok=False)
    assert proc.returncode != 0
    assert "needs each rank's local gradient" in proc.stderr
    assert "extrap.register_ddp(ddp_model, optimizer)" in proc.stderr and "comm=" in proc.stderr


# -- in one process: a group of one rank over a file store ------------------------------------------

@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def small_ddp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return nn.parallel.DistributedDataParallel(model)


def test_register_ddp_turns_off_the_buffer_sync_and_says_so(group):
    ddp = small_ddp()
    opt = ExtrapolatedSGD(ddp.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="own BatchNorm statistics"):
        comm = register_ddp(ddp, opt)
    assert not ddp.will_sync_module_buffers()
    assert opt.comm is comm and comm.world_size == 1
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(3):  # trains as usual in a group of one
        opt.zero_grad()
        opt.perturb()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()


def test_register_ddp_checks_what_it_is_given(group):
    ddp = small_ddp()
    with pytest.raises(TypeError, match="^ddp_model:"):
        register_ddp(ddp.module, ExtrapolatedSGD(ddp.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="^optimizer:"):
        register_ddp(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="^optimizer: it already has comm"):
        register_ddp(ddp, ExtrapolatedSGD(ddp.parameters(), lr=0.1, comm=LocalComm()))
    with pytest.raises(TypeError, match="^optimizer:"):
        register_ddp(ddp, PostLocalSGD(ExtrapolatedSGD(ddp.parameters(), lr=0.1, comm=LocalComm()), 2))
    opt = ExtrapolatedSGD(ddp.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comm = register_ddp(ddp, opt)
    post = PostLocalSGD(opt, switch_step=2, local_steps=2)  # wrapped after: the hook follows its phase
    assert comm.local_phase() is False
    post.t = 2
    assert comm.local_phase() is True


def test_hvd_distributed_optimizer_around_an_extrap_optimizer_is_refused():
    """horovod.torch.DistributedOptimizer subclasses the optimizer's class with its own methods;
    the subclass is refused as it is made (Horovod itself is not needed to show it)."""
    with pytest.raises(TypeError, match="HorovodComm"):
        type("ExtrapolatedSGD", (ExtrapolatedSGD,), {"_allreduce_grad_async": lambda self, p: None})


@pytest.mark.slow
def test_the_processes_engine_on_ddp_equals_the_virtual_engine(tmp_path):
    """ProcessEngine(ddp=True): the suite's runs on the users' DDP path, one optimizer average per step."""
    args = ["--dtype", "float64", "--steps", str(STEPS)]
    virtual = run_virtual(tmp_path, args[:2])
    out = tmp_path / "engine.pt"
    launch([*TORCHRUN, RUN, str(out), "--engine", "processes", "--processes-ddp", *args])
    got = ranks(out)
    for rank, record in enumerate(got):
        assert rel(record["workers"][rank]["params"], virtual[rank]["params"]) <= 1e-6
    assert got[0]["calls"] == {"gradients": STEPS}


def test_horovods_own_distributed_optimizer_is_refused():
    """The real hvd.DistributedOptimizer, where Horovod is installed (CI builds it)."""
    hvd = pytest.importorskip("horovod.torch", reason="Horovod is not installed: `make install-horovod`")
    hvd.init()
    model = nn.Linear(4, 2)
    with pytest.raises(TypeError, match="HorovodComm"):
        hvd.DistributedOptimizer(ExtrapolatedSGD(model.parameters(), lr=0.1),
                                 named_parameters=model.named_parameters())


def test_the_suites_per_worker_clipping_is_refused_on_ddp():
    """clip_norm clips each worker's gradient before averaging; DDP averages during backward, so
    the processes engine with ddp=True refuses it rather than clip the average."""
    from extrap.train import TrainConfig, setup

    class DDPEngine:  # what setup() reads first of ProcessEngine(ddp=True)
        use_ddp, world_size = True, 2

    with pytest.raises(ValueError, match="^clip_norm:"):
        setup(TrainConfig(perturbation="extrap", local_batch=8, epochs=1, clip_norm=0.25), DDPEngine(),
              nn.Linear(2, 2), None, say=lambda _: None)
