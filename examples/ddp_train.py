"""Your own DistributedDataParallel training, with extrap-SGD: the four marked lines are all that
change against the usual loop.

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py
    mpirun -np 2 python examples/ddp_train.py       # MASTER_ADDR/PORT: see below

Each rank trains on its own shard of a synthetic 10-class image task (no download) and computes
its gradient at its own extrapolated point; DDP averages the gradients in its buckets, during
backward, as usual.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import extrap  # [extrap]


def synthetic_images(n: int, seed: int = 0):
    """n noisy 3×16×16 images of 10 class templates."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return torch.randn(10, 3, 16, 16, generator=g)[y] + 3 * torch.randn(n, 3, 16, 16, generator=g), y


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--perturbation", default="extrap", help="one of extrap.PERTURBATIONS")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="per rank")
    args = ap.parse_args()

    # torchrun sets RANK/WORLD_SIZE/MASTER_*; under mpirun, map Open MPI's variables
    os.environ.setdefault("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    os.environ.setdefault("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if cuda else "cpu")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).to(device)
    model = DDP(model, device_ids=[device.index] if cuda else None)
    opt = extrap.ExtrapolatedSGD(model.parameters(), lr=0.01 * world, lr_scale=world,  # [extrap]
                                 perturbation=args.perturbation, weight_decay=1e-4)
    extrap.register_ddp(model, opt)  # [extrap] each rank keeps its local gradient

    x, y = synthetic_images(4096)
    x, y = x[rank::world].to(device), y[rank::world].to(device)  # this rank's shard
    steps = len(x) // args.batch_size
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).to(device)
        total = torch.zeros((), device=device)
        for i in range(steps):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            opt.zero_grad()
            opt.perturb()  # [extrap] to this rank's x̃ = x_t − γ g_{t-1}^k
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.detach()
        dist.all_reduce(total)
        if rank == 0:
            print(f"epoch {epoch + 1}: mean training loss {total.item() / (steps * world):.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
