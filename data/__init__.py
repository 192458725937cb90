"""Datasets, sharding and on-device augmentation for the paper's tasks. Every worker reads a
disjoint shard, reshuffled each epoch, identical under processes and virtual workers."""

from .augment import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, Augment,
                      random_crop_flip, step_seed, worker_generator)
from .cifar import cifar_classes, load_cifar
from .digits import DigitsTask, load_digits_split
from .tasks import CifarTask, ClassificationTask, LanguageModelTask, TranslationTask
from .multi30k import bleu, bucket_batches, collate, load_multi30k, pad_batch, prepare_multi30k
from .sharding import shard_indices
from .wikitext import batchify, get_batch, load_wikitext, worker_stream

# the tasks a config may name (``task:``), each built from a run's settings (``from_settings``)
TASKS = {task.name: task for task in (CifarTask, LanguageModelTask, TranslationTask, DigitsTask)}

__all__ = ["TASKS", "DigitsTask", "load_digits_split", "shard_indices", "ClassificationTask", "CifarTask", "LanguageModelTask", "TranslationTask",
           "load_cifar", "cifar_classes",
           "Augment", "random_crop_flip", "step_seed", "worker_generator",
           "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
           "load_wikitext", "batchify", "get_batch", "worker_stream",
           "load_multi30k", "prepare_multi30k", "pad_batch", "collate",
           "bucket_batches", "bleu"]
