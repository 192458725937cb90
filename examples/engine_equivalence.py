"""One short extrap run on the digits, under any engine or a plain DistributedDataParallel: the
trajectories must agree (tests/test_engines.py and tests/test_ddp.py compare them).

    mpirun -np 2 python examples/engine_equivalence.py OUT.pt                 # the processes engine
    torchrun --standalone --nproc_per_node 2 examples/engine_equivalence.py OUT.pt
    torchrun --standalone --nproc_per_node 2 examples/engine_equivalence.py OUT.pt --engine ddp
    horovodrun --gloo -np 2 -H localhost:2 python examples/engine_equivalence.py OUT.pt
    python examples/engine_equivalence.py OUT.pt --engine virtual --workers 2 [--loop]

``--engine ddp`` is a user's own training: ``DistributedDataParallel`` and ``extrap.register_ddp``. Each process writes what its workers hold after ``--steps`` steps
(x_t, BatchNorm buffers, the last x̃) to OUT.pt (rank 0) or OUT.pt.rank<r>. Run it from the
checkout (it uses the suite's ``data`` and ``models``).
"""

import argparse
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from data import DigitsTask  # noqa: E402
from extrap import REGISTRY, ExtrapolatedAdam, ExtrapolatedSGD, PostLocalSGD, ddp_buffer_kwargs, register_ddp  # noqa: E402
from extrap.engines import CountingComm, ModuleWorkers, init_distributed, make_engine  # noqa: E402
from models import build_model  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--engine", default="auto", help="auto, processes, horovod, virtual, single, or ddp")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--perturbation", default="extrap")
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    ap.add_argument("--post-local", type=int, default=0, metavar="H",
                    help="post-local SGD from the middle step on, averaging every H steps")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--loop", action="store_true", help="virtual workers by the reference loop")
    ap.add_argument("--bucket-mb", type=float, default=None, help="bucket size (processes, ddp)")
    ap.add_argument("--no-hook", action="store_true", help="ddp without register_ddp: must be refused")
    ap.add_argument("--processes-ddp", action="store_true", help="the processes engine on DDP with extrap's hook")
    return ap.parse_args()


def build(args):
    """(engine or None, rank, worker ids, workers, optimizer, ddp comm or None)."""
    torch.manual_seed(0)
    model = build_model("digits_cnn").to(getattr(torch, args.dtype))
    if args.engine == "ddp":
        info = init_distributed()
        kw = {} if args.bucket_mb is None else {"bucket_cap_mb": args.bucket_mb}
        ddp = torch.nn.parallel.DistributedDataParallel(model, **kw, **ddp_buffer_kwargs())  # own BatchNorm statistics
        engine, rank, ids, workers, comm = None, info.rank, (info.rank,), ModuleWorkers(model, ddp), None
    else:
        engine = make_engine(args.engine, args.workers, device="cpu", batched=not args.loop,
                             bucket_mb=args.bucket_mb, ddp=args.processes_ddp)
        rank, ids, workers, comm = engine.rank, engine.worker_ids, engine.prepare(model), engine.comm
    params = workers.parameters()
    if args.optimizer == "adam":
        opt = ExtrapolatedAdam(params, lr=1e-3, perturbation=args.perturbation, gamma=0.01, comm=comm, lr_scale=2.0)
    else:
        opt = ExtrapolatedSGD(params, lr=0.02, weight_decay=1e-4, lr_scale=2.0,
                              perturbation=args.perturbation, gamma=0.01, comm=comm)
    ddp_comm = None
    if args.engine == "ddp" and not args.no_hook:
        ddp_comm = register_ddp(workers.forward, opt)
    elif engine is not None:
        engine.attach(opt)  # the processes engine's DDP hook
        opt.comm = CountingComm(opt.comm)  # counts the optimizer's all-reduces of the gradients
    if args.post_local:
        opt = PostLocalSGD(opt, switch_step=args.steps // 2, local_steps=args.post_local)
    return engine, rank, ids, workers, opt, ddp_comm


def main() -> None:
    args = parse_args()
    engine, rank, ids, workers, opt, ddp_comm = build(args)
    world = torch.distributed.get_world_size() if engine is None else engine.world_size
    task, dtype = DigitsTask(), getattr(torch, args.dtype)
    fresh = REGISTRY[args.perturbation].closure  # extragradient and SAM: u from a gradient at x_t
    late_grads = 0  # gradients that arrived after DDP's hook had already sent a bucket (overlap)
    if ddp_comm is not None:
        def count_late(p):
            nonlocal late_grads
            late_grads += ddp_comm.hook_calls > calls_before
        for p in workers.parameters():
            p.register_post_accumulate_grad_hook(count_late)
    x_tilde = None
    for t in range(args.steps):
        x, y = (task.train_batch(ids[0], 0, t, 16, world) if engine is None
                else engine.worker_batch(task.train_batches(ids, 0, t, 16, world)))
        x = x.to(dtype)

        def closure():
            opt.zero_grad()
            return workers.forward_backward(task.loss, x, y)

        opt.zero_grad()
        calls_before = ddp_comm.hook_calls if ddp_comm is not None else 0
        opt.perturb(closure if fresh else None)  # its closure's backward does not communicate
        x_tilde = {n: p.detach().clone() for n, p in workers.points().items()}  # each worker's x̃
        workers.forward_backward(task.loss, x, y)
        opt.step()
    one = lambda t, k: t[k] if engine is not None and engine.kind == "virtual" else t  # noqa: E731

    def worker(k):  # worker k's model and buffers, and its last x̃
        module = workers.eval_module(k)
        return {"params": {n: p.detach().clone() for n, p in module.named_parameters()},
                "buffers": {n: b.clone() for n, b in module.named_buffers()},
                "x_tilde": {n: one(p, k) for n, p in x_tilde.items()}}

    out = {"workers": {w: worker(k) for k, w in enumerate(ids)},
           "engine": args.engine if engine is None else engine.kind, "world_size": world,
           "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
           "late_grads": late_grads, "hook_calls": ddp_comm.hook_calls if ddp_comm is not None else 0}
    counting = opt.optimizer.comm if isinstance(opt, PostLocalSGD) else opt.comm
    if isinstance(counting, CountingComm):
        out.update(calls=dict(counting.calls), values=dict(counting.values))
    torch.save(out, args.out if rank == 0 else f"{args.out}.rank{rank}")
    if engine is not None:
        engine.close()
    elif torch.distributed.is_initialized():
        # the DDP model's reducer holds the process group: let it go, and let every rank get here,
        # before the group is shut down (a rank that tore down early aborted once in CI)
        del workers, opt, ddp_comm, counting
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
