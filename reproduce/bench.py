"""``make bench``: extrap's costs measured side by side in one run, written to
``docs/bench.md`` and ``docs/bench.json``::

    python -m reproduce.bench [--out docs] [--tiny] [--device cpu|cuda] [--no-mpi]

1. a training step of extrap-SGD ÷ one of mini-batch SGD (ResNet-20, batch 128, one process);
2. the optimizer step alone ÷ ``torch.optim.SGD(foreach=True)`` (also against ``fused=True``);
3. all-reduce calls and bytes per step against DDP on the same model (2 processes, Gloo);
4. virtual workers: 16 ResNet-20 workers × batch 32, batched (vmap) ÷ the per-worker loop ÷
   one model at batch 512 (and which of the two the engine runs by default on this device);
5. extrap-SGD ÷ mini-batch SGD per step under ``mpirun -np 2`` (Gloo);
6. on a GPU: ResNet-20 at B = 4096 as 16 virtual workers, images/s and peak memory;
7. ``extrap.train.train`` itself on the CIFAR data path (stand-in images): 16 ResNet-20 workers
   with extrap-SGD and LARS, batched, by the per-worker loop, and as 16 processes sharing the
   device (mpirun, Gloo); per phase (data, perturb, forward+backward, step, evaluation,
   checkpoint), host reads per step, peak memory.

Timing: the variants of one measurement run in alternating rounds (A B, B A, ...) after a warm-up,
and each variant's time per step is the median over rounds, so a machine that slows down or
speeds up during the run biases none of them. ``--tiny`` runs every measurement at toy sizes:
CI uses it to check that the bench still runs (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from extrap import ExtrapolatedSGD, register_ddp
from extrap.engines import CountingComm, ModuleWorkers, batched_by_default, make_engine, world_info_from_env
from extrap.engines.ddp import ddp_keeping_buffers
from models import build_model

ROOT = Path(__file__).resolve().parent.parent

# sizes: (full, tiny)
SIZES = {
    "full": dict(batch=128, step_rounds=25, step_steps=1, opt_rounds=9, opt_steps=50, virtual_workers=16,
                 virtual_batch=32, virtual_rounds=3, virtual_steps=2, mpi_batch=64, mpi_rounds=25,
                 mpi_steps=1, gpu_workers=16, gpu_batch=256, gpu_steps=20, loop_workers=16, loop_batch=32,
                 loop_steps=6),
    "tiny": dict(batch=8, step_rounds=2, step_steps=1, opt_rounds=2, opt_steps=2, virtual_workers=2,
                 virtual_batch=4, virtual_rounds=1, virtual_steps=1, mpi_batch=4, mpi_rounds=2,
                 mpi_steps=1, gpu_workers=2, gpu_batch=8, gpu_steps=2, loop_workers=2, loop_batch=4,
                 loop_steps=2),
}
SGD_KW = dict(momentum=0.9, nesterov=True, weight_decay=1e-4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating(fns: dict[str, Callable[[], None]], rounds: int, steps: int, warmup: int,
                device: torch.device, barrier: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function in every round, the functions taking turns."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            if barrier:
                barrier()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def medians(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in rounds.items()}


def ratio(rounds: dict[str, list[float]], num: str, den: str) -> dict:
    """The ratio of the medians, and its range over the rounds (round i of each variant)."""
    per_round = [a / b for a, b in zip(rounds[num], rounds[den])]
    return {"ratio": statistics.median(rounds[num]) / statistics.median(rounds[den]),
            "round_min": min(per_round), "round_max": max(per_round)}


def _images(n: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    return x, y


def _worker_images(k: int, b: int, device):
    """k·b images, and the same as k workers' batches [k, b, ...]."""
    x, y = _images(k * b, device)
    return x, y, x.view(k, b, *x.shape[1:]), y.view(k, b)


def _train_step(workers, opt, x, y) -> Callable[[], None]:
    """One training step of ``workers`` (``engine.prepare``'s, or ``ModuleWorkers(model)``)."""
    def step():
        opt.zero_grad(set_to_none=True)
        opt.perturb()
        workers.forward_backward(F.cross_entropy, x, y)
        opt.step()
    return step


# -- 1. a training step -------------------------------------------------------------------------------

def bench_train_step(sz: dict, device) -> dict:
    """One model, three optimizers stepping it in turn: SGD, extrap-SGD, and SGD again (an A/A
    pair whose ratio shows the timing noise of this machine)."""
    x, y = _images(sz["batch"], device)
    torch.manual_seed(0)
    workers = ModuleWorkers(build_model("resnet20").to(device).train())
    fns = {name: _train_step(workers, ExtrapolatedSGD(workers.parameters(), lr=0.01, perturbation=kind, **SGD_KW),
                             x, y)
           for name, kind in (("sgd", "none"), ("extrap-sgd", "extrap"), ("sgd-again", "none"))}
    t = alternating(fns, sz["step_rounds"], sz["step_steps"], warmup=2, device=device)
    return {"what": f"ResNet-20 training step, batch {sz['batch']}, one process",
            "seconds": medians(t), **ratio(t, "extrap-sgd", "sgd"), "target": 1.03,
            "a_a": ratio(t, "sgd-again", "sgd")}


# -- 2. the optimizer step alone ----------------------------------------------------------------------

def bench_optimizer_step(sz: dict, device) -> dict:
    def fresh_params():
        torch.manual_seed(0)
        ps = [p.detach().clone().requires_grad_(True) for p in build_model("resnet20").to(device).parameters()]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-2
        return ps

    variants = {
        "torch-sgd-foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, foreach=True, **SGD_KW),
        "extrap-sgd": lambda ps: ExtrapolatedSGD(ps, lr=1e-3, perturbation="extrap", **SGD_KW),
        "extrap-none": lambda ps: ExtrapolatedSGD(ps, lr=1e-3, perturbation="none", **SGD_KW),
        # the update by foreach kernels instead of torch's fused one: what fusing gave
        "extrap-sgd-foreach": lambda ps: ExtrapolatedSGD(ps, lr=1e-3, perturbation="extrap", foreach=True, **SGD_KW),
    }
    try:  # the fused kernel exists on CPU from torch 2.4 on, on CUDA earlier
        torch.optim.SGD(fresh_params(), lr=1e-3, fused=True, **SGD_KW).step()
        variants["torch-sgd-fused"] = lambda ps: torch.optim.SGD(ps, lr=1e-3, fused=True, **SGD_KW)
    except (RuntimeError, TypeError):
        pass
    def step_of(opt):
        def step():
            if isinstance(opt, ExtrapolatedSGD):
                opt.perturb()
            opt.step()
        return step

    fns = {name: step_of(make(fresh_params())) for name, make in variants.items()}
    t = alternating(fns, sz["opt_rounds"], sz["opt_steps"], warmup=3, device=device)
    out = {"what": "optimizer step alone (perturb + step for extrap), ResNet-20's 269,722 parameters",
           "seconds": medians(t), **ratio(t, "extrap-sgd", "torch-sgd-foreach"), "target": 1.1}
    if "torch-sgd-fused" in t:
        out["ratio_vs_fused"] = ratio(t, "extrap-sgd", "torch-sgd-fused")["ratio"]
    return out


# -- 4. virtual workers -------------------------------------------------------------------------------

def _virtual_step(k: int, device, xs, ys, batched: bool = True) -> Callable[[], None]:
    """A training step of k virtual ResNet-20 workers, extrap-SGD."""
    torch.manual_seed(0)
    engine = make_engine("virtual", k, device=device, batched=batched)
    workers = engine.prepare(build_model("resnet20"))
    opt = ExtrapolatedSGD(workers.parameters(), lr=0.1, perturbation="extrap", comm=engine.comm, **SGD_KW)
    return _train_step(workers, opt, xs, ys)


def _state_mib(k: int, device, xs, ys, split: bool) -> float:
    """MiB of training state of k virtual ResNet-20 workers with extrap-SGD and LARS at its peak,
    after the workers' backward and before ``step()``: parameters, points, their gradients,
    BatchNorm buffers, the optimizer's state (the last step's local gradients included) and the
    saved x_t, as the engine holds them (one x_t while synchronous) or as K models (``split``)."""
    torch.manual_seed(0)
    engine = make_engine("virtual", k, device=device, batched=False)
    workers = engine.prepare(build_model("resnet20"))
    opt = ExtrapolatedSGD(workers.parameters(), lr=0.1, perturbation="extrap", comm=engine.comm, lars=True, **SGD_KW)
    if split:
        workers.split(opt)
    for step in range(3):  # two full steps, then the third one's backward
        opt.zero_grad(set_to_none=False)  # torch's zeroing keeps the gradient tensors
        opt.perturb()
        workers.forward_backward(F.cross_entropy, xs, ys)
        if step < 2:
            opt.step()
    tensors = [*workers.parameters(), *workers.points().values(), *workers.buffers.values(),
               *[t for s in opt.state.values() if isinstance(s, dict) for t in s.values() if torch.is_tensor(t)]]
    tensors += [t.grad for t in tensors if t.grad is not None]
    tensors += opt._x_t  # K models: the x_t that perturb() saved while the parameters are at x̃
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values()) / 2**20


def bench_virtual(sz: dict, device) -> dict:
    k, b = sz["virtual_workers"], sz["virtual_batch"]
    x, y, xs, ys = _worker_images(k, b, device)
    state = {"shared": _state_mib(k, device, xs, ys, split=False), "models": _state_mib(k, device, xs, ys, split=True)}
    fns = {name: _virtual_step(k, device, xs, ys, batched) for name, batched in (("batched", True), ("loop", False))}
    torch.manual_seed(0)
    single = ModuleWorkers(build_model("resnet20").to(device).train())
    fns["single-model"] = _train_step(single, ExtrapolatedSGD(single.parameters(), lr=0.1, perturbation="none",
                                                              **SGD_KW), x, y)
    t = medians(alternating(fns, sz["virtual_rounds"], sz["virtual_steps"], warmup=1, device=device))
    ips = {n: k * b / s for n, s in t.items()}
    return {"what": f"{k} virtual ResNet-20 workers × batch {b} vs one model at batch {k * b}",
            "seconds": t, "images_per_s": ips,
            "batched_vs_single": ips["batched"] / ips["single-model"], "batched_vs_loop": ips["batched"] / ips["loop"],
            "engine_default": _default_path(device), "state_mib": state,
            "target": {"batched_vs_single": 0.7, "batched_vs_loop": 3.0, "on": "GPU"}}


def _default_path(device) -> str:
    return "batched" if batched_by_default(device) else "loop"


# -- 3 and 5: two processes under mpirun ----------------------------------------------------------------

def rank_job(sz: dict, out: Path) -> None:
    """Run by each rank of ``mpirun -np 2``: extrap-SGD vs SGD step times, and all-reduce calls
    and bytes per step against DDP's on the same model."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    engine = make_engine("processes", device="cpu")
    device = engine.device
    x, y = _images(sz["mpi_batch"], device, seed=1 + engine.rank)
    fns, comms = {}, {}
    torch.manual_seed(0)
    workers = engine.prepare(build_model("resnet20"))
    for name, kind in (("sgd", "none"), ("extrap-sgd", "extrap"), ("sgd-again", "none")):
        comms[name] = CountingComm(engine.comm)
        opt = ExtrapolatedSGD(workers.parameters(), lr=0.01, perturbation=kind, comm=comms[name], **SGD_KW)
        fns[name] = _train_step(workers, opt, x, y)
    # the same extrap-SGD in a DistributedDataParallel with extrap.register_ddp (a user's script,
    # or ProcessEngine(ddp=True)): DDP's buckets all-reduced by the hook while backward runs
    torch.manual_seed(0)
    model = build_model("resnet20").to(device)
    ddp = ddp_keeping_buffers(model)
    opt = ExtrapolatedSGD(model.parameters(), lr=0.01, perturbation="extrap", **SGD_KW)
    hooked = register_ddp(ddp, opt)
    fns["extrap-sgd-ddp"] = _train_step(ModuleWorkers(model, ddp), opt, x, y)
    t = alternating(fns, sz["mpi_rounds"], sz["mpi_steps"], warmup=2, device=device, barrier=engine.barrier)
    steps = 2 + sz["mpi_rounds"] * sz["mpi_steps"]
    ours = {n: {"calls": c.calls["gradients"] / steps, "bytes": c.bytes["gradients"] / steps}
            for n, c in comms.items()}
    ours["extrap-sgd-ddp"] = {"calls": hooked.hook_calls / steps, "bytes": hooked.hook_bytes / steps}

    counter = {"calls": 0, "bytes": 0}

    def counting_hook(_state, bucket):
        buf = bucket.buffer()
        counter["calls"] += 1
        counter["bytes"] += buf.numel() * buf.element_size()
        fut = dist.all_reduce(buf, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0].div_(engine.world_size))

    torch.manual_seed(0)
    ddp = DDP(build_model("resnet20").to(device))
    ddp.register_comm_hook(None, counting_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, **SGD_KW)
    ddp_steps = 3
    for i in range(2 + ddp_steps):  # DDP rebuilds its buckets after the first iteration
        if i == 2:
            counter.update(calls=0, bytes=0)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
    ddp_counts = {k: v / ddp_steps for k, v in counter.items()}
    if engine.is_main:
        out.write_text(json.dumps({
            "processes": {"what": f"ResNet-20 step, mpirun -np {engine.world_size} (Gloo), local batch {sz['mpi_batch']}",
                          "seconds": medians(t), **ratio(t, "extrap-sgd", "sgd"), "target": 1.05,
                          "a_a": ratio(t, "sgd-again", "sgd"), "ddp_vs_flat": ratio(t, "extrap-sgd-ddp", "extrap-sgd")},
            "allreduce": {"what": "gradient all-reduce per step, ResNet-20, 2 processes",
                          "extrap-sgd": ours["extrap-sgd"], "sgd": ours["sgd"], "ddp": ddp_counts,
                          "extrap-sgd-ddp": ours["extrap-sgd-ddp"],
                          "target": "bytes equal to DDP's, calls no more than DDP's"},
        }))
    engine.close()


NO_MPIRUN = {"skipped": "no mpirun found (make install puts one in .venv)"}


def _under_mpirun(ranks: int, cmd: list[str], **env: str) -> tuple[list[str], dict] | None:
    """``cmd`` as ``ranks`` processes under mpirun, and their environment (``env``, one CPU
    thread each unless OMP_NUM_THREADS says otherwise, the project on PYTHONPATH); None
    without mpirun."""
    from reproduce.demo import mpirun_command

    mpirun = mpirun_command()
    if mpirun is None:
        return None
    return [*mpirun, "-np", str(ranks), *cmd], {
        **os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **env}


def bench_mpi(sz: dict, tiny: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        launch = _under_mpirun(2, [sys.executable, "-m", "reproduce.bench", "--rank-job", str(out),
                                   *(["--tiny"] if tiny else [])])
        if launch is None:
            return NO_MPIRUN
        proc = subprocess.run(launch[0], env=launch[1], cwd=ROOT, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"mpirun -np 2 bench failed ({proc.returncode}): {' | '.join(tail)}")
        return json.loads(out.read_text())


# -- 6. GPU ------------------------------------------------------------------------------------------

def bench_gpu(sz: dict) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no GPU on this machine"}
    device = torch.device("cuda")
    k, b = sz["gpu_workers"], sz["gpu_batch"]
    _, _, xs, ys = _worker_images(k, b, device)
    step = _virtual_step(k, device, xs, ys)
    torch.cuda.reset_peak_memory_stats(device)
    t = medians(alternating({"virtual": step}, 3, sz["gpu_steps"], warmup=3, device=device))["virtual"]
    return {"what": f"ResNet-20, B = {k * b} as {k} virtual workers × {b}, float32, one GPU",
            "device": torch.cuda.get_device_name(device), "seconds": t, "images_per_s": k * b / t,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30, "target": 50_000}


# -- 7. the real training loop -------------------------------------------------------------------------

PHASES = ("data", "perturb", "forward+backward", "step", "evaluation", "checkpoint")


def _timed(fn: Callable, name: str, seconds: dict, device) -> Callable:
    """``fn`` that adds its time (device work included) to ``seconds[name]``."""
    def wrapper(*args, **kwargs):
        _sync(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync(device)
        seconds[name] += time.perf_counter() - t0
        return out
    return wrapper


def _peak_resident_bytes() -> int:
    """This process's peak resident set: Linux's VmHWM, which a new program starts afresh
    (``ru_maxrss`` carries the parent's peak across fork and exec), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _loop_run(sz: dict, device, batched: bool | None, count_syncs: bool = False) -> dict:
    """One epoch of ``train()`` (one evaluation, one checkpoint), each phase timed; K virtual
    workers (``batched`` or by the loop), or, with ``batched=None`` under a launcher of K
    ranks, this rank's worker of the processes engine (rank 0's phases)."""
    import extrap.train as training
    from data import CifarTask
    from extrap.host_syncs import HostSyncCounter

    k, b, steps = sz["loop_workers"], sz["loop_batch"], sz["loop_steps"]
    g = torch.Generator().manual_seed(0)
    n = k * b * steps
    images = (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g),
              torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (1000,), generator=g))
    task = CifarTask(None, device=device, tensors=images, eval_train_samples=1000)
    cfg = training.TrainConfig(perturbation="extrap", local_batch=b, epochs=1, lars=True, weight_decay=1e-4)
    engine = (make_engine("processes", k, device=device) if batched is None
              else make_engine("virtual", k, device=device, batched=batched))
    seconds = dict.fromkeys(PHASES, 0.0)
    task.train_batches = _timed(task.train_batches, "data", seconds, device)
    task.evaluate = _timed(task.evaluate, "evaluation", seconds, device)
    prepare, build = engine.prepare, training.build_optimizer

    def timed_prepare(*args):
        workers = prepare(*args)
        workers.forward_backward = _timed(workers.forward_backward, "forward+backward", seconds, device)
        return workers

    def timed_build(*args):
        opt = build(*args)
        opt.perturb = _timed(opt.perturb, "perturb", seconds, device)
        opt.step = _timed(opt.step, "step", seconds, device)
        return opt

    engine.prepare, saved = timed_prepare, training.save_checkpoint
    training.build_optimizer = timed_build
    training.save_checkpoint = _timed(saved, "checkpoint", seconds, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    syncs = HostSyncCounter() if count_syncs else contextlib.nullcontext()
    try:
        with tempfile.TemporaryDirectory() as tmp, syncs:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            training.train(cfg, engine, build_model("resnet20"), task, checkpoint=Path(tmp) / "bench")
            total = time.perf_counter() - t0
    finally:
        training.build_optimizer, training.save_checkpoint = build, saved
    train_s = sum(seconds[p] for p in PHASES[:4])
    out = {"seconds": seconds, "total_s": total, "images_per_s": n / train_s,
           "peak_memory_mib": (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                               else _peak_resident_bytes()) / 2**20}
    if count_syncs:
        out["host_reads"] = dict(syncs.counts)
    return out


def _loop_run_alone(sz: dict, device, batched: bool) -> dict:
    """``_loop_run`` in a process of its own, so that its peak memory (the process's peak
    resident set on a CPU) is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        job = json.dumps({"sz": sz, "device": str(device), "batched": batched, "out": str(out)})
        cmd, env = [sys.executable, "-m", "reproduce.bench", "--loop-job", job], None
        if batched is None:  # K processes sharing this device (Gloo: NCCL refuses two ranks on one GPU)
            launch = _under_mpirun(sz["loop_workers"], cmd, EXTRAP_BACKEND="gloo")
            if launch is None:
                return NO_MPIRUN
            cmd, env = launch
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the train-loop job failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def bench_train_loop(sz: dict, device) -> dict:
    k, b = sz["loop_workers"], sz["loop_batch"]
    runs = {name: _loop_run_alone(sz, device, batched)
            for name, batched in (("batched", True), ("loop", False), (f"{k} processes", None))}
    # the host reads of the same run, counted in a run of its own (counting slows every operation):
    # the whole epoch's, of which 0 inside the steps (tests/test_host_syncs.py checks per step)
    reads = _loop_run({**sz, "loop_steps": 2}, device, True, count_syncs=True)["host_reads"]
    return {"what": f"train(): {k} virtual ResNet-20 workers × batch {b}, extrap-SGD + LARS, "
                    f"{sz['loop_steps']} steps, CIFAR data path", "runs": runs, "host_reads_per_epoch": reads,
            "engine_default": _default_path(device),
            "batched_vs_loop": runs["batched"]["images_per_s"] / runs["loop"]["images_per_s"]}


# -- the report ---------------------------------------------------------------------------------------

def _fmt_ratio(m: dict) -> str:
    r, target = m["ratio"], m["target"]
    return (f"**{r:.3f}** (rounds {m['round_min']:.3f}–{m['round_max']:.3f}; target ≤ {target}, "
            f"{'met' if r <= target else 'not met'})")


def markdown(report: dict) -> str:
    r = report["results"]
    lines = ["# extrap benchmarks", "",
             f"Measured by `{report['command']}` on {report['machine']} (torch {report['torch']}, "
             f"{report['threads']} CPU threads, device {report['device']}), {report['date']}.",
             "Each ratio comes from variants timed in alternating rounds in this one run (medians).", "",
             "| # | measurement | result |", "|---|---|---|"]
    ts, op = r["train_step"], r["optimizer_step"]
    lines.append(f"| 1 | extrap-SGD ÷ mini-batch SGD, {ts['what']} | {_fmt_ratio(ts)}; "
                 f"{ts['seconds']['sgd'] * 1e3:.1f} vs {ts['seconds']['extrap-sgd'] * 1e3:.1f} ms; "
                 f"noise: SGD ÷ SGD {ts['a_a']['ratio']:.3f}; from the optimizer-step difference "
                 f"{report['implied_step_ratio']:.4f} |")
    fused = f"; ÷ fused SGD {op['ratio_vs_fused']:.2f}" if "ratio_vs_fused" in op else ""
    lines.append(f"| 2 | {op['what']} ÷ torch.optim.SGD(foreach=True) | {_fmt_ratio(op)}"
                 f"{fused}; " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in op["seconds"].items()) + " |")
    mpi = r["mpi"]
    if "skipped" in mpi:
        lines.append(f"| 3, 5 | mpirun -np 2 | not measured: {mpi['skipped']} |")
    else:
        ar = mpi["allreduce"]
        ours, ddp = ar["extrap-sgd"], ar["ddp"]
        hooked = ar["extrap-sgd-ddp"]
        lines.append(f"| 3 | {ar['what']} | extrap-SGD {ours['calls']:g} call, {ours['bytes']:,.0f} B; "
                     f"DDP {ddp['calls']:g} calls, {ddp['bytes']:,.0f} B "
                     f"({'bytes equal' if ours['bytes'] == ddp['bytes'] else 'bytes differ'}); "
                     f"extrap-SGD on DDP + register_ddp {hooked['calls']:.2f} calls, {hooked['bytes']:,.0f} B |")
        pr = mpi["processes"]
        lines.append(f"| 5 | extrap-SGD ÷ mini-batch SGD, {pr['what']} | {_fmt_ratio(pr)}; "
                     f"{pr['seconds']['sgd'] * 1e3:.1f} vs {pr['seconds']['extrap-sgd'] * 1e3:.1f} ms; "
                     f"noise: SGD ÷ SGD {pr['a_a']['ratio']:.3f}; extrap-SGD on DDP + register_ddp ÷ "
                     f"on the engine's one flat all-reduce {pr['ddp_vs_flat']['ratio']:.3f} "
                     f"({pr['seconds']['extrap-sgd-ddp'] * 1e3:.1f} ms) |")
    vw = r["virtual"]
    ips = vw["images_per_s"]
    lines.append(f"| 4 | {vw['what']} | batched {ips['batched']:,.0f} img/s, loop {ips['loop']:,.0f}, "
                 f"single model {ips['single-model']:,.0f}: batched ÷ single {vw['batched_vs_single']:.2f} "
                 f"(GPU target ≥ 0.7), batched ÷ loop {vw['batched_vs_loop']:.2f} (GPU target ≥ 3); "
                 f"the virtual engine's default on {report['device']}: {vw['engine_default']}; training state "
                 f"at its peak (extrap-SGD + LARS) {vw['state_mib']['shared']:.1f} MiB sharing x_t, "
                 f"{vw['state_mib']['models']:.1f} MiB as K models |")
    gpu = r["gpu"]
    if "skipped" in gpu:
        lines.append(f"| 6 | GPU throughput | not measured: {gpu['skipped']} |")
    else:
        lines.append(f"| 6 | {gpu['what']} on {gpu['device']} | {gpu['images_per_s']:,.0f} img/s (target ≥ 50,000), "
                     f"peak {gpu['peak_memory_gib']:.1f} GiB |")
    tl = r["train_loop"]
    for name, run in tl["runs"].items():
        if "skipped" in run:
            lines.append(f"| 7 | {tl['what']}, {name} | not measured: {run['skipped']} |")
            continue
        phases = ", ".join(f"{p} {run['seconds'][p]:.2f} s" for p in PHASES)
        lines.append(f"| 7 | {tl['what']}, {name} | {run['images_per_s']:,.0f} img/s; {phases}; "
                     f"peak memory {run['peak_memory_mib']:,.0f} MiB "
                     f"({'allocated on the GPU' if report['device'].startswith('cuda') else 'the process resident set'}) |")
    lines.append(f"| 7 | host reads in a 2-step epoch (evaluation and end of epoch; none inside a step) | "
                 + (", ".join(f"{k} {v}" for k, v in tl["host_reads_per_epoch"].items()) or "none")
                 + f"; batched ÷ loop {tl['batched_vs_loop']:.2f}; the virtual engine's default on "
                 f"{report['device']}: {tl['engine_default']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m reproduce.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs", help="folder for bench.md and bench.json (default: docs)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: checks that the bench runs")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--no-mpi", action="store_true", help="leave out the two-process measurements")
    ap.add_argument("--rank-job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--loop-job", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sz = SIZES["tiny" if args.tiny else "full"]
    if args.rank_job:
        rank_job(sz, Path(args.rank_job))
        return 0
    if args.loop_job:
        job = json.loads(args.loop_job)
        run = _loop_run(job["sz"], torch.device(job["device"]), job["batched"])
        if world_info_from_env().rank == 0:  # under mpirun, rank 0 reports
            Path(job["out"]).write_text(json.dumps(run))
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m reproduce.bench" + (" --tiny" if args.tiny else "")
    results = {}
    for key, fn in (("train_step", lambda: bench_train_step(sz, device)),
                    ("optimizer_step", lambda: bench_optimizer_step(sz, device)),
                    ("mpi", lambda: {"skipped": "--no-mpi"} if args.no_mpi else bench_mpi(sz, args.tiny)),
                    ("virtual", lambda: bench_virtual(sz, device)),
                    ("gpu", lambda: bench_gpu(sz)),
                    ("train_loop", lambda: bench_train_loop(sz, device))):
        t0 = time.perf_counter()
        results[key] = fn()
        print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
    # extrap-SGD's extra work is its optimizer step's extra time: the step ratio it implies,
    # finer than the timing noise of two whole training steps
    opt_s, step_s = results["optimizer_step"]["seconds"], results["train_step"]["seconds"]
    implied = 1 + (opt_s["extrap-sgd"] - opt_s["extrap-none"]) / step_s["sgd"]
    report = {"command": command, "tiny": args.tiny, "date": time.strftime("%Y-%m-%d"), "implied_step_ratio": implied,
              "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPUs",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
              "results": results}
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
