"""K workers of extrap-SGD on one device, as virtual workers: the paper's K-worker algorithm
without K processes. Each worker has its own batch, BatchNorm statistics, noise stream and past
gradient, while all of them share one x_t (one copy of the model, one optimizer state); their K
forwards and backwards run as one batched computation (``torch.func.vmap``) on a GPU, and one
worker after the other on a CPU, where that is faster.

    python examples/virtual_workers.py --workers 4

The same task and model as examples/ddp_train.py; ``--workers K`` here follows the trajectory
that K ranks of that script would.
"""

import argparse

import torch
from torch import nn

import extrap
from extrap.engines import VirtualEngine


def synthetic_images(n: int, seed: int = 0):
    """n noisy 3×16×16 images of 10 class templates (as in examples/ddp_train.py)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randn(10, 3, 16, 16, generator=g)[labels]
    return images + 3 * torch.randn(n, 3, 16, 16, generator=g), labels


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4, help="K")
    ap.add_argument("--perturbation", default="extrap", help="one of extrap.PERTURBATIONS")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="per worker")
    args = ap.parse_args()
    k, b = args.workers, args.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    engine = VirtualEngine(k, device=device)
    workers = engine.prepare(model)  # x_t once; the K workers' points and buffers as [K, ...] tensors
    opt = extrap.ExtrapolatedSGD(workers.parameters(), lr=0.01 * k, lr_scale=k,
                                 perturbation=args.perturbation, weight_decay=1e-4, comm=engine.comm)

    x, y = synthetic_images(4096)
    shards = [(x[w::k].to(device), y[w::k].to(device)) for w in range(k)]  # worker w's shard
    steps = len(shards[0][0]) // b
    for epoch in range(args.epochs):
        order = torch.randperm(len(shards[0][0]), generator=torch.Generator().manual_seed(epoch)).to(device)
        total = torch.zeros((), device=device)
        for i in range(steps):
            idx = order[i * b:(i + 1) * b]
            inputs = torch.stack([sx[idx] for sx, _ in shards])  # [K, b, ...]
            targets = torch.stack([sy[idx] for _, sy in shards])
            opt.zero_grad()
            opt.perturb()  # each worker to its own x̃
            total += workers.forward_backward(nn.functional.cross_entropy, inputs, targets).sum()
            opt.step()  # average over the K workers, then the update
        print(f"epoch {epoch + 1}: mean training loss {total.item() / (steps * k):.4f}", flush=True)


if __name__ == "__main__":
    main()
