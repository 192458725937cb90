"""scikit-learn's handwritten digits (1,797 8×8 images, 10 classes): the embedded default that
ships inside scikit-learn, so the demo and tests run offline."""

from __future__ import annotations

import torch

from .tasks import ClassificationTask

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


class DigitsTask(ClassificationTask):
    """Classification on digits for ``extrap.train``: the whole set on ``device``, no augmentation."""

    name = "digits"
    reads_data = False  # embedded in scikit-learn
    epoch_size = (1_437, "images")
    set_from_settings = frozenset({"device", "seed"})

    @classmethod
    def from_settings(cls, settings: dict, device) -> "DigitsTask":
        return cls(device=device, seed=settings["seed"], **settings.get("task_kwargs", {}))

    def __init__(self, device="cpu", seed: int = 0):
        x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
        device = torch.device(device)
        super().__init__(x_tr.to(device), y_tr.to(device), x_te.to(device), y_te.to(device), seed=seed)
        self.device = device
