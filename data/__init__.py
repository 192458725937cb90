"""Datasets, sharding and on-device augmentation for the paper's tasks. Every worker reads a
disjoint shard, reshuffled each epoch, identical under processes and virtual workers."""

from .digits import DigitsTask, load_digits_split
from .sharding import shard_indices

__all__ = ["DigitsTask", "load_digits_split", "shard_indices"]
