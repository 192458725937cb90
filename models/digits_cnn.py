"""A small CNN for 8×8 digits: two 3×3 conv–BatchNorm–ReLU blocks, a pooling and a linear head.
BatchNorm makes it exercise what the paper's ResNets do: local statistics per worker."""

from __future__ import annotations

from torch import Tensor, nn

from .init import he_init_

__all__ = ["DigitsCNN"]


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * 16, num_classes)
        he_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))
