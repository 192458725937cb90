"""The paper's models, built by name: ``build_model(name, **kwargs)`` (docs/reproducing.md, "Models and datasets").

- ``resnet20``    ResNet-20 for CIFAR (``models/resnet.py``)
- ``vgg11``       VGG-11 with BatchNorm for CIFAR, channels scaled by ``width`` (``models/vgg.py``)
- ``lstm``        two-layer LSTM language model (``models/lstm.py``)
- ``transformer`` down-scaled Transformer encoder–decoder (``models/transformer.py``)
- ``digits_cnn``  the small CNN of the offline demo (``models/digits_cnn.py``)
"""

from __future__ import annotations

from torch import nn

from .digits_cnn import DigitsCNN
from .lstm import LSTMLanguageModel
from .resnet import ResNet20
from .transformer import Seq2SeqTransformer, greedy_decode, label_smoothed_loss
from .vgg import VGG11

__all__ = ["build_model", "MODELS", "DigitsCNN", "ResNet20", "VGG11", "LSTMLanguageModel",
           "Seq2SeqTransformer", "label_smoothed_loss", "greedy_decode"]

MODELS = {
    "resnet20": ResNet20,
    "vgg11": VGG11,
    "lstm": LSTMLanguageModel,
    "transformer": Seq2SeqTransformer,
    "digits_cnn": DigitsCNN,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name; unknown names raise ``ValueError`` listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {', '.join(sorted(MODELS))}, got {name!r}")
    return MODELS[name](**kwargs)
