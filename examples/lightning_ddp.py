"""examples/ddp_train.py as a LightningModule: Lightning owns the loop, starts the 2 processes
(``DDPStrategy``, CPU, Gloo) and wraps the model in DDP; the four marked lines are extrap's.

    python examples/lightning_ddp.py [--perturbation extrap] [--clip-norm 1.0]

The same model, data shards and batch order as examples/ddp_train.py, so the printed losses match
``torchrun --standalone --nproc_per_node 2 examples/ddp_train.py`` with the same flags.
"""

import lightning as L
from lightning.pytorch.strategies import DDPStrategy
import torch
from torch import nn

import extrap  # [extrap]
from ddp_train import epoch_batches, parse_args, shard, small_cnn

WORKERS = 2


class EpochOrder(torch.utils.data.Sampler):
    """ddp_train.py's order of this rank's shard, batch after batch; Lightning sets the epoch."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size, self.epoch = n, batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.cat(epoch_batches(self.n, self.batch_size, self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n // self.batch_size * self.batch_size


class Classifier(L.LightningModule):
    def __init__(self, perturbation: str):
        super().__init__()
        self.net = small_cnn()
        self.perturbation = perturbation
        self.loss_sum = torch.zeros(())

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.loss_sum += loss.detach()
        return loss

    def on_train_epoch_end(self):
        total = self.trainer.strategy.reduce(self.loss_sum, reduce_op="mean")  # over the ranks
        if self.trainer.is_global_zero:
            steps = self.trainer.num_training_batches
            print(f"epoch {self.current_epoch + 1}: mean training loss {total.item() / steps:.4f}", flush=True)
        self.loss_sum = torch.zeros(())

    def configure_optimizers(self):
        world = self.trainer.world_size
        opt = extrap.ExtrapolatedSGD(self.parameters(), lr=0.01 * world, lr_scale=world,  # [extrap]
                                     perturbation=self.perturbation, weight_decay=1e-4)
        extrap.attach(self.trainer.strategy.model, opt)  # [extrap] perturb() on each step's forward; DDP's hook
        return opt

    def train_dataloader(self):
        x, y = shard(self.global_rank, self.trainer.world_size)
        data = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(data, sampler=EpochOrder(len(data), self.batch_size),
                                           batch_size=self.batch_size, drop_last=True)


def main():
    args = parse_args(__doc__.split("\n\n")[0])
    model = Classifier(args.perturbation)
    model.batch_size = args.batch_size
    strategy = DDPStrategy(**extrap.ddp_buffer_kwargs())  # [extrap] each rank keeps its own BatchNorm statistics
    trainer = L.Trainer(accelerator="cpu", devices=WORKERS, strategy=strategy, max_epochs=args.epochs,
                        gradient_clip_val=args.clip_norm, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)


if __name__ == "__main__":
    main()
