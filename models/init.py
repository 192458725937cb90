"""Initialisation shared by the convolutional models."""

from torch import nn

__all__ = ["he_init_"]


def he_init_(model: nn.Module) -> nn.Module:
    """He et al. (2015): Kaiming-normal (fan_out, ReLU) convolutions; BatchNorm weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
