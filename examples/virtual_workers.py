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
from ddp_train import epoch_batches, shard, small_cnn  # the same data and model
from extrap.engines import VirtualEngine


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4, help="K")
    ap.add_argument("--perturbation", default="extrap", help="one of extrap.PERTURBATIONS")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="per worker")
    args = ap.parse_args()
    k, b = args.workers, args.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    model = small_cnn()
    engine = VirtualEngine(k, device=device)
    workers = engine.prepare(model)  # x_t once; the K workers' points and buffers as [K, ...] tensors
    opt = extrap.ExtrapolatedSGD(workers.parameters(), lr=0.01 * k, lr_scale=k,
                                 perturbation=args.perturbation, weight_decay=1e-4, comm=engine.comm)

    shards = [tuple(t.to(device) for t in shard(w, k)) for w in range(k)]  # worker w's shard
    for epoch in range(args.epochs):
        batches = epoch_batches(len(shards[0][0]), b, epoch)
        total = torch.zeros((), device=device)
        for idx in batches:
            inputs = torch.stack([sx[idx] for sx, _ in shards])  # [K, b, ...]
            targets = torch.stack([sy[idx] for _, sy in shards])
            opt.zero_grad()
            opt.perturb()  # each worker to its own x̃
            losses, _ = workers.forward_backward(nn.functional.cross_entropy, inputs, targets)
            total += losses.sum()
            opt.step()  # average over the K workers, then the update
        print(f"epoch {epoch + 1}: mean training loss {total.item() / (len(batches) * k):.4f}", flush=True)


if __name__ == "__main__":
    main()
