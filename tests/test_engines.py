"""The engines give one trajectory: mpirun, torchrun, horovodrun and virtual workers (batched and
loop)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, find_mpirun, launcher_env
from extrap.engines import DistInfo, make_engine, world_info_from_env

RUN = str(ROOT / "examples" / "engine_equivalence.py")
STEPS = 20


def launch(cmd, timeout=240, path=None, **extra_env):
    env = {**(launcher_env() if path is None else {**launcher_env(), "PATH": path}), **extra_env}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def load(path: Path) -> dict:
    """The run's record, with worker 0's parameters as ``params``."""
    run = torch.load(path, weights_only=True)
    return {**run, "params": run["workers"][0]["params"]}


def max_rel(a: dict, b: dict) -> float:
    return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in b)


@pytest.fixture(scope="module")
def virtual_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("virtual") / "virtual.pt"
    launch([sys.executable, RUN, str(out), "--engine", "virtual", "--workers", "2", "--steps", str(STEPS)])
    return load(out)


@pytest.fixture(scope="module")
def mpirun_run(tmp_path_factory):
    exe = find_mpirun()
    if exe is None:
        pytest.skip("mpirun not found: `make install` installs Open MPI into .venv")
    out = tmp_path_factory.mktemp("mpi") / "mpi.pt"
    launch([exe, "-np", "2", sys.executable, RUN, str(out), "--steps", str(STEPS)])
    return load(out)


@pytest.mark.slow
def test_mpirun_matches_virtual_workers(mpirun_run, virtual_run):
    got = mpirun_run
    assert got["engine"] == "processes" and got["world_size"] == 2
    assert max_rel(got["params"], virtual_run["params"]) <= 1e-5
    # one all-reduce of the parameters' size per step, in both engines
    numel = sum(t.numel() for t in got["params"].values())
    assert got["calls"] == virtual_run["calls"] == {"gradients": STEPS}
    assert got["values"] == virtual_run["values"] == {"gradients": STEPS * numel}


def horovodrun() -> str:
    """horovodrun next to this Python (`make install-horovod`); CI sets EXTRAP_REQUIRE_HOROVOD=1
    so that a missing Horovod fails there instead of skipping."""
    exe = Path(sys.executable).parent / "horovodrun"
    found = exe.is_file() and subprocess.run([sys.executable, "-c", "import horovod.torch"],
                                             capture_output=True, timeout=120).returncode == 0
    if not found:
        message = "Horovod is not installed: `make install-horovod` builds it (about 3 min)"
        if os.environ.get("EXTRAP_REQUIRE_HOROVOD") == "1":
            pytest.fail(message + " [EXTRAP_REQUIRE_HOROVOD=1]")
        pytest.skip(message)
    return str(exe)


@pytest.mark.slow
def test_horovodrun_matches_torch_distributed(mpirun_run, tmp_path):
    out = tmp_path / "horovod.pt"
    env_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    launch([horovodrun(), "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, RUN, str(out),
            "--steps", str(STEPS)], path=env_path)
    got = load(out)
    assert got["engine"] == "horovod" and got["world_size"] == 2  # picked by --engine auto
    assert max_rel(got["params"], mpirun_run["params"]) <= 1e-5
    # one grouped all-reduce of the parameters' size per step, as torch.distributed's
    assert got["calls"] == mpirun_run["calls"] and got["values"] == mpirun_run["values"]


@pytest.mark.slow
@pytest.mark.parametrize("bucket_mb", [None, 0.01])  # one flat all-reduce / ~10 KB buckets
def test_torchrun_matches_virtual_workers(virtual_run, tmp_path, bucket_mb):
    out = tmp_path / "torchrun.pt"
    buckets = [] if bucket_mb is None else ["--bucket-mb", str(bucket_mb)]
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            RUN, str(out), "--steps", str(STEPS), *buckets], EXTRAP_BACKEND="gloo")  # the override's path
    got = load(out)
    assert got["engine"] == "processes" and got["world_size"] == 2 and got["backend"] == "gloo"
    assert max_rel(got["params"], virtual_run["params"]) <= 1e-5


def test_batched_virtual_path_equals_the_loop(virtual_run, tmp_path):
    out = tmp_path / "loop.pt"
    launch([sys.executable, RUN, str(out), "--engine", "virtual", "--workers", "2", "--loop",
            "--steps", str(STEPS)])
    assert max_rel(load(out)["params"], virtual_run["params"]) <= 1e-5


def test_virtual_workers_keep_their_own_batchnorm_statistics():
    from data import DigitsTask
    from models import build_model

    torch.manual_seed(0)
    engine = make_engine("virtual", 3)
    workers = engine.prepare(build_model("digits_cnn"))
    task = DigitsTask()
    x, y = engine.worker_batch(task.train_batches(engine.worker_ids, 0, 0, 16, 3))
    losses, _ = workers.forward_backward(task.loss, x, y)
    assert losses.shape == (3,)
    mean = workers.buffers["features.1.running_mean"]
    assert not torch.allclose(mean[0], mean[1]) and not torch.allclose(mean[1], mean[2])
    # worker k's gradient is the gradient of its own loss alone
    ref = build_model("digits_cnn")
    ref.load_state_dict({**{n: p[1].detach() for n, p in workers.points().items()},
                         **{n: b[1] for n, b in workers.buffers.items()}})
    ref.train()
    task.loss(ref(x[1]), y[1]).backward()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(workers.points()[n].grad[1], p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("env, expected", [
    ({}, DistInfo()),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
     DistInfo(1, 4, 1, 2, "torchrun")),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, DistInfo(3, 8, 1, 4, "openmpi")),
    ({"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"},
     DistInfo(2, 4, 0, 2, "mpich")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x4)"},
     DistInfo(5, 16, 1, 4, "slurm")),
    ({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1", "HOROVOD_LOCAL_SIZE": "2"},
     DistInfo(1, 2, 1, 2, "horovod")),
])
def test_world_info_from_each_launcher(env, expected):
    assert world_info_from_env(env) == expected


def test_make_engine_rejects_bad_choices():
    with pytest.raises(ValueError, match="^engine:"):
        make_engine("gpu-farm")
    with pytest.raises(ValueError, match="^workers:"):
        make_engine("single", workers=2)
    with pytest.raises(ValueError, match="^workers:"):
        make_engine("virtual", workers=0)
    assert make_engine("auto", workers=4).kind == "virtual"
    assert make_engine("auto").kind == "single"


def test_an_unknown_backend_is_refused_before_any_rendezvous(monkeypatch):
    from extrap.engines import init_distributed

    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "EXTRAP_BACKEND": "carrier-pigeon"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="^backend: expected one of gloo, nccl, mpi, got 'carrier-pigeon'"):
        init_distributed()


def test_buckets_group_consecutive_tensors_up_to_the_cap():
    from extrap.engines.comm import _flat_buckets

    ts = [torch.zeros(1000), torch.zeros(1000), torch.zeros(3000), torch.zeros(10, dtype=torch.float64)]
    sizes = lambda buckets: [[t.numel() for t in b] for b in buckets]  # noqa: E731
    assert sizes(_flat_buckets(ts, None)) == [[1000, 1000, 3000], [10]]  # one per dtype
    assert sizes(_flat_buckets(ts, 8000)) == [[1000, 1000], [3000], [10]]


EVAL_ONCE = '''
import json, sys, torch
from data import DigitsTask
from extrap.engines import make_engine
from extrap.train import TrainConfig, train
from models import build_model

engine = make_engine("processes")
task, calls = DigitsTask(seed=engine.rank), []
evaluate = task.evaluate
task.evaluate = lambda module: (calls.append(1), evaluate(module))[1]
torch.manual_seed(0)
record = train(TrainConfig(perturbation="extrap", local_batch=32, epochs=2), engine, build_model("digits_cnn"), task)
with open(f"{sys.argv[1]}.rank{engine.rank}.json", "w") as f:
    json.dump({"calls": len(calls), "curve": [{k: v for k, v in p.items() if k != "time_s"} for p in record["curve"]]}, f)
engine.close()
'''


@pytest.mark.slow
def test_rank_0_evaluates_for_every_rank(tmp_path):
    """Under the processes engine only rank 0 runs the task's evaluation; every rank's record
    holds rank 0's figures."""
    script = tmp_path / "eval_once.py"
    script.write_text(EVAL_ONCE)
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(script), str(tmp_path / "out")], PYTHONPATH=str(ROOT))
    ranks = [json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["calls"] for r in ranks] == [2, 0]  # two evaluations, both on rank 0
    assert ranks[0]["curve"] == ranks[1]["curve"] and len(ranks[0]["curve"]) == 2


@pytest.mark.parametrize("optimizer, perturbation, lars", [
    ("sgd", "extrap", True), ("sgd", "stochastic", False), ("sgd", "filter-gaussian", False),
    ("sgd", "sam", False), ("adam", "extrap", False)])
def test_virtual_workers_sharing_x_t_follow_k_full_models(optimizer, perturbation, lars):
    """While synchronous the virtual engine keeps x_t and the optimizer's state once and only the
    per-worker tensors [K, ...]; its trajectory is that of K full models (split from the start)."""
    from data import DigitsTask
    from extrap import ExtrapolatedAdam, ExtrapolatedSGD
    from models import build_model

    def run(split: bool):
        torch.manual_seed(0)
        engine, task, k = make_engine("virtual", 3), DigitsTask(), 3
        workers = engine.prepare(build_model("digits_cnn"))
        kw = dict(perturbation=perturbation, gamma=0.02, comm=engine.comm, weight_decay=1e-4)
        opt = (ExtrapolatedAdam(workers.parameters(), lr=1e-3, **kw) if optimizer == "adam"
               else ExtrapolatedSGD(workers.parameters(), lr=0.05, lars=lars, **kw))
        if split:
            workers.split(opt)
        for t in range(6):
            x, y = engine.worker_batch(task.train_batches(engine.worker_ids, 0, t, 16, k))

            def closure():
                opt.zero_grad()
                return workers.forward_backward(task.loss, x, y)

            opt.zero_grad()
            opt.perturb(closure if perturbation == "sam" else None)
            workers.forward_backward(task.loss, x, y)
            opt.step()
        return workers, opt

    shared, opt = run(split=False)
    full, _ = run(split=True)
    model = dict(build_model("digits_cnn").named_parameters())
    for n, p in shared.named_parameters():  # one x_t, one state; the local gradients per worker
        assert p.shape == model[n].shape
        state = opt.state[p]
        assert all(state[key].shape == p.shape for key in ("momentum_buffer", "exp_avg", "exp_avg_sq") if key in state)
        assert "local_grad" not in state or state["local_grad"].shape == (3, *p.shape)
    for (n, p), q in zip(shared.named_parameters(), full.parameters()):
        for k in range(3):
            torch.testing.assert_close(p, q[k], rtol=1e-6, atol=1e-7, msg=lambda m: f"{n} worker {k}: {m}")


@pytest.mark.parametrize("perturbation", ["extrap", "gaussian"])
def test_a_parameter_without_a_gradient_in_some_steps_keeps_its_point_at_x_t(perturbation):
    """A layer used only at some steps: its point is reset to x_t at every step, as K full
    models restore theirs, so sharing x_t changes nothing."""
    from extrap import ExtrapolatedSGD

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.use_b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1), True

        def forward(self, x):
            return self.a(x) + (self.b(x) if self.use_b else 0)

    def run(split: bool):
        torch.manual_seed(0)
        engine = make_engine("virtual", 2)
        workers = engine.prepare(TwoHeads())
        opt = ExtrapolatedSGD(workers.parameters(), lr=0.1, momentum=0.0, nesterov=False, perturbation=perturbation,
                              gamma=0.1, comm=engine.comm)
        if split:
            workers.split(opt)
        g = torch.Generator().manual_seed(1)
        for t in range(6):
            workers.template.use_b = t in (0, 5)  # b only at the first and the last step
            x, y = torch.randn(2, 8, 4, generator=g), torch.randn(2, 8, 1, generator=g)
            opt.zero_grad()
            opt.perturb()
            workers.forward_backward(lambda out, y: ((out - y) ** 2).mean(), x, y)
            opt.step()
            for n, q in workers.points().items():
                assert split or torch.equal(q, workers.params[n].expand_as(q)), (t, n)
        return workers

    shared, full = run(False), run(True)
    for (n, p), q in zip(shared.named_parameters(), full.parameters()):
        torch.testing.assert_close(p.expand_as(q), q, rtol=1e-6, atol=1e-7, msg=lambda m: f"{n}: {m}")


def test_one_engine_trains_one_model_at_a_time():
    """Runs one after another reuse an engine; a model whose engine prepared another since is
    refused instead of silently not training."""
    from data import DigitsTask
    from models import build_model

    engine, task = make_engine("virtual", 2), DigitsTask()
    first = engine.prepare(build_model("digits_cnn"))
    second = engine.prepare(build_model("digits_cnn"))
    x, y = engine.worker_batch(task.train_batches(engine.worker_ids, 0, 0, 8, 2))
    assert second.forward_backward(task.loss, x, y)[0].shape == (2,)
    with pytest.raises(RuntimeError, match="prepared another model since"):
        first.forward_backward(task.loss, x, y)
