"""VGG-11 for CIFAR (Simonyan & Zisserman 2014, configuration A), down-scaled: the second
network of Table 1.

Sizes. The layer configuration is VGG-11's — 3×3 convolutions with 64, M, 128, M, 256, 256, M,
512, 512, M, 512, 512, M channels (M: 2×2 max-pooling) — in the CIFAR form commonly used since
BatchNorm (each convolution followed by BatchNorm and ReLU; after five poolings a 32×32 input is
1×1, so the classifier is one linear layer on the last feature vector instead of ImageNet's three
4096-wide layers). The convolutions have no bias: BatchNorm's shift makes it redundant.

The paper "down-scaled the original VGG-11 by reducing the number of filters by the factor of …"
(for GPU memory); the factor itself was lost from our copy of the paper text. ``width`` multiplies
every channel count; the default **0.5 is chosen here**, not taken from the paper: it is the
smallest round reduction ("a factor of 2") and brings the network from 9.2 M to 2.3 M parameters
— still ~8× ResNet-20, so the two architectures of Table 1 stay distinct. Configs that need
another factor pass ``width=`` and say so.

Initialisation: Kaiming normal (fan_out) for the convolutions, BatchNorm weight 1 and bias 0,
and N(0, 0.01²) for the linear layer with zero bias (as torchvision's VGG).
"""

from __future__ import annotations

from torch import Tensor, nn

from .init import he_init_

__all__ = ["VGG11", "VGG11_CONFIG"]

VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11 with BatchNorm on 3×32×32 images, channels scaled by ``width``; returns logits."""

    def __init__(self, num_classes: int = 10, width: float = 0.5):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width: expected > 0, got {width}")
        layers, in_ch = [], 3
        for v in VGG11_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out_ch = max(1, round(v * width))
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                       nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)
        he_init_(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
