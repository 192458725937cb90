"""Image-classification tasks for ``extrap.train``: the data resident on the training device,
each worker's shard (``shard_indices``), on-device augmentation, and evaluation at x_t."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, Augment, step_seed
from .cifar import load_cifar
from .sharding import shard_indices

__all__ = ["ClassificationTask", "CifarTask"]


class ClassificationTask:
    """Shards, batches and evaluation over tensors already on ``device``.

    ``transform(images, worker, epoch, step)`` turns a raw training batch into model input
    (augmentation); ``prepare(images)`` does it for evaluation. Training loss is measured at x_t
    in eval mode on the first ``eval_train_samples`` training images (all by default).
    """

    metric = "test_top1"

    def __init__(self, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, seed: int = 0,
                 eval_train_samples: int | None = None, eval_batch: int = 1000):
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.seed = seed
        self.eval_train_samples = eval_train_samples
        self.eval_batch = eval_batch
        self._shard: tuple | None = None

    def transform(self, images: Tensor, worker: int, epoch: int, step: int) -> Tensor:
        return self.prepare(images)

    def prepare(self, images: Tensor) -> Tensor:
        return images

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)

    def steps_per_epoch(self, num_workers: int, local_batch: int) -> int:
        steps = (len(self.y_train) // num_workers) // local_batch
        if steps < 1:
            raise ValueError(f"local_batch: {local_batch} × {num_workers} workers exceeds the "
                             f"{len(self.y_train)} training images")
        return steps

    def train_batch(self, worker: int, epoch: int, step: int, local_batch: int, num_workers: int):
        """Worker ``worker``'s ``step``-th batch of ``epoch`` from its own shard."""
        key = (worker, epoch, num_workers)
        if self._shard is None or self._shard[0] != key:  # one shard per (worker, epoch)
            idx = shard_indices(len(self.y_train), num_workers, worker, epoch, self.seed)
            self._shard = (key, idx.to(self.y_train.device))
        idx = self._shard[1][step * local_batch:(step + 1) * local_batch]
        return self.transform(self.x_train[idx], worker, epoch, step), self.y_train[idx]

    def probe_batch(self, size: int = 256):
        return self.prepare(self.x_train[:size]), self.y_train[:size]

    @torch.no_grad()
    def _loss_and_top1(self, module: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
        loss, correct = 0.0, 0
        for i in range(0, len(y), self.eval_batch):
            out = module(self.prepare(x[i:i + self.eval_batch]))
            loss += F.cross_entropy(out, y[i:i + self.eval_batch], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + self.eval_batch]).sum().item()
        return loss / len(y), 100.0 * correct / len(y)

    def evaluate(self, module: nn.Module) -> dict:
        """Training loss (at x_t, eval mode, no augmentation) and test top-1 (%)."""
        was_training = module.training
        module.eval()
        n = self.eval_train_samples or len(self.y_train)
        train_loss, _ = self._loss_and_top1(module, self.x_train[:n], self.y_train[:n])
        _, top1 = self._loss_and_top1(module, self.x_test, self.y_test)
        module.train(was_training)
        return {"train_loss": train_loss, "test_top1": top1}


class CifarTask(ClassificationTask):
    """CIFAR-10/100 from ``root`` (see ``data.cifar.load_cifar``): uint8 images resident on
    ``device``, random crop 32 (pad 4) + flip + normalisation on that device, seeded per
    (seed, worker, epoch, step) so processes, virtual workers and resumed runs see the same crops."""

    def __init__(self, root, name: str = "cifar10", device="cpu", seed: int = 0, download: bool = False,
                 eval_train_samples: int | None = 10_000):
        device = torch.device(device)
        x_tr, y_tr = load_cifar(root, name, "train", download=download)
        x_te, y_te = load_cifar(root, name, "test", download=download)
        super().__init__(x_tr.to(device), y_tr.to(device), x_te.to(device), y_te.to(device), seed=seed,
                         eval_train_samples=eval_train_samples)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        self.augment = Augment(mean, std)
        self.num_classes = 10 if name == "cifar10" else 100
        self._generator = torch.Generator(device=device)

    def transform(self, images, worker, epoch, step):
        self._generator.manual_seed(step_seed(self.seed, worker, epoch, step))
        return self.augment(images, self._generator)

    def prepare(self, images):
        return self.augment.normalize(images)
