"""examples/ddp_train.py under Hugging Face Accelerate: ``accelerator.prepare`` wraps the model in
DDP and the optimizer in its own wrapper; the four marked lines are extrap's.

    torchrun --standalone --nproc_per_node 2 examples/accelerate_ddp.py [--perturbation extrap] [--clip-norm 1.0]

The same model, data shards and batch order as examples/ddp_train.py, so the printed losses match
it run with the same flags. ``accelerator.clip_grad_norm_`` clips DDP's average, as without extrap.
"""

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn

import extrap  # [extrap]
from ddp_train import epoch_batches, parse_args, shard, small_cnn


def main():
    args = parse_args(__doc__.split("\n\n")[0])
    own_buffers = DistributedDataParallelKwargs(broadcast_buffers=False)  # [extrap] each rank's own BatchNorm statistics
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[own_buffers])
    rank, world = accelerator.process_index, accelerator.num_processes

    model = small_cnn()
    opt = extrap.ExtrapolatedSGD(model.parameters(), lr=0.01 * world, lr_scale=world,  # [extrap]
                                 perturbation=args.perturbation, weight_decay=1e-4)
    model, opt = accelerator.prepare(model, opt)
    extrap.attach(model, opt)  # [extrap] perturb() on each step's forward; DDP's hook

    x, y = (t.to(accelerator.device) for t in shard(rank, world))
    for epoch in range(args.epochs):
        batches = epoch_batches(len(x), args.batch_size, epoch)
        total = torch.zeros((), device=accelerator.device)
        for idx in batches:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            accelerator.backward(loss)
            if args.clip_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), args.clip_norm)
            opt.step()
            total += loss.detach()
        total = accelerator.reduce(total, reduction="sum")
        if accelerator.is_main_process:
            print(f"epoch {epoch + 1}: mean training loss {total.item() / (len(batches) * world):.4f}", flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    main()
