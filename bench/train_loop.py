"""7. ``extrap.train.train`` itself, phase by phase: 16 ResNet-20 workers × batch 32 with
extrap-SGD and LARS, one epoch of 6 steps on the CIFAR data path (stand-in images), one
evaluation and one checkpoint. One run per process, so that its peak memory is its own:

    python -m bench.train_loop --engine batched [--tiny] [--device cpu|cuda] [--out FILE.json]
    python -m bench.train_loop --engine loop ...           (the virtual engine's per-worker loop)
    EXTRAP_BACKEND=gloo torchrun --standalone --nproc-per-node 16 -m bench.train_loop --engine processes ...
    python -m bench.train_loop --host-reads ...            (host reads in a 2-step epoch, batched)

The phases are the ``torch.profiler.record_function`` ranges that ``extrap.train`` places
(``extrap.prepare``, ``extrap.build_optimizer``, and per step ``extrap.data``, ``extrap.perturb``,
``extrap.forward_backward``, ``extrap.step``; then ``extrap.evaluation``, ``extrap.checkpoint``),
read from a ``torch.profiler.profile`` of the run: each one's total host time and number of
calls (``key_averages``), and on a GPU the device time of the work it launched. The profiler
records every operation, which adds a few microseconds to each. Images/s count the four step
phases; peak memory is the GPU's allocated peak, or on a CPU the process's resident set.
Under ``--engine processes`` (K ranks sharing this device, Gloo: NCCL refuses two ranks on one
GPU) rank 0's phases are reported. ``--host-reads`` counts reads of a tensor by the host over
the whole epoch (``bench.host_syncs``; the counter slows every operation, so it is a run of its
own): they belong to evaluation and the epoch's end, none inside a step
(``tests/test_host_syncs.py`` checks that per step).

Healthy, on 2 CPU cores: forward+backward is nearly all of a step (loop 3.9 s of 6 steps, data,
perturb and step 0.01–0.02 s each); the loop (771 img/s) beats vmap (399) on a CPU and is its
default; 16 processes on 2 cores 402 img/s, their step phase mostly the wait in the all-reduce;
peak resident set 1.3–1.9 GiB. Every phase's calls match the epoch: 1 prepare, 1
build_optimizer, 6 of each step phase, 1 evaluation, 1 checkpoint. About 1 min per run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.common import arguments, finish, peak_resident_bytes, pick_device
from bench.host_syncs import HostSyncCounter
from data import CifarTask
from extrap.engines import make_engine
from extrap.train import TrainConfig, train
from models import build_model

SIZES = {"full": dict(workers=16, batch=32, steps=6), "tiny": dict(workers=2, batch=4, steps=2)}
ENGINES = ("batched", "loop", "processes")
STEP_PHASES = ("data", "perturb", "forward_backward", "step")  # what images/s counts
HOST_READ_STEPS = 2


def stand_in_task(k: int, b: int, steps: int, device) -> CifarTask:
    """CIFAR's formats with random images: ``steps`` steps of ``k`` workers × ``b`` per epoch."""
    g = torch.Generator().manual_seed(0)
    n = k * b * steps
    images = (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
              torch.randint(0, 10, (n,), generator=g),
              torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=g),
              torch.randint(0, 10, (1000,), generator=g))
    return CifarTask(None, device=device, tensors=images, eval_train_samples=1000)


def _engine(kind: str, k: int, device):
    if kind == "processes":  # K is the launcher's number of ranks
        return make_engine("processes", device=device)
    return make_engine("virtual", k, device=device, batched=kind == "batched")


def phases(prof, device) -> dict:
    """{phase: {seconds, calls[, device_seconds]}} of the ``extrap.*`` ranges in ``prof``."""
    out = {}
    for e in prof.key_averages():
        if e.key.startswith("extrap.") and e.device_type == DeviceType.CPU:
            out[e.key.removeprefix("extrap.")] = {"seconds": e.cpu_time_total / 1e6, "calls": e.count}
            if device.type == "cuda":
                out[e.key.removeprefix("extrap.")]["device_seconds"] = e.device_time_total / 1e6
    return out


def run(sz: dict, device, kind: str) -> dict | None:
    """One epoch of ``train()`` under the profiler; None on ranks other than 0."""
    engine = _engine(kind, sz["workers"], device)
    k, b, steps = engine.world_size, sz["batch"], sz["steps"]
    task = stand_in_task(k, b, steps, engine.device)
    cfg = TrainConfig(perturbation="extrap", local_batch=b, epochs=1, lars=True, weight_decay=1e-4)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp, profile(activities=activities) as prof:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        train(cfg, engine, build_model("resnet20"), task, checkpoint=Path(tmp) / "bench")
        total = time.perf_counter() - t0
    is_main = engine.is_main
    engine.close()
    if not is_main:
        return None
    measured = phases(prof, engine.device)
    train_s = sum(measured[p]["seconds"] for p in STEP_PHASES)
    return {"what": f"train(): {k} ResNet-20 workers × batch {b}, extrap-SGD + LARS, {steps} steps, CIFAR data path",
            "engine": kind, "workers": k, "steps": steps, "device": str(engine.device), "phases": measured,
            "total_s": total, "images_per_s": k * b * steps / train_s,
            "peak_memory_mib": (torch.cuda.max_memory_allocated(engine.device) if engine.device.type == "cuda"
                                else peak_resident_bytes()) / 2**20,
            "peak_memory_of": "allocated on the GPU" if engine.device.type == "cuda" else "the process resident set"}


def host_reads(sz: dict, device) -> dict:
    """The host's reads of tensors over a 2-step epoch of the batched virtual workers."""
    k, b = sz["workers"], sz["batch"]
    engine = make_engine("virtual", k, device=device, batched=True)
    task = stand_in_task(k, b, HOST_READ_STEPS, device)
    cfg = TrainConfig(perturbation="extrap", local_batch=b, epochs=1, lars=True, weight_decay=1e-4)
    with tempfile.TemporaryDirectory() as tmp, HostSyncCounter() as syncs:
        torch.manual_seed(0)
        train(cfg, engine, build_model("resnet20"), task, checkpoint=Path(tmp) / "bench")
    return {"what": f"host reads in a {HOST_READ_STEPS}-step epoch (evaluation and end of epoch; none inside a step)",
            "steps": HOST_READ_STEPS, "host_reads": dict(syncs.counts)}


def rows(runs: dict) -> list[str]:
    """The report's lines: one per run in ``runs`` ({engine: result}), and the host reads."""
    lines = []
    for name, r in runs.items():
        if name == "host_reads":
            lines.append(f"| 7 | {r['what']} | " + (", ".join(f"{k} {v}" for k, v in r["host_reads"].items())
                                                    or "none") + " |")
        elif "skipped" in r:
            lines.append(f"| 7 | train(), {name} | not measured: {r['skipped']} |")
        else:
            label = f"{r['workers']} processes" if name == "processes" else f"virtual, {name}"
            measured = ", ".join(f"{p} {m['seconds']:.2f} s ×{m['calls']}" for p, m in r["phases"].items())
            lines.append(f"| 7 | {r['what']}, {label} | {r['images_per_s']:,.0f} img/s; {measured}; "
                         f"peak memory {r['peak_memory_mib']:,.0f} MiB ({r['peak_memory_of']}) |")
    return lines


def main(argv=None) -> None:
    ap = arguments(__doc__)
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--engine", choices=ENGINES, help="batched or loop: K virtual workers in this process; "
                     "processes: this rank's worker, under a launcher of K ranks")
    how.add_argument("--host-reads", action="store_true", help="count the host's reads in a 2-step epoch instead")
    args = ap.parse_args(argv)
    sz, device = SIZES["tiny" if args.tiny else "full"], pick_device(args.device)
    if args.host_reads:
        r = host_reads(sz, device)
        finish(r, args.out, f"host reads in a {HOST_READ_STEPS}-step epoch: {r['host_reads'] or 'none'}")
        return
    r = run(sz, device, args.engine)
    if r is not None:
        finish(r, args.out, f"train() {args.engine}: {r['images_per_s']:,.0f} img/s; " + ", ".join(
            f"{p} {m['seconds']:.2f} s ×{m['calls']}" for p, m in r["phases"].items()))


if __name__ == "__main__":
    main()
