"""5. A training step of extrap-SGD ÷ one of mini-batch SGD on 2 processes (Gloo, CPU): ResNet-20,
local batch 64, gradients averaged by the processes engine's one flat all-reduce.

    torchrun --standalone --nproc-per-node 2 -m bench.processes [--tiny] [--out FILE.json]
    mpirun -np 2 python -m bench.processes ...        (any launcher extrap's engines read)

Variants, in 25 alternating rounds behind a barrier (medians, rank 0's clock): SGD, extrap-SGD,
SGD again (the timing noise), and extrap-SGD inside a ``DistributedDataParallel`` with
``extrap.register_ddp`` (DDP's buckets all-reduced while backward runs).

Healthy: extrap-SGD ÷ SGD ≤ 1.05 (0.994 on 2 CPU cores, SGD ÷ SGD 1.012); extrap-SGD on DDP ÷ on
the flat all-reduce about 1 (1.000–1.058 over four runs on 2 CPU ranks: the overlap buys nothing
there, which is why the engine keeps the flat all-reduce by default). About 20 s.
"""

from __future__ import annotations

import torch

from bench.common import (SGD_KW, alternating, arguments, finish, fmt_ratio, images, medians, ratio,
                          train_step)
from extrap import ExtrapolatedSGD, register_ddp
from extrap.engines import ModuleWorkers, make_engine
from extrap.engines.ddp import ddp_keeping_buffers
from models import build_model

SIZES = {"full": dict(batch=64, rounds=25, steps=1), "tiny": dict(batch=4, rounds=2, steps=1)}
PROCESSES = 2
TARGET = 1.05


def measure(sz: dict) -> dict | None:
    """Run by every rank; rank 0 returns the result, the others None."""
    engine = make_engine("processes", device="cpu")
    device = engine.device
    x, y = images(sz["batch"], device, seed=1 + engine.rank)
    torch.manual_seed(0)
    workers = engine.prepare(build_model("resnet20"))
    fns = {name: train_step(workers, ExtrapolatedSGD(workers.parameters(), lr=0.01, perturbation=kind,
                                                     comm=engine.comm, **SGD_KW), x, y)
           for name, kind in (("sgd", "none"), ("extrap-sgd", "extrap"), ("sgd-again", "none"))}
    torch.manual_seed(0)
    model = build_model("resnet20").to(device)
    ddp = ddp_keeping_buffers(model)
    opt = ExtrapolatedSGD(model.parameters(), lr=0.01, perturbation="extrap", **SGD_KW)
    register_ddp(ddp, opt)
    fns["extrap-sgd-ddp"] = train_step(ModuleWorkers(model, ddp), opt, x, y)
    t = alternating(fns, sz["rounds"], sz["steps"], warmup=2, device=device, barrier=engine.barrier)
    is_main, world = engine.is_main, engine.world_size
    engine.close()
    if not is_main:
        return None
    return {"what": f"ResNet-20 step, {world} processes (Gloo), local batch {sz['batch']}",
            "seconds": medians(t), **ratio(t, "extrap-sgd", "sgd"), "target": TARGET,
            "a_a": ratio(t, "sgd-again", "sgd"), "ddp_vs_flat": ratio(t, "extrap-sgd-ddp", "extrap-sgd")}


def row(r: dict) -> str:
    return (f"| 5 | extrap-SGD ÷ mini-batch SGD, {r['what']} | {fmt_ratio(r)}; "
            f"{r['seconds']['sgd'] * 1e3:.1f} vs {r['seconds']['extrap-sgd'] * 1e3:.1f} ms; "
            f"noise: SGD ÷ SGD {r['a_a']['ratio']:.3f}; extrap-SGD on DDP + register_ddp ÷ "
            f"on the engine's one flat all-reduce {r['ddp_vs_flat']['ratio']:.3f} "
            f"({r['seconds']['extrap-sgd-ddp'] * 1e3:.1f} ms) |")


def main(argv=None) -> None:
    args = arguments(__doc__, device=False).parse_args(argv)
    r = measure(SIZES["tiny" if args.tiny else "full"])
    if r is not None:
        finish(r, args.out, f"processes: extrap-SGD ÷ SGD {r['ratio']:.3f} (target ≤ {TARGET}), SGD ÷ SGD "
                            f"{r['a_a']['ratio']:.3f}, on DDP ÷ flat {r['ddp_vs_flat']['ratio']:.3f}")


if __name__ == "__main__":
    main()
