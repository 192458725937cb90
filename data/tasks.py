"""The paper's tasks for ``extrap.train``: image classification (CIFAR, digits), language
modelling (WikiText-2) and translation (Multi30k) — each worker's shard, batches on the training
device, and evaluation at x_t."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extrap.batchnorm import reestimated_batch_norm
from extrap.train import TaskBase

from .augment import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, Augment, step_seed
from .cifar import load_cifar
from .multi30k import BOS, EOS, PAD, bleu, bucket_batches, pad_batch, prepare_multi30k
from .sharding import epoch_shards
from .wikitext import batchify, get_batch, load_wikitext, worker_stream

__all__ = ["ClassificationTask", "CifarTask", "LanguageModelTask", "TranslationTask"]


@contextmanager
def evaluating(module: nn.Module):
    """Eval mode and no gradients for the block; the module's mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def _steps_per_epoch(n: int, num_workers: int, local_batch: int, what: str) -> int:
    """Steps in an epoch of ``n`` samples shared by K workers at local batch b: ⌊⌊n/K⌋/b⌋ ≥ 1."""
    steps = (n // num_workers) // local_batch
    if steps < 1:
        raise ValueError(f"local_batch: {local_batch} × {num_workers} workers exceeds the {n} {what}")
    return steps


class ClassificationTask(TaskBase):
    """Shards, batches and evaluation over tensors already on ``device``.

    ``transform(images, workers, epoch, step)`` turns the raw training images of the workers
    ``workers`` (equal consecutive parts, one per worker) into model input (augmentation);
    ``prepare(images)`` does it for evaluation. Training loss is measured at x_t in eval mode on
    the first ``eval_train_samples`` training images (all by default).

    A step's batches need no host–device synchronisation: the epoch's shards go to the device
    once, and every worker's images are gathered and augmented in one pass.
    """

    metric = "test_top1"
    smoothness_probe = True
    eval_split = "test"  # the split the metric is measured on

    def __init__(self, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, seed: int = 0,
                 eval_train_samples: int | None = None, eval_batch: int = 1000):
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.seed = seed
        self.eval_train_samples = eval_train_samples
        self.eval_batch = eval_batch
        self._shards: tuple | None = None

    def transform(self, images: Tensor, workers: Sequence[int], epoch: int, step: int) -> Tensor:
        return self.prepare(images)

    def prepare(self, images: Tensor) -> Tensor:
        return images

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)

    def steps_per_epoch(self, num_workers: int, local_batch: int) -> int:
        return _steps_per_epoch(len(self.y_train), num_workers, local_batch, "training images")

    def train_batches(self, workers: Sequence[int], epoch: int, step: int, local_batch: int, num_workers: int):
        """The ``step``-th batches of ``epoch`` of the workers ``workers``, each from its own
        shard, stacked: ``([W, b, ...], [W, b])``."""
        key = (epoch, num_workers, tuple(workers))
        if self._shards is None or self._shards[0] != key:  # once per epoch, one copy to the device
            rows = epoch_shards(len(self.y_train), num_workers, epoch, self.seed)[list(workers)]
            self._shards = (key, rows.to(self.y_train.device, non_blocking=True))
        idx = self._shards[1][:, step * local_batch:(step + 1) * local_batch].reshape(-1)
        x = self.transform(self.x_train.index_select(0, idx), workers, epoch, step)
        return x.view(len(workers), local_batch, *x.shape[1:]), self.y_train.index_select(0, idx).view(len(workers), -1)


    def probe_batch(self, size: int = 256):
        return self.prepare(self.x_train[:size]), self.y_train[:size]

    def subset_loss(self, module: nn.Module, size: int = 512, reestimate_bn: bool = False,
                    bn_batch: int = 128) -> Tensor:
        """The loss at x_t on the first ``size`` training images (eval mode, no augmentation), a
        device scalar: the trace's training loss (``TrainConfig.log_every``). ``reestimate_bn``:
        with BatchNorm statistics re-estimated at x_t on those images, in batches of ``bn_batch``
        (``extrap.batchnorm``), instead of the running statistics of training's forwards at x̃."""
        x, y = self.x_train[:size], self.y_train[:size]
        if not reestimate_bn:
            with evaluating(module):
                return self._loss_and_top1(module, x, y)[0]
        with reestimated_batch_norm(module, [self.prepare(x[i:i + bn_batch]) for i in range(0, size, bn_batch)]):
            with evaluating(module):
                return self._loss_and_top1(module, x, y)[0]

    def _loss_and_top1(self, module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """[mean loss, top-1 %] on the device (no synchronisation)."""
        sums = torch.zeros(2, device=y.device, dtype=torch.float64)
        for i in range(0, len(y), self.eval_batch):
            out = module(self.prepare(x[i:i + self.eval_batch]))
            sums[0] += F.cross_entropy(out.float(), y[i:i + self.eval_batch], reduction="sum")
            sums[1] += (out.argmax(1) == y[i:i + self.eval_batch]).sum()
        return torch.stack([sums[0] / len(y), sums[1] * (100.0 / len(y))])

    def evaluate(self, module: nn.Module) -> dict:
        """Training loss (at x_t, eval mode, no augmentation) and test top-1 (%), read from the
        device once."""
        n = self.eval_train_samples or len(self.y_train)
        with evaluating(module):
            train = self._loss_and_top1(module, self.x_train[:n], self.y_train[:n])
            test = self._loss_and_top1(module, self.x_test, self.y_test)
        train_loss, _, _, top1 = torch.cat([train, test]).tolist()
        return {"train_loss": train_loss, "test_top1": top1}


class CifarTask(ClassificationTask):
    """CIFAR-10/100 from ``root`` (see ``data.cifar.load_cifar``): uint8 images resident on
    ``device``, random crop 32 (pad 4) + flip + normalisation on that device, seeded per
    (seed, worker, epoch, step) so processes, virtual workers and resumed runs see the same crops."""

    name = "cifar"
    epoch_size = (50_000, "images")
    set_from_settings = frozenset({"root", "name", "device", "seed", "tensors"})

    def __init__(self, root, name: str = "cifar10", device="cpu", seed: int = 0, download: bool = False,
                 eval_train_samples: int | None = 10_000, tensors: tuple[Tensor, ...] | None = None,
                 max_train_images: int | None = None):
        """``tensors``: ``(x_train, y_train, x_test, y_test)`` in CIFAR's formats instead of
        ``root``'s files (benchmarks on stand-in images). ``max_train_images``: train on the first
        that many training images only (short runs, like ``max_train_tokens`` and
        ``max_train_pairs`` of the language tasks)."""
        device = torch.device(device)
        if tensors is None:
            tensors = (*load_cifar(root, name, "train", download=download), *load_cifar(root, name, "test", download=download))
        if max_train_images is not None:
            tensors = (tensors[0][:max_train_images], tensors[1][:max_train_images], *tensors[2:])
        super().__init__(*(t.to(device) for t in tensors), seed=seed, eval_train_samples=eval_train_samples)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        self.augment = Augment(mean, std)
        self.num_classes = 10 if name == "cifar10" else 100
        self._generators: dict[int, torch.Generator] = {}

    @classmethod
    def from_settings(cls, settings: dict, device) -> "CifarTask":
        root = Path(settings.get("data_dir", ".")) / settings.get("data_subdir", "")
        return cls(root, settings.get("dataset", "cifar10"), device=device, seed=settings["seed"],
                   **settings.get("task_kwargs", {}))

    def model_kwargs(self) -> dict:
        return {"num_classes": self.num_classes}

    @classmethod
    def stand_in_model_kwargs(cls, settings: dict) -> dict:
        return {"num_classes": 100 if settings.get("dataset") == "cifar100" else 10}

    def transform(self, images, workers, epoch, step):
        gens = [self._generators.setdefault(w, torch.Generator(device=images.device)) for w in workers]
        for g, w in zip(gens, workers):  # seeding is host-side: no synchronisation
            g.manual_seed(step_seed(self.seed, w, epoch, step))
        return self.augment(images, gens)

    def prepare(self, images):
        return self.augment.normalize(images)


class LanguageModelTask(TaskBase):
    """WikiText-2 language modelling for ``extrap.train`` (Figure 2).

    Each worker reads its own contiguous stream of the training split, batchified to
    ``[T, b]`` and cut into BPTT windows; its LSTM hidden state is carried from window to window
    (truncated BPTT: ``loss`` returns the detached next state, ``after_step`` keeps it) and reset at
    each epoch. The metric is perplexity on ``eval_split`` at x_t (named ``val_ppl``, whatever
    split it is: the shared slice trains on ``valid`` and evaluates on ``test``).
    """

    name = "wikitext2"
    metric = "val_ppl"
    metric_higher = False
    epoch_size = (2_088_628, "tokens")
    set_from_settings = frozenset({"root", "device", "num_layers", "hidden_size"})

    def __init__(self, root, num_layers: int, hidden_size: int, device="cpu", bptt: int = 35,
                 vocab_split: str = "train", train_split: str = "train", eval_split: str = "valid",
                 eval_batch: int = 10, max_train_tokens: int | None = None,
                 max_eval_tokens: int | None = None, seed: int = 0, download: bool = False):
        splits = tuple(dict.fromkeys((train_split, eval_split)))
        wt = load_wikitext(root, vocab_split, splits, download=download)
        self.device = torch.device(device)
        self.vocab_size, self.eval_split = len(wt.vocab), eval_split
        self.bptt, self.num_layers, self.hidden_size = bptt, num_layers, hidden_size
        self.train_ids = wt.ids[train_split][:max_train_tokens].to(self.device)
        eval_ids = wt.ids[eval_split][:max_eval_tokens]
        try:
            self.eval_data = batchify(eval_ids, eval_batch).to(self.device)
        except ValueError as e:
            raise ValueError(f"{root}: the {eval_split} split (wiki.{eval_split}.tokens) is too short: {e}") from None
        self._streams: dict = {}
        self._hidden: dict = {}
        self._subset: Tensor | None = None

    @classmethod
    def from_settings(cls, settings: dict, device) -> "LanguageModelTask":
        root = Path(settings.get("data_dir", ".")) / settings.get("data_subdir", "")
        model = settings.get("model_kwargs", {})
        return cls(root, num_layers=model.get("num_layers", 2), hidden_size=model.get("hidden_size", 650),
                   device=device, **settings.get("task_kwargs", {}))

    def model_kwargs(self) -> dict:
        return {"vocab_size": self.vocab_size}

    @classmethod
    def stand_in_model_kwargs(cls, settings: dict) -> dict:
        return {"vocab_size": 100}

    def _stream(self, worker: int, num_workers: int, local_batch: int) -> Tensor:
        key = (worker, num_workers, local_batch)
        if key not in self._streams:
            self._streams[key] = batchify(worker_stream(self.train_ids, num_workers, worker), local_batch)
        return self._streams[key]

    def steps_per_epoch(self, num_workers: int, local_batch: int) -> int:
        steps = (self._stream(0, num_workers, local_batch).size(0) - 1) // self.bptt
        if steps < 1:
            raise ValueError(f"local_batch: {local_batch} streams × {num_workers} workers leave "
                             f"no full BPTT window of {self.bptt} tokens")
        return steps

    def train_batches(self, workers: Sequence[int], epoch: int, step: int, local_batch: int, num_workers: int):
        """The workers' BPTT windows and hidden states, stacked: ``(([W, L, b], (h, c)), [W, L, b])``
        with h, c ``[W, layers, b, hidden]``; views of streams already on the device."""
        key = ("stacked", tuple(workers), num_workers, local_batch)
        if key not in self._streams:  # [T, W, b]: the workers' streams side by side
            self._streams[key] = torch.stack([batchify(worker_stream(self.train_ids, num_workers, w), local_batch)
                                              for w in workers], dim=1)
        x, y = (t.movedim(1, 0) for t in get_batch(self._streams[key], step * self.bptt, self.bptt))
        if step > 0 and all(w in self._hidden for w in workers):
            hidden = tuple(torch.stack([self._hidden[w][j] for w in workers]) for j in (0, 1))
        else:
            shape = (len(workers), self.num_layers, local_batch, self.hidden_size)
            hidden = (torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device))
        return (x, hidden), y


    def loss(self, outputs, targets):
        logits, hidden = outputs
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return loss, tuple(h.detach() for h in hidden)

    def after_step(self, aux: dict) -> None:
        """Keep each worker's next hidden state (``aux``: worker id -> what ``loss`` returned)."""
        self._hidden.update(aux)

    def _mean_loss(self, module: nn.Module, data: Tensor) -> Tensor:
        """Mean next-token loss over batchified ``data`` [T, columns], a device scalar."""
        total, count, hidden = torch.zeros((), device=self.device, dtype=torch.float64), 0, None
        with evaluating(module):
            for i in range(0, data.size(0) - 1, self.bptt):
                y = data[i + 1:i + 1 + self.bptt]
                logits, hidden = module(data[i:i + len(y)], hidden)
                total += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum")
                count += y.numel()
        return total / max(count, 1)

    def subset_loss(self, module: nn.Module, reestimate_bn: bool = False, tokens: int = 4000) -> Tensor:
        """The loss at x_t on the first ``tokens`` training tokens (10 columns), a device scalar:
        the trace's training loss (``TrainConfig.log_every``); no BatchNorm to re-estimate."""
        if self._subset is None:
            self._subset = batchify(self.train_ids[:tokens], 10)
        return self._mean_loss(module, self._subset)

    def evaluate(self, module: nn.Module) -> dict:
        loss = self._mean_loss(module, self.eval_data).item()  # the evaluation's one synchronisation
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


class TranslationTask(TaskBase):
    """Multi30k English→German for ``extrap.train`` (Figure 3).

    A worker's pairs are its shard (``epoch_shards``), bucketed by length and shuffled by
    (seed, epoch, worker). At each step every worker's batch is padded to the longest of that
    step's K batches, so K workers stack into one tensor and a process pads exactly as its
    virtual twin. The padded pairs live on the device and an epoch's batch plan is sent there
    once, so a step's batches need no host–device synchronisation. Inputs are ``(src, tgt_in)``; the loss is label-smoothed cross-entropy over
    non-pad tokens; the metric is greedy-decoding BLEU (sacrebleu) on ``eval_samples`` sentences
    of ``eval_split``, plus the teacher-forced ``val_loss``.
    """

    name = "multi30k"
    metric = "bleu"
    metric_higher = True
    epoch_size = (29_000, "sentence pairs")

    def __init__(self, root, device="cpu", seed: int = 0, min_freq: int = 2, eval_split: str = "val",
                 eval_samples: int | None = None, label_smoothing: float = 0.1, decode_max_len: int = 60,
                 eval_batch: int = 100, max_train_pairs: int | None = None, subset_pairs: int = 256,
                 download: bool = False):
        self.device, self.eval_split = torch.device(device), eval_split
        self.data = prepare_multi30k(root, min_freq, splits=("train", eval_split), download=download)
        self.src, self.tgt = (ids[:max_train_pairs] for ids in self.data.ids["train"])
        self.lengths = torch.tensor([len(s) for s in self.src])
        self.tgt_lengths = torch.tensor([len(t) for t in self.tgt])
        self.src_table, self.tgt_table = pad_batch(self.src).to(self.device), pad_batch(self.tgt).to(self.device)
        self.src_vocab_size, self.tgt_vocab_size = len(self.data.src_vocab), len(self.data.tgt_vocab)
        self.eval_src = self.data.ids[eval_split][0][:eval_samples]
        self.eval_tgt = self.data.ids[eval_split][1][:eval_samples]
        self.eval_refs = self.data.text[eval_split][1][:eval_samples]
        self.seed, self.smoothing, self.decode_max_len, self.eval_batch = seed, label_smoothing, decode_max_len, eval_batch
        self._plan: tuple | None = None
        self._eval: list | None = None
        n = min(subset_pairs, len(self.src))  # the trace's subset, trimmed to its longest pair
        self._subset = (self.src_table[:n, :int(self.lengths[:n].max())],
                        self.tgt_table[:n, :int(self.tgt_lengths[:n].max())])

    def model_kwargs(self) -> dict:
        return {"src_vocab": self.src_vocab_size, "tgt_vocab": self.tgt_vocab_size}

    @classmethod
    def stand_in_model_kwargs(cls, settings: dict) -> dict:
        return {"src_vocab": 100, "tgt_vocab": 100}

    def steps_per_epoch(self, num_workers: int, local_batch: int) -> int:
        return _steps_per_epoch(len(self.src), num_workers, local_batch, "training pairs")

    def _epoch_plan(self, epoch: int, num_workers: int, local_batch: int, workers: tuple[int, ...]):
        """The epoch's batches of the workers held, [steps, W, b] on the device, and each step's
        source and target lengths (the longest over all K workers' batches), as host integers."""
        key = (epoch, num_workers, local_batch, workers)
        if self._plan is None or self._plan[0] != key:
            shards = epoch_shards(len(self.src), num_workers, epoch, self.seed)
            batches = torch.stack([torch.stack(bucket_batches(
                self.lengths, shards[w], local_batch, generator=torch.Generator().manual_seed(step_seed(self.seed, w, epoch))))
                for w in range(num_workers)], dim=1)  # [steps, K, b]
            src_len = self.lengths[batches].flatten(1).amax(1).tolist()
            tgt_len = self.tgt_lengths[batches].flatten(1).amax(1).tolist()
            self._plan = (key, batches[:, list(workers)].to(self.device, non_blocking=True), src_len, tgt_len)
        return self._plan[1:]

    def train_batches(self, workers: Sequence[int], epoch: int, step: int, local_batch: int, num_workers: int):
        """The workers' ``((src, tgt_in), tgt_out)``, stacked: [W, b, length]."""
        plan, src_len, tgt_len = self._epoch_plan(epoch, num_workers, local_batch, tuple(workers))
        idx = plan[step].reshape(-1)
        src = self.src_table.index_select(0, idx)[:, :src_len[step]].view(len(workers), local_batch, -1)
        tgt = self.tgt_table.index_select(0, idx)[:, :tgt_len[step]].view(len(workers), local_batch, -1)
        return (src, tgt[:, :, :-1]), tgt[:, :, 1:]


    def subset_loss(self, module: nn.Module, reestimate_bn: bool = False) -> Tensor:
        """The teacher-forced loss at x_t on the first ``subset_pairs`` training pairs (no
        smoothing), a device scalar: the trace's training loss (``TrainConfig.log_every``); no
        BatchNorm to re-estimate."""
        src, tgt = self._subset
        with evaluating(module):
            logits = module((src, tgt[:, :-1]))
            return F.cross_entropy(logits.flatten(0, 1).float(), tgt[:, 1:].flatten(), ignore_index=PAD)

    def _eval_batches(self) -> list[tuple[Tensor, Tensor]]:
        """The evaluation pairs, padded per batch, on the device (sent there once)."""
        if self._eval is None:
            self._eval = [(pad_batch(self.eval_src[i:i + self.eval_batch]).to(self.device),
                           pad_batch(self.eval_tgt[i:i + self.eval_batch]).to(self.device))
                          for i in range(0, len(self.eval_src), self.eval_batch)]
        return self._eval

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        from models.transformer import label_smoothed_loss  # noqa: PLC0415 (data needs the model's loss)

        return label_smoothed_loss(logits, targets, smoothing=self.smoothing)

    def evaluate(self, module: nn.Module) -> dict:
        from models.transformer import greedy_decode

        hyps, sums = [], torch.zeros(2, device=self.device, dtype=torch.float64)  # loss, tokens
        early_stop = self.device.type == "cpu"  # reading the device each token costs only off the CPU
        with evaluating(module):
            for src, tgt in self._eval_batches():
                logits = module((src, tgt[:, :-1]))
                mask = tgt[:, 1:] != PAD
                sums[0] += F.cross_entropy(logits.flatten(0, 1).float(), tgt[:, 1:].flatten(), ignore_index=PAD,
                                           reduction="sum")
                sums[1] += mask.sum()
                out = greedy_decode(module, src, BOS, EOS, self.decode_max_len, early_stop=early_stop)
                hyps.append(F.pad(out, (0, self.decode_max_len - out.shape[1]), value=PAD))
        loss, tokens = sums.tolist()  # the evaluation's reads from the device: these and the hypotheses
        return {"val_loss": loss / tokens, "bleu": bleu(torch.cat(hyps).tolist(), self.eval_refs, self.data.tgt_vocab)}
