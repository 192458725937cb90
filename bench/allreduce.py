"""3. Gradient all-reduce calls and bytes per step, against DDP's on the same model: ResNet-20 on
2 processes (Gloo, CPU).

    torchrun --standalone --nproc-per-node 2 -m bench.allreduce [--tiny] [--out FILE.json]
    mpirun -np 2 python -m bench.allreduce ...        (any launcher extrap's engines read)

Counts, not times: the processes engine's communicator wrapped in ``extrap.engines.CountingComm``
(mini-batch SGD and extrap-SGD), extrap-SGD inside a ``DistributedDataParallel`` with
``extrap.register_ddp`` (its hook counts buckets), and plain DDP with a counting comm hook. The
DDP counts are taken after two warm-up steps (DDP rebuilds its buckets after the first).

Healthy, and exact at any size: extrap-SGD and SGD 1 call of 1,078,888 B (269,722 float32) per
step; DDP the same bytes in 2 calls (its 1 MiB first bucket), and so extrap-SGD on DDP. More
bytes than DDP's would mean extrap-SGD communicates more than mini-batch SGD. About 10 s.
"""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from bench.common import SGD_KW, arguments, finish, images, train_step
from extrap import ExtrapolatedSGD, register_ddp
from extrap.engines import CountingComm, ModuleWorkers, make_engine
from extrap.engines.ddp import ddp_keeping_buffers
from models import build_model

SIZES = {"full": dict(batch=64, warmup=2, steps=5), "tiny": dict(batch=4, warmup=2, steps=1)}
PROCESSES = 2


def _per_step(count: dict, steps: int) -> dict:
    return {k: v / steps for k, v in count.items()}


def measure(sz: dict) -> dict | None:
    """Run by every rank; rank 0 returns the counts per step, the others None."""
    engine = make_engine("processes", device="cpu")
    device = engine.device
    x, y = images(sz["batch"], device, seed=1 + engine.rank)
    steps, warmup = sz["steps"], sz["warmup"]
    torch.manual_seed(0)
    workers = engine.prepare(build_model("resnet20"))
    out = {}
    for name, kind in (("sgd", "none"), ("extrap-sgd", "extrap")):
        comm = CountingComm(engine.comm)
        step = train_step(workers, ExtrapolatedSGD(workers.parameters(), lr=0.01, perturbation=kind, comm=comm,
                                                   **SGD_KW), x, y)
        for _ in range(steps):
            step()
        out[name] = _per_step({"calls": comm.calls["gradients"], "bytes": comm.bytes["gradients"]}, steps)

    # extrap-SGD in a user's DistributedDataParallel, registered with extrap.register_ddp
    torch.manual_seed(0)
    model = build_model("resnet20").to(device)
    ddp = ddp_keeping_buffers(model)
    opt = ExtrapolatedSGD(model.parameters(), lr=0.01, perturbation="extrap", **SGD_KW)
    hooked = register_ddp(ddp, opt)
    step = train_step(ModuleWorkers(model, ddp), opt, x, y)
    for _ in range(warmup):
        step()
    calls, nbytes = hooked.hook_calls, hooked.hook_bytes
    for _ in range(steps):
        step()
    out["extrap-sgd-ddp"] = _per_step({"calls": hooked.hook_calls - calls, "bytes": hooked.hook_bytes - nbytes}, steps)

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
    for i in range(warmup + steps):
        if i == warmup:
            counter.update(calls=0, bytes=0)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
    out["ddp"] = _per_step(counter, steps)
    is_main, world = engine.is_main, engine.world_size
    # the DDP models' reducers hold the process group: let them go, and let every rank get here,
    # before the group is shut down (a rank that tore down early aborted once in a test)
    del workers, model, ddp, opt, hooked, step
    gc.collect()
    engine.barrier()
    engine.close()
    if not is_main:
        return None
    return {"what": f"gradient all-reduce per step, ResNet-20, {world} processes", **out,
            "target": "bytes equal to DDP's, calls no more than DDP's"}


def row(r: dict) -> str:
    ours, ddp, hooked = r["extrap-sgd"], r["ddp"], r["extrap-sgd-ddp"]
    return (f"| 3 | {r['what']} | extrap-SGD {ours['calls']:g} call, {ours['bytes']:,.0f} B; "
            f"DDP {ddp['calls']:g} calls, {ddp['bytes']:,.0f} B "
            f"({'bytes equal' if ours['bytes'] == ddp['bytes'] else 'bytes differ'}); "
            f"extrap-SGD on DDP + register_ddp {hooked['calls']:g} calls, {hooked['bytes']:,.0f} B |")


def main(argv=None) -> None:
    args = arguments(__doc__, device=False).parse_args(argv)
    r = measure(SIZES["tiny" if args.tiny else "full"])
    if r is not None:
        finish(r, args.out, "all-reduce per step: " + "; ".join(
            f"{k} {r[k]['calls']:g} calls, {r[k]['bytes']:,.0f} B" for k in ("sgd", "extrap-sgd", "extrap-sgd-ddp", "ddp")))


if __name__ == "__main__":
    main()
