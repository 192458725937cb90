"""A short extrap-SGD run on digits under any engine, launched by tests/test_engines.py:

    mpirun -np 2 python tests/engine_run.py OUT.pt
    torchrun --nproc_per_node 2 tests/engine_run.py OUT.pt
    python tests/engine_run.py OUT.pt --engine virtual --workers 2 [--loop]

Worker 0's parameters after ``--steps`` steps are saved to OUT.pt (rank 0 only).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from data import DigitsTask  # noqa: E402
from extrap import ExtrapolatedSGD  # noqa: E402
from extrap.engines import CountingComm, make_engine  # noqa: E402
from models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--perturbation", default="extrap")
    ap.add_argument("--loop", action="store_true", help="virtual workers by the reference loop")
    ap.add_argument("--bucket-mb", type=float, default=None, help="bucketed all-reduce (processes)")
    args = ap.parse_args()

    torch.manual_seed(0)
    engine = make_engine(args.engine, args.workers, device="cpu", batched=not args.loop)
    if args.bucket_mb is not None:
        engine.comm.bucket_bytes = int(args.bucket_mb * 2**20)
    task = DigitsTask()
    workers = engine.prepare(build_model("digits_cnn"))
    comm = CountingComm(engine.comm)
    opt = ExtrapolatedSGD(workers.parameters(), lr=0.02, weight_decay=1e-4, lr_scale=2.0,
                          perturbation=args.perturbation, gamma=0.01, comm=comm)
    for t in range(args.steps):
        x, y = engine.stack([task.train_batch(w, 0, t, 16, engine.world_size) for w in engine.worker_ids])
        opt.zero_grad()
        opt.perturb()
        workers.forward_backward(task.loss, x, y)
        opt.step()
    if engine.is_main:
        params = {n: (p[0] if engine.kind == "virtual" else p).detach().clone()
                  for n, p in workers.named_parameters()}
        torch.save({"params": params, "calls": dict(comm.calls), "values": dict(comm.values),
                    "engine": engine.kind, "world_size": engine.world_size}, args.out)
    engine.close()


if __name__ == "__main__":
    main()
