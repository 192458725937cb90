"""WikiText-2 (word level) from ``wiki.{train,valid,test}.tokens``, as in the PyTorch
word_language_model example: every line, blank ones included, is split on whitespace and ends
with an ``<eos>`` token; the vocabulary is every word of one split (the training split by
default) in order of first appearance; a word outside it maps to ``<unk>`` (which WikiText
already uses for rare words).

Each worker reads its own contiguous stream (``worker_stream``), cut into ``[T, B]`` columns by
``batchify`` and into BPTT windows by ``get_batch``. The stream depends only on (K, worker), so
it is the same under processes and virtual workers.

``load_wikitext(root, download=True)`` fetches the official WikiText-2 (tokens, v1) archive when
``root`` holds none of its files, checks its md5 and extracts ``wikitext-2/`` atomically
(``data.download``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .download import download_and_extract

__all__ = ["Vocab", "WikiText", "load_wikitext", "read_tokens", "build_vocab", "encode",
           "batchify", "get_batch", "worker_stream", "SPLITS", "WIKITEXT2"]

SPLITS = ("train", "valid", "test")
# the official archive (Merity et al. 2016), as the PyTorch word_language_model example uses it
WIKITEXT2 = {"url": "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
             "md5": "542ccefacc6c27f945fb54453812b3cd", "folder": "wikitext-2"}
EOS, UNK = "<eos>", "<unk>"


@dataclass
class Vocab:
    """Word ↔ id, ids in order of first appearance."""

    itos: list[str] = field(default_factory=list)
    stoi: dict[str, int] = field(default_factory=dict)

    def add(self, word: str) -> int:
        if word not in self.stoi:
            self.stoi[word] = len(self.itos)
            self.itos.append(word)
        return self.stoi[word]

    def __len__(self) -> int:
        return len(self.itos)


@dataclass
class WikiText:
    """The vocabulary, which split it was built from, and the id streams of the splits read."""

    vocab: Vocab
    vocab_split: str
    ids: dict[str, Tensor]


def read_tokens(path) -> list[str]:
    """The file's words, each line followed by ``<eos>``."""
    path = Path(path)
    words: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                words.extend(line.split())
                words.append(EOS)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a file of tokens") from None
    if len(words) == words.count(EOS):
        raise ValueError(f"{path}: no words ({len(words)} blank lines); expected WikiText-2 tokens")
    return words


def build_vocab(words: list[str]) -> Vocab:
    """Every word of ``words`` in order of first appearance; ``<unk>`` and ``<eos>`` are always
    present."""
    vocab = Vocab()
    for w in words:
        vocab.add(w)
    vocab.add(UNK)
    vocab.add(EOS)
    return vocab


def encode(words: list[str], vocab: Vocab) -> Tensor:
    """int64 ids of ``words``; words outside ``vocab`` become ``<unk>``."""
    unk = vocab.stoi[UNK]
    return torch.tensor([vocab.stoi.get(w, unk) for w in words], dtype=torch.int64)


def _split_path(folder: Path, split: str) -> Path:
    return folder / f"wiki.{split}.tokens"


def wikitext_folder(root) -> Path:
    """The folder with the ``wiki.*.tokens`` files: ``root``, or its ``wikitext-2/``."""
    root = Path(root)
    if not any(root.glob("wiki.*.tokens")) and (root / WIKITEXT2["folder"]).is_dir():
        return root / WIKITEXT2["folder"]
    return root


def ensure_wikitext(root, fetch: bool) -> Path:
    """The folder of WikiText-2's files under ``root``: there, or fetched (``fetch``) with its
    checksum; otherwise a ``FileNotFoundError`` says what to download and where to put it."""
    root = Path(root)
    folder = wikitext_folder(root)
    if any(folder.glob("wiki.*.tokens")):
        return folder
    parent = root.parent if root.name == WIKITEXT2["folder"] else root
    where = (f"download {WIKITEXT2['url']} (md5 {WIKITEXT2['md5']}) and extract its wikitext-2/"
             f" (wiki.{{train,valid,test}}.tokens) into {parent}")
    if not fetch:
        raise FileNotFoundError(f"WikiText-2 is not in {folder}: {where}")
    try:
        return download_and_extract(WIKITEXT2["url"], parent, WIKITEXT2["md5"], WIKITEXT2["folder"])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"WikiText-2 is not in {folder} and {e}: {where}") from None


def load_wikitext(root, vocab_split: str = "train", splits=SPLITS, download: bool = False) -> WikiText:
    """Read ``splits`` from ``root`` (the folder with the ``wiki.*.tokens`` files, or its parent
    holding ``wikitext-2/``), with the vocabulary built from ``vocab_split``. With ``download``
    and none of the files there, the official archive is fetched first.

    The full dataset trains on ``train``. A directory without the training file (such as the
    project's shared slice) can still be used by building the vocabulary from ``valid``,
    training on it and evaluating on ``test``: ``load_wikitext(d, "valid", ("valid", "test"))``.
    """
    root = Path(root)
    for s in (vocab_split, *splits):
        if s not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {s!r}")
    folder = ensure_wikitext(root, fetch=True) if download else wikitext_folder(root)
    wanted = list(dict.fromkeys([vocab_split, *splits]))
    missing = [s for s in wanted if not _split_path(folder, s).exists()]  # a folder in its place: read_tokens says so
    if missing:
        present = sorted(p.name for p in folder.glob("wiki.*.tokens") if p.is_file()) if folder.is_dir() else []
        hint = ""
        if "train" in missing and {"wiki.valid.tokens", "wiki.test.tokens"} <= set(present):
            hint = ("; without a training split, build the vocabulary from valid and evaluate on "
                    "test: load_wikitext(root, vocab_split='valid', splits=('valid', 'test'))")
        raise FileNotFoundError(
            f"{folder}: missing {', '.join(_split_path(folder, s).name for s in missing)} "
            f"(found: {', '.join(present) or 'nothing'}); expected wiki.{{train,valid,test}}.tokens "
            f"from the WikiText-2 (tokens) archive {WIKITEXT2['url']}, or pass download=True on a "
            f"machine that is online{hint}")
    words = {s: read_tokens(_split_path(folder, s)) for s in wanted}
    vocab = build_vocab(words[vocab_split])
    return WikiText(vocab, vocab_split, {s: encode(words[s], vocab) for s in splits})


def worker_stream(ids: Tensor, num_workers: int, worker: int) -> Tensor:
    """Worker ``worker``'s contiguous part of the token stream: K disjoint equal slices in order
    (the remainder len(ids) mod K is dropped)."""
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker: expected 0 <= worker < {num_workers}, got {worker}")
    per = len(ids) // num_workers
    if per < 2:
        raise ValueError(f"ids: {len(ids)} tokens cannot be shared by {num_workers} workers")
    return ids[worker * per:(worker + 1) * per]


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """[T, B]: the stream cut into ``batch_size`` contiguous columns (column b holds tokens
    b·T … (b+1)·T − 1); the remainder len(ids) mod B is dropped."""
    t = len(ids) // batch_size
    if t < 2:
        raise ValueError(f"batch_size: {batch_size} columns leave fewer than 2 of {len(ids)} tokens each")
    return ids[:t * batch_size].view(batch_size, t).t().contiguous()


def get_batch(source: Tensor, i: int, bptt: int) -> tuple[Tensor, Tensor]:
    """(inputs, targets), both [L, B] with L = min(bptt, T − 1 − i): rows i … i+L−1 of
    ``source`` and the same rows shifted by one token."""
    seq_len = min(bptt, len(source) - 1 - i)
    if seq_len < 1:
        raise ValueError(f"i: window start {i} leaves no target in {len(source)} rows")
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len]
