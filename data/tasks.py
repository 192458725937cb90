"""The paper's tasks for ``extrap.train``: image classification (CIFAR, digits), language
modelling (WikiText-2) and translation (Multi30k) — each worker's shard, batches on the training
device, and evaluation at x_t."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, Augment, step_seed
from .cifar import load_cifar
from .multi30k import BOS, EOS, PAD, bleu, bucket_batches, pad_batch, prepare_multi30k
from .sharding import shard_indices
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


class _NoProbe:
    def probe_batch(self):
        raise NotImplementedError("the smoothness probe is for image classification (Figure 1b)")


class ClassificationTask:
    """Shards, batches and evaluation over tensors already on ``device``.

    ``transform(images, worker, epoch, step)`` turns a raw training batch into model input
    (augmentation); ``prepare(images)`` does it for evaluation. Training loss is measured at x_t
    in eval mode on the first ``eval_train_samples`` training images (all by default).
    """

    metric = "test_top1"

    def __init__(self, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, seed: int = 0,
                 eval_train_samples: int | None = None, eval_batch: int = 1000):
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.seed = seed
        self.eval_train_samples = eval_train_samples
        self.eval_batch = eval_batch
        self._shard: tuple | None = None

    def transform(self, images: Tensor, worker: int, epoch: int, step: int) -> Tensor:
        return self.prepare(images)

    def prepare(self, images: Tensor) -> Tensor:
        return images

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)

    def steps_per_epoch(self, num_workers: int, local_batch: int) -> int:
        return _steps_per_epoch(len(self.y_train), num_workers, local_batch, "training images")

    def train_batch(self, worker: int, epoch: int, step: int, local_batch: int, num_workers: int):
        """Worker ``worker``'s ``step``-th batch of ``epoch`` from its own shard."""
        key = (worker, epoch, num_workers)
        if self._shard is None or self._shard[0] != key:  # one shard per (worker, epoch)
            idx = shard_indices(len(self.y_train), num_workers, worker, epoch, self.seed)
            self._shard = (key, idx.to(self.y_train.device))
        idx = self._shard[1][step * local_batch:(step + 1) * local_batch]
        return self.transform(self.x_train[idx], worker, epoch, step), self.y_train[idx]

    def probe_batch(self, size: int = 256):
        return self.prepare(self.x_train[:size]), self.y_train[:size]

    def _loss_and_top1(self, module: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
        loss, correct = 0.0, 0
        for i in range(0, len(y), self.eval_batch):
            out = module(self.prepare(x[i:i + self.eval_batch]))
            loss += F.cross_entropy(out, y[i:i + self.eval_batch], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + self.eval_batch]).sum().item()
        return loss / len(y), 100.0 * correct / len(y)

    def evaluate(self, module: nn.Module) -> dict:
        """Training loss (at x_t, eval mode, no augmentation) and test top-1 (%)."""
        n = self.eval_train_samples or len(self.y_train)
        with evaluating(module):
            train_loss, _ = self._loss_and_top1(module, self.x_train[:n], self.y_train[:n])
            _, top1 = self._loss_and_top1(module, self.x_test, self.y_test)
        return {"train_loss": train_loss, "test_top1": top1}


class CifarTask(ClassificationTask):
    """CIFAR-10/100 from ``root`` (see ``data.cifar.load_cifar``): uint8 images resident on
    ``device``, random crop 32 (pad 4) + flip + normalisation on that device, seeded per
    (seed, worker, epoch, step) so processes, virtual workers and resumed runs see the same crops."""

    def __init__(self, root, name: str = "cifar10", device="cpu", seed: int = 0, download: bool = False,
                 eval_train_samples: int | None = 10_000):
        device = torch.device(device)
        x_tr, y_tr = load_cifar(root, name, "train", download=download)
        x_te, y_te = load_cifar(root, name, "test", download=download)
        super().__init__(x_tr.to(device), y_tr.to(device), x_te.to(device), y_te.to(device), seed=seed,
                         eval_train_samples=eval_train_samples)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        self.augment = Augment(mean, std)
        self.num_classes = 10 if name == "cifar10" else 100
        self._generator = torch.Generator(device=device)

    def transform(self, images, worker, epoch, step):
        self._generator.manual_seed(step_seed(self.seed, worker, epoch, step))
        return self.augment(images, self._generator)

    def prepare(self, images):
        return self.augment.normalize(images)


class LanguageModelTask(_NoProbe):
    """WikiText-2 language modelling for ``extrap.train`` (Figure 2).

    Each worker reads its own contiguous stream of the training split, batchified to
    ``[T, b]`` and cut into BPTT windows; its LSTM hidden state is carried from window to window
    (truncated BPTT: ``loss`` returns the detached next state, ``after_step`` keeps it) and reset at
    each epoch. The metric is perplexity on ``eval_split`` at x_t (named ``val_ppl``, whatever
    split it is: the shared slice trains on ``valid`` and evaluates on ``test``).
    """

    metric = "val_ppl"
    metric_higher = False

    def __init__(self, root, num_layers: int, hidden_size: int, device="cpu", bptt: int = 35,
                 vocab_split: str = "train", train_split: str = "train", eval_split: str = "valid",
                 eval_batch: int = 10, max_train_tokens: int | None = None,
                 max_eval_tokens: int | None = None, seed: int = 0):
        splits = tuple(dict.fromkeys((train_split, eval_split)))
        wt = load_wikitext(root, vocab_split, splits)
        self.device = torch.device(device)
        self.vocab_size = len(wt.vocab)
        self.bptt, self.num_layers, self.hidden_size = bptt, num_layers, hidden_size
        self.train_ids = wt.ids[train_split][:max_train_tokens].to(self.device)
        eval_ids = wt.ids[eval_split][:max_eval_tokens]
        self.eval_data = batchify(eval_ids, eval_batch).to(self.device)
        self._streams: dict = {}
        self._hidden: dict = {}

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

    def _zeros(self, local_batch: int):
        shape = (self.num_layers, local_batch, self.hidden_size)
        return (torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device))

    def train_batch(self, worker: int, epoch: int, step: int, local_batch: int, num_workers: int):
        x, y = get_batch(self._stream(worker, num_workers, local_batch), step * self.bptt, self.bptt)
        hidden = self._hidden.get(worker) if step > 0 else None
        return (x, hidden if hidden is not None else self._zeros(local_batch)), y

    def loss(self, outputs, targets):
        logits, hidden = outputs
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return loss, tuple(h.detach() for h in hidden)

    def after_step(self, aux: dict) -> None:
        """Keep each worker's next hidden state (``aux``: worker id -> what ``loss`` returned)."""
        self._hidden.update(aux)

    def evaluate(self, module: nn.Module) -> dict:
        total, count, hidden = 0.0, 0, None
        with evaluating(module):
            for i in range(0, self.eval_data.size(0) - 1, self.bptt):
                y = self.eval_data[i + 1:i + 1 + self.bptt]
                logits, hidden = module(self.eval_data[i:i + len(y)], hidden)
                total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
                count += y.numel()
        return {"val_loss": total / count, "val_ppl": math.exp(min(total / count, 50.0))}


class TranslationTask(_NoProbe):
    """Multi30k English→German for ``extrap.train`` (Figure 3).

    A worker's pairs are its shard (``shard_indices``), bucketed by length and shuffled by
    (seed, epoch, worker). At each step every worker's batch is padded to the longest of that
    step's K batches, so K workers stack into one tensor and a process pads exactly as its
    virtual twin. Inputs are ``(src, tgt_in)``; the loss is label-smoothed cross-entropy over
    non-pad tokens; the metric is greedy-decoding BLEU (sacrebleu) on ``eval_samples`` sentences
    of ``eval_split``, plus the teacher-forced ``val_loss``.
    """

    metric = "bleu"
    metric_higher = True

    def __init__(self, root, device="cpu", seed: int = 0, min_freq: int = 2, eval_split: str = "val",
                 eval_samples: int | None = None, label_smoothing: float = 0.1, decode_max_len: int = 60,
                 eval_batch: int = 100, max_train_pairs: int | None = None):
        self.device = torch.device(device)
        self.data = prepare_multi30k(root, min_freq, splits=("train", eval_split))
        self.src, self.tgt = (ids[:max_train_pairs] for ids in self.data.ids["train"])
        self.lengths = torch.tensor([len(s) for s in self.src])
        self.src_vocab_size, self.tgt_vocab_size = len(self.data.src_vocab), len(self.data.tgt_vocab)
        self.eval_src = self.data.ids[eval_split][0][:eval_samples]
        self.eval_tgt = self.data.ids[eval_split][1][:eval_samples]
        self.eval_refs = self.data.text[eval_split][1][:eval_samples]
        self.seed, self.smoothing, self.decode_max_len, self.eval_batch = seed, label_smoothing, decode_max_len, eval_batch
        self._epoch_batches: tuple | None = None

    def steps_per_epoch(self, num_workers: int, local_batch: int) -> int:
        return _steps_per_epoch(len(self.src), num_workers, local_batch, "training pairs")

    def _batches(self, epoch: int, num_workers: int, local_batch: int) -> list[list[Tensor]]:
        key = (epoch, num_workers, local_batch)
        if self._epoch_batches is None or self._epoch_batches[0] != key:
            per_worker = []
            for w in range(num_workers):
                gen = torch.Generator().manual_seed(step_seed(self.seed, w, epoch))
                shard = shard_indices(len(self.src), num_workers, w, epoch, self.seed)
                per_worker.append(bucket_batches(self.lengths, shard, local_batch, generator=gen))
            self._epoch_batches = (key, per_worker)
        return self._epoch_batches[1]

    def train_batch(self, worker: int, epoch: int, step: int, local_batch: int, num_workers: int):
        batches = self._batches(epoch, num_workers, local_batch)
        rows = [batches[w][step].tolist() for w in range(num_workers)]
        src_len = max(len(self.src[i]) for r in rows for i in r)
        tgt_len = max(len(self.tgt[i]) for r in rows for i in r)
        src = torch.full((local_batch, src_len), PAD, dtype=torch.long)
        tgt = torch.full((local_batch, tgt_len), PAD, dtype=torch.long)
        for j, i in enumerate(rows[worker]):
            src[j, :len(self.src[i])] = self.src[i]
            tgt[j, :len(self.tgt[i])] = self.tgt[i]
        src, tgt = src.to(self.device), tgt.to(self.device)
        return (src, tgt[:, :-1]), tgt[:, 1:]

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        from models.transformer import label_smoothed_loss  # noqa: PLC0415 (data needs the model's loss)

        return label_smoothed_loss(logits, targets, smoothing=self.smoothing)

    def evaluate(self, module: nn.Module) -> dict:
        from models.transformer import greedy_decode


        hyps, loss, tokens = [], 0.0, 0
        with evaluating(module):
            for i in range(0, len(self.eval_src), self.eval_batch):
                src = pad_batch(self.eval_src[i:i + self.eval_batch]).to(self.device)
                tgt = pad_batch(self.eval_tgt[i:i + self.eval_batch]).to(self.device)
                logits = module((src, tgt[:, :-1]))
                mask = tgt[:, 1:] != 0
                loss += F.cross_entropy(logits[mask], tgt[:, 1:][mask], reduction="sum").item()
                tokens += int(mask.sum())
                hyps.extend(greedy_decode(module, src, BOS, EOS, self.decode_max_len).tolist())
        return {"val_loss": loss / tokens, "bleu": bleu(hyps, self.eval_refs, self.data.tgt_vocab)}
