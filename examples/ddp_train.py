"""Your own DistributedDataParallel training, with extrap-SGD: the five marked lines are all that
change against the usual loop.

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py
    mpirun -np 2 python examples/ddp_train.py       # rank 0 shares its address (mpi4py)
    sbatch examples/slurm.sbatch                     # srun, two nodes

Each rank trains on its own shard of a synthetic 10-class image task (no download) and computes
its gradient at its own extrapolated point; DDP averages the gradients in its buckets, during
backward, as usual.
"""

import argparse
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import extrap  # [extrap]
from extrap.engines import init_distributed


def synthetic_images(n: int, seed: int = 0):
    """n noisy 3×16×16 images of 10 class templates."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return torch.randn(10, 3, 16, 16, generator=g)[y] + 3 * torch.randn(n, 3, 16, 16, generator=g), y


def small_cnn() -> nn.Module:
    """The examples' model, the same initial weights on every rank."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))


def shard(rank: int, world: int):
    """This rank's share of the 4,096 images: every world-th one, from the rank-th."""
    x, y = synthetic_images(4096)
    return x[rank::world], y[rank::world]


def epoch_batches(n: int, batch_size: int, epoch: int) -> list[torch.Tensor]:
    """The index batches of one epoch: a permutation seeded by the epoch, the last partial batch dropped."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n // batch_size)]


def parse_args(description: str):
    """The examples' common flags."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--perturbation", default="extrap", help="one of extrap.PERTURBATIONS")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="per rank")
    ap.add_argument("--clip-norm", type=float, default=None, help="clip the averaged gradient to this norm")
    return ap.parse_args()


def main():
    args = parse_args(__doc__.split("\n\n")[0])
    try:  # torchrun, mpirun or srun; one process without a launcher
        info = init_distributed()
    except (RuntimeError, ValueError) as e:
        sys.exit(f"ddp_train.py: {e}")
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method="tcp://127.0.0.1:29512", rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{info.local_rank % torch.cuda.device_count()}" if cuda else "cpu")

    model = DDP(small_cnn().to(device), device_ids=[device.index] if cuda else None,
                **extrap.ddp_buffer_kwargs())  # [extrap] each rank keeps its own BatchNorm statistics
    opt = extrap.ExtrapolatedSGD(model.parameters(), lr=0.01 * world, lr_scale=world,  # [extrap]
                                 perturbation=args.perturbation, weight_decay=1e-4)
    extrap.register_ddp(model, opt)  # [extrap] each rank keeps its local gradient

    x, y = (t.to(device) for t in shard(rank, world))
    for epoch in range(args.epochs):
        batches = epoch_batches(len(x), args.batch_size, epoch)
        total = torch.zeros((), device=device)
        for idx in batches:
            opt.zero_grad()
            opt.perturb()  # [extrap] to this rank's x̃ = x_t − γ g_{t-1}^k
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            if args.clip_norm is not None:  # acts on DDP's average, as without extrap
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
            opt.step()
            total += loss.detach()
        dist.all_reduce(total)
        if rank == 0:
            print(f"epoch {epoch + 1}: mean training loss {total.item() / (len(batches) * world):.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
