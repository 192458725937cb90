"""extrap in the loops people write: with ``perturbation="none"`` it is torch's optimizer for any
loop (accumulation, clipping, GradScaler with and without ``unscale_``, skipped steps, a
scheduler); with a look-ahead the update uses the loop's transformed average and each rank
extrapolates with its own raw local gradient. In one process and under DDP with 2 Gloo ranks
(tests/loop_rule.py computes the numbers)."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import extrap
import loop_rule
from conftest import ROOT, launcher_env
from extrap.engines import init_distributed, world_info_from_env


@pytest.fixture(scope="module", params=["one process", "ddp"])
def measured(request, tmp_path_factory):
    """{check: number} in one process, or under torchrun with 2 ranks."""
    if request.param == "one process":
        return loop_rule.checks()
    out = tmp_path_factory.mktemp("loop_rule") / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "loop_rule.py"), str(out)]
    proc = subprocess.run(cmd, env=launcher_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def of(measured: dict, prefix: str) -> dict:
    found = {k: v for k, v in measured.items() if k.startswith(prefix)}
    assert found, prefix
    return found


def test_perturbation_none_is_torchs_optimizer_in_every_loop(measured):
    """SGD and Adam, each loop feature alone and all together: ≤ 1e-6 relative (NaN fails)."""
    for check, value in of(measured, "none_vs_torch/").items():
        assert value <= 1e-6, (check, value)
    assert len(of(measured, "none_vs_torch/")) == 2 * len(loop_rule.LOOPS)


def test_extrap_clips_the_mean_and_extrapolates_with_the_raw_local_gradient(measured):
    """Against extrap-SGD written out (accumulation over 2 micro-batches, clipping by norm and by
    value of the averaged gradient)."""
    for check, value in of(measured, "extrap_vs_hand/").items():
        assert value <= 1e-6, (check, value)


def test_a_loss_scale_changes_nothing(measured):
    """GradScaler at 2^8, with step() unscaling and with the loop's own unscale_ and clipping,
    against the same loop unscaled; stochastic's kept deviation too."""
    for check, value in {**of(measured, "scaled_vs_unscaled/"), **of(measured, "stochastic_scaled")}.items():
        assert value <= 1e-4, (check, value)


def test_a_skipped_step_leaves_x_and_the_local_gradient_as_they_were(measured):
    assert of(measured, "skipped/") == {"skipped/x_unchanged": True, "skipped/local_unchanged": True,
                                        "skipped/finite": True}


def test_attach_perturbs_as_the_hand_written_loop(measured):
    """extrap.attach (perturb() on the first training forward, once per step over 2 micro-batches)
    gives the trajectory of perturb() by hand, with every loop feature on."""
    assert measured["attach_vs_by_hand"] == 0.0


# -- in one process -------------------------------------------------------------------------------

def amp_run(perturbation, scaled: bool, steps: int = 20):
    """float16 autocast on the CPU with GradScaler at its default scale (2^16): (x, skipped steps)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True) if perturbation is None
           else extrap.ExtrapolatedSGD(model.parameters(), lr=0.1, perturbation=perturbation, gamma=0.1))
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    skipped = 0
    for t in range(steps):
        g = torch.Generator().manual_seed(t)
        x, y = torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
        opt.zero_grad()
        if perturbation is not None:
            opt.perturb()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < before
    return [p.detach().clone() for p in model.parameters()], skipped


def test_float16_autocast_with_gradscaler_on_the_cpu():
    """The default (fused) path: the kept gradient is freed of the 2^16 scale, so no step is
    skipped and extrap follows its unscaled twin to float16's precision; "none" is torch's SGD."""
    ours, skipped = amp_run("none", True)
    torch_sgd, _ = amp_run(None, True)
    assert loop_rule.rel(ours, torch_sgd) <= 1e-6
    scaled, skipped = amp_run("extrap", True)
    unscaled, _ = amp_run("extrap", False)
    assert skipped == 0
    assert all(p.isfinite().all() for p in scaled)
    assert loop_rule.rel(scaled, unscaled) <= 1e-2  # float16 gradients (measured: 1.2e-3)


def test_unscale_without_the_scaler_is_refused_in_one_line():
    model = nn.Linear(4, 2)
    opt = extrap.ExtrapolatedSGD(model.parameters(), lr=0.1, gamma=0.1)
    scaler = torch.amp.GradScaler("cpu")
    opt.perturb()
    scaler.scale(model(torch.randn(3, 4)).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"optimizer\.grad_scaler = scaler") as error:
        scaler.step(opt)
    assert "\n" not in str(error.value)


def test_restore_puts_x_back_and_perturb_twice_names_it():
    model = nn.Linear(4, 2)
    opt = extrap.ExtrapolatedSGD(model.parameters(), lr=0.1, gamma=0.1)
    for _ in range(2):  # a first step gives a local gradient to extrapolate with
        opt.zero_grad()
        opt.perturb()
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    x_t = [p.detach().clone() for p in model.parameters()]
    opt.perturb()
    assert opt.perturbed and not all(torch.equal(a, b) for a, b in zip(x_t, model.parameters()))
    with pytest.raises(RuntimeError, match=r"optimizer\.restore\(\)"):
        opt.perturb()
    opt.restore()
    assert not opt.perturbed and all(torch.equal(a, b) for a, b in zip(x_t, model.parameters()))
    opt.restore()  # a no-op when not perturbed
    opt.perturb()  # and training goes on


class Wrapper:
    """A framework's optimizer wrapper, as Accelerate's: the optimizer and the loop's scaler."""

    def __init__(self, optimizer, scaler):
        self.optimizer, self.scaler = optimizer, scaler


def test_attach_perturbs_once_per_step_in_training_forwards_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = extrap.ExtrapolatedSGD(model.parameters(), lr=0.1, gamma=0.1)
    scaler = torch.amp.GradScaler("cpu")
    attached = extrap.attach(model, Wrapper(opt, scaler))
    assert attached.optimizer is opt and opt.grad_scaler is scaler and attached.comm is None
    x = torch.randn(5, 4)
    model.eval()
    model(x)
    model.train()
    with torch.no_grad():
        model(x)
    assert not opt.perturbed  # neither eval mode nor no_grad perturbs
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        opt.step()
    for _ in range(3):
        opt.zero_grad()
        for _ in range(2):  # micro-batches: the first forward perturbs, the second finds x̃
            model(x).sum().backward()
            assert opt.perturbed
        opt.step()
        assert not opt.perturbed
    attached.remove()
    model(x)
    assert not opt.perturbed


def test_attach_refuses_what_it_cannot_do():
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"perturb\(closure\)"):
        extrap.attach(model, extrap.ExtrapolatedSGD(model.parameters(), lr=0.1, perturbation="sam"))
    with pytest.raises(ValueError, match="^model: none of its modules"):
        extrap.attach(nn.Linear(4, 2), extrap.ExtrapolatedSGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="^optimizer:"):
        extrap.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))


# -- Slurm ------------------------------------------------------------------------------------------

def test_ranks_started_by_srun_are_recognised():
    info = world_info_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
                                "SLURM_NTASKS_PER_NODE": "1(x2)"})
    assert (info.rank, info.world_size, info.local_rank, info.local_size, info.launcher) == (1, 2, 0, 1, "slurm")


def test_srun_without_master_addr_is_one_line_naming_it(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE",
                 "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(RuntimeError) as error:
        init_distributed()
    message = str(error.value)
    assert "\n" not in message and "MASTER_ADDR" in message and "scontrol show hostnames" in message


@pytest.mark.slow
def test_the_ddp_example_says_the_missing_master_addr_in_one_line():
    env = {k: v for k, v in launcher_env().items() if k not in ("MASTER_ADDR", "RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "ddp_train.py")],
                          env={**env, "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "MASTER_ADDR" in lines[0], proc.stderr
