"""ResNet-20 for CIFAR (He et al. 2016, §4.2), the network of Figures 1 and 4 and Tables 1–3.

Sizes, all from He et al. (the paper uses the standard network): a 3×3 stem of 16 channels, then
3 stages of n = 3 basic blocks (two 3×3 conv–BatchNorm layers each) with 16, 32 and 64 channels,
stride 2 at the start of stages 2 and 3, global average pooling and one linear layer — 6n + 2 = 20
weighted layers. Shortcuts are He et al.'s option A (identity; when the shape changes, subsample
by 2 and zero-pad the new channels), which adds no parameters: 269,722 parameters with a 10-class
head, the "0.27M" of He et al.'s Table 6 (1×1-conv shortcuts, option B, would give 272,474).

Initialisation (He et al. 2015, as the paper states): Kaiming normal with fan_out for the
convolutions, BatchNorm weight 1 and bias 0; the linear head keeps PyTorch's default.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .init import he_init_

__all__ = ["BasicBlock", "ResNet20"]


class BasicBlock(nn.Module):
    """Two 3×3 conv–BatchNorm layers around an option-A identity shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes  # channels the shortcut adds as zeros

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        # option A: parameter-free, so the count matches He et al.'s 0.27M
        x = x[..., ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 on 3×32×32 images; returns logits ``[B, num_classes]``."""

    def __init__(self, num_classes: int = 10, blocks_per_stage: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        he_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(out.mean(dim=(-2, -1)))
