"""4. Virtual workers: 16 ResNet-20 workers × batch 32 in one process, batched (vmap) ÷ the
per-worker loop ÷ one model at batch 512; and the training state they hold at its peak.

    python -m bench.virtual_workers [--tiny] [--device cpu|cuda] [--out FILE.json]

Throughput: a training step of each (extrap-SGD), 3 alternating rounds of 2 steps, medians; and
which of the two paths the virtual engine runs by default on this device. Memory: the bytes
torch's allocator holds for 16 workers with extrap-SGD and LARS at the state's peak (after the
third step's backward, before its ``step()``), as a ``torch.profiler`` memory profile records
them (allocations minus frees while building the workers and optimizer and stepping), with the
workers sharing x_t (the engine's layout while synchronous) and as 16 models (``split``).

Healthy, on a GPU: batched ≥ 0.7 × the single model's images/s and ≥ 3 × the loop's. On a CPU
vmap's grouped convolutions run at half the speed of separate small ones, so the loop wins
there (2-core CPU: batched 327 img/s, loop 737, single model 411) and is the engine's default.
Shared x_t holds about half what 16 models do (53.6 vs 99.9 MiB: one x_t, optimizer state and
update instead of 16; of the 99.9, 16.5 MiB are the points, which the split workers still keep
referenced). About 2 min on 2 CPU cores.
"""

from __future__ import annotations

import gc

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bench.common import (SGD_KW, alternating, arguments, finish, medians, pick_device, train_step, virtual_step,
                          worker_images)
from extrap import ExtrapolatedSGD
from extrap.engines import ModuleWorkers, batched_by_default, make_engine
from models import build_model

SIZES = {"full": dict(workers=16, batch=32, rounds=3, steps=2), "tiny": dict(workers=4, batch=2, rounds=1, steps=1)}
TARGET = {"batched_vs_single": 0.7, "batched_vs_loop": 3.0, "on": "GPU"}


def state_mib(k: int, device, xs, ys, split: bool) -> float:
    """MiB held for k virtual ResNet-20 workers with extrap-SGD and LARS at the state's peak:
    parameters, points, their gradients, BatchNorm buffers, the optimizer's state and the x_t it
    saved, as the engine lays them out (``split``: as k models). Counted by the profiler's memory
    events: what was allocated and not freed from building the workers to the third backward."""
    held = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    gc.collect()
    with profile(activities=activities, profile_memory=True) as prof:
        torch.manual_seed(0)
        engine = make_engine("virtual", k, device=device, batched=False)
        workers = engine.prepare(build_model("resnet20"))
        opt = ExtrapolatedSGD(workers.parameters(), lr=0.1, perturbation="extrap", comm=engine.comm, lars=True,
                              **SGD_KW)
        if split:
            workers.split(opt)
        for step in range(3):  # two full steps, then the third one's backward
            opt.zero_grad(set_to_none=False)  # torch's zeroing keeps the gradient tensors
            opt.perturb()
            workers.forward_backward(F.cross_entropy, xs, ys)
            if step < 2:
                opt.step()
        held.append((workers, opt))  # alive as the profile ends
    net = sum(e.self_cpu_memory_usage + e.self_device_memory_usage for e in prof.key_averages())
    return net / 2**20


def measure(sz: dict, device) -> dict:
    k, b = sz["workers"], sz["batch"]
    x, y, xs, ys = worker_images(k, b, device)
    state = {"shared": state_mib(k, device, xs, ys, split=False), "models": state_mib(k, device, xs, ys, split=True)}
    fns = {name: virtual_step(k, device, xs, ys, batched) for name, batched in (("batched", True), ("loop", False))}
    torch.manual_seed(0)
    single = ModuleWorkers(build_model("resnet20").to(device).train())
    fns["single-model"] = train_step(single, ExtrapolatedSGD(single.parameters(), lr=0.1, perturbation="none",
                                                             **SGD_KW), x, y)
    t = medians(alternating(fns, sz["rounds"], sz["steps"], warmup=1, device=device))
    ips = {n: k * b / s for n, s in t.items()}
    return {"what": f"{k} virtual ResNet-20 workers × batch {b} vs one model at batch {k * b}",
            "workers": k, "seconds": t, "images_per_s": ips,
            "batched_vs_single": ips["batched"] / ips["single-model"], "batched_vs_loop": ips["batched"] / ips["loop"],
            "engine_default": "batched" if batched_by_default(device) else "loop", "device": str(device),
            "state_mib": state, "target": TARGET}


def row(r: dict) -> str:
    ips = r["images_per_s"]
    return (f"| 4 | {r['what']} | batched {ips['batched']:,.0f} img/s, loop {ips['loop']:,.0f}, "
            f"single model {ips['single-model']:,.0f}: batched ÷ single {r['batched_vs_single']:.2f} "
            f"(GPU target ≥ 0.7), batched ÷ loop {r['batched_vs_loop']:.2f} (GPU target ≥ 3); "
            f"the virtual engine's default on {r['device']}: {r['engine_default']}; training state "
            f"at its peak (extrap-SGD + LARS) {r['state_mib']['shared']:.1f} MiB sharing x_t, "
            f"{r['state_mib']['models']:.1f} MiB as K models |")


def main(argv=None) -> None:
    args = arguments(__doc__).parse_args(argv)
    r = measure(SIZES["tiny" if args.tiny else "full"], pick_device(args.device))
    finish(r, args.out, "virtual workers: " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in r["images_per_s"].items())
           + f"; state {r['state_mib']['shared']:.1f} MiB sharing x_t, {r['state_mib']['models']:.1f} as K models")


if __name__ == "__main__":
    main()
