"""scikit-learn's handwritten digits (1,797 8×8 images, 10 classes): the embedded default that
ships inside scikit-learn, so the demo and tests run offline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sharding import shard_indices

__all__ = ["load_digits_split", "DigitsTask"]


def load_digits_split(test_fraction: float = 0.2, seed: int = 0):
    """(x_train, y_train, x_test, y_test): images [N, 1, 8, 8] standardised with the training
    mean and std, a stratified split fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    to_img = lambda a: torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8)  # noqa: E731
    x_tr, x_te = to_img(x_tr), to_img(x_te)
    mean, std = x_tr.mean(), x_tr.std()
    return ((x_tr - mean) / std, torch.tensor(y_tr), (x_te - mean) / std, torch.tensor(y_te))


class DigitsTask:
    """Classification on digits for ``extrap.train``: shards, batches and evaluation."""

    metric = "test_top1"

    def __init__(self, device="cpu", seed: int = 0):
        x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
        self.device = torch.device(device)
        self.x_train, self.y_train = x_tr.to(self.device), y_tr.to(self.device)
        self.x_test, self.y_test = x_te.to(self.device), y_te.to(self.device)
        self.seed = seed
        self._shards: dict = {}

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)

    def steps_per_epoch(self, num_workers: int, local_batch: int) -> int:
        steps = (len(self.y_train) // num_workers) // local_batch
        if steps < 1:
            raise ValueError(f"local_batch: {local_batch} × {num_workers} workers exceeds the "
                             f"{len(self.y_train)} training images")
        return steps

    def train_batch(self, worker: int, epoch: int, step: int, local_batch: int, num_workers: int):
        key = (worker, epoch, num_workers)
        if key not in self._shards:
            self._shards = {key: shard_indices(len(self.y_train), num_workers, worker, epoch, self.seed)}
        idx = self._shards[key][step * local_batch:(step + 1) * local_batch].to(self.device)
        return self.x_train[idx], self.y_train[idx]

    def probe_batch(self, size: int = 256):
        return self.x_train[:size], self.y_train[:size]

    @torch.no_grad()
    def evaluate(self, module: nn.Module) -> dict:
        """Full training-set loss and test top-1 (%) at x_t, in eval mode."""
        was_training = module.training
        module.eval()
        train_loss = F.cross_entropy(module(self.x_train), self.y_train).item()
        top1 = (module(self.x_test).argmax(1) == self.y_test).float().mean().item() * 100
        module.train(was_training)
        return {"train_loss": train_loss, "test_top1": top1}
