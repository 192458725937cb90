"""Multi30k task 1 (English → German) from ``{train,val,test_2016_flickr}.{en,de}``, plain or
gzipped, one raw sentence per line, line i of ``.en`` translating line i of ``.de``.

Tokenisation (``tokenize``): lowercase, then a regular expression takes, left to right,
HTML entities left in the raw text (``&amp;``), numbers with inner ``.``/``,`` (``3.5``),
dotted abbreviations (``e.s.e.``), words with inner hyphens or apostrophes (``t-shirt``,
``don't``, ``rock'n'roll``; a trailing hyphen too, as in German ``limonade- und``), and every
other non-space character alone (punctuation). ``detokenize`` undoes the spacing: no space
before closing punctuation or after opening brackets, quotes paired open/close. On the
Multi30k training targets the round trip text → tokens → text is exact up to case for all but
~0.2% of sentences under BLEU's own tokenisation. BLEU is sacrebleu's corpus BLEU (13a
tokenisation) on detokenised output, case-insensitive when the vocabulary is lowercased.

``prepare_multi30k(root, download=True)`` fetches the six gzipped task-1 files of the dataset's
own repository (github.com/multi30k/dataset, ``data/task1/raw``) into ``multi30k/`` when ``root``
holds none of them, checking each one's sha256 (``data.download``).

Vocabularies (``Vocab.build``) keep tokens seen at least ``min_freq`` times in the training
split, after the specials ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3. Encoded
sentences are ``<bos> w1 … wn <eos>``; batches are padded batch-first, [B, L].

Sharding: a worker's training pairs are ``shard_indices(n, K, worker, epoch, seed)``; within
them ``bucket_batches`` groups sentences of similar length (sorting inside chunks), so a
worker's batches depend only on (seed, epoch, worker)::

    src, tgt = data.ids["train"]
    lengths = torch.tensor([len(s) for s in src])
    shard = shard_indices(len(src), K, worker, epoch, seed)
    for index in bucket_batches(lengths, shard, batch_size):
        x, y = collate(src, tgt, index)          # [B, S], [B, T], padded with <pad> = 0
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .download import download_files

__all__ = ["tokenize", "detokenize", "Vocab", "Multi30k", "read_pairs", "load_multi30k",
           "prepare_multi30k", "pad_batch", "collate", "bucket_batches", "bleu", "SPLITS", "SPECIALS",
           "MULTI30K_FILES", "MULTI30K_RAW"]

SPLITS = ("train", "val", "test_2016_flickr")
MULTI30K_RAW = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K_FILES = {name: (MULTI30K_RAW + name, sha256) for name, sha256 in (  # the December 2017 files
    ("train.en.gz", "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f"),
    ("train.de.gz", "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6"),
    ("val.en.gz", "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28"),
    ("val.de.gz", "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a"),
    ("test_2016_flickr.en.gz", "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9"),
    ("test_2016_flickr.de.gz", "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8"))}
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(4)

_TOKEN = re.compile(r"&\w+;|\d+(?:[.,]\d+)+|(?:[^\W\d_]\.){2,}|\w+(?:[-'’]\w+)*(?:-(?=\s|$))?|[^\w\s]")
_NO_SPACE_BEFORE = {".", ",", "!", "?", ";", ":", ")", "]", "}", "%", "'", "’", "”"}
_NO_SPACE_AFTER = {"(", "[", "{", "$", "„"}


def tokenize(text: str, lower: bool = True) -> list[str]:
    """Words, numbers and single punctuation characters of ``text`` (see the module doc)."""
    return _TOKEN.findall(text.lower() if lower else text)


def detokenize(tokens: list[str]) -> str:
    """Tokens joined by spaces except before closing and after opening punctuation. Straight
    double quotes alternate between opening and closing; ``“`` closes a German ``„`` and
    opens otherwise."""
    out: list[str] = []
    glue_next = True
    straight_open = german_open = False
    for tok in tokens:
        glue = glue_next or tok in _NO_SPACE_BEFORE
        glue_next = tok in _NO_SPACE_AFTER
        if tok == "„":
            german_open = True
        elif tok == "“" and german_open:
            glue, german_open = True, False
        elif tok == "“":
            glue_next = True
        elif tok == '"':
            glue, glue_next = (True, False) if straight_open else (glue, True)
            straight_open = not straight_open
        out.append(tok if glue else " " + tok)
    return "".join(out)


@dataclass
class Vocab:
    """Token ↔ id with the four specials first."""

    itos: list[str]
    stoi: dict[str, int] = field(init=False)

    def __post_init__(self):
        if tuple(self.itos[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"itos: must start with {SPECIALS}")
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences, min_freq: int = 2) -> "Vocab":
        """Tokens of ``sentences`` (lists of tokens) seen at least ``min_freq`` times, most
        frequent first, ties in alphabetical order."""
        if min_freq < 1:
            raise ValueError(f"min_freq: expected >= 1, got {min_freq}")
        counts = Counter(t for s in sentences for t in s)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                      key=lambda t: (-counts[t], t))
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> Tensor:
        """int64 ``[<bos>, ids…, <eos>]``; unknown tokens become ``<unk>``."""
        return torch.tensor([BOS, *(self.stoi.get(t, UNK) for t in tokens), EOS], dtype=torch.int64)

    def decode(self, ids) -> list[str]:
        """Tokens of ``ids`` up to the first ``<eos>``, without ``<bos>`` and ``<pad>``."""
        tokens = []
        for i in (ids.tolist() if isinstance(ids, Tensor) else ids):
            if i == EOS:
                break
            if i not in (BOS, PAD):
                tokens.append(self.itos[i])
        return tokens


@dataclass
class Multi30k:
    """Vocabularies built on train, each split's raw sentences and encoded ids."""

    src_vocab: Vocab
    tgt_vocab: Vocab
    text: dict[str, tuple[list[str], list[str]]]
    ids: dict[str, tuple[list[Tensor], list[Tensor]]]


def _find(folder: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder}: missing {split}.{lang} (or {split}.{lang}.gz); expected "
        f"{{{','.join(SPLITS)}}}.{{en,de}}, plain or .gz, one sentence per line (the files of {MULTI30K_RAW}), "
        "or pass download=True on a machine that is online")


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from err
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_pairs(root, split: str, src: str = "en", tgt: str = "de") -> tuple[list[str], list[str]]:
    """(source lines, target lines) of ``split``; ``root`` is the folder with the files or its
    parent holding ``multi30k/``. Line counts that differ raise a ValueError naming both files."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    root = Path(root)
    folder = root / "multi30k" if (root / "multi30k").is_dir() else root
    src_path, tgt_path = _find(folder, split, src), _find(folder, split, tgt)
    src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise ValueError(f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; "
                         "the files must be line-aligned translations")
    return src_lines, tgt_lines


def ensure_multi30k(root, fetch: bool) -> Path:
    """The folder of Multi30k's files under ``root`` (it, or its ``multi30k/``): there, or fetched
    (``fetch``, ``MULTI30K_FILES``); otherwise a ``FileNotFoundError`` says what to put where."""
    root = Path(root)
    folder = root / "multi30k" if (root / "multi30k").is_dir() else root
    if any(any(folder.glob(f"{split}.*")) for split in SPLITS):
        return folder
    parent = root.parent if root.name == "multi30k" else root
    where = f"put {', '.join(MULTI30K_FILES)} from {MULTI30K_RAW} into {parent / 'multi30k'}"
    if not fetch:
        raise FileNotFoundError(f"Multi30k is not in {folder}: {where}")
    try:
        download_files(MULTI30K_FILES, parent, "multi30k")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Multi30k is not in {folder} and {e}: {where}") from None
    return parent / "multi30k"


def load_multi30k(root, splits=SPLITS, src: str = "en", tgt: str = "de", download: bool = False) -> dict:
    """{split: (source lines, target lines)} for ``splits``. With ``download`` and none of the
    dataset's files under ``root``, the official files are fetched first (``MULTI30K_FILES``)."""
    if download:
        ensure_multi30k(root, fetch=True)
    return {s: read_pairs(root, s, src, tgt) for s in splits}


def prepare_multi30k(root, min_freq: int = 2, lower: bool = True, splits=SPLITS,
                     src: str = "en", tgt: str = "de", download: bool = False) -> Multi30k:
    """Read ``splits`` (``train`` must be among them; ``download``: see ``load_multi30k``),
    tokenise, build both vocabularies on the training split with ``min_freq``, and encode
    every sentence."""
    if "train" not in splits:
        raise ValueError("splits: the vocabularies are built on 'train', which must be included")
    text = load_multi30k(root, splits, src, tgt, download)
    tokens = {s: ([tokenize(x, lower) for x in a], [tokenize(x, lower) for x in b]) for s, (a, b) in text.items()}
    src_vocab = Vocab.build(tokens["train"][0], min_freq)
    tgt_vocab = Vocab.build(tokens["train"][1], min_freq)
    ids = {s: ([src_vocab.encode(t) for t in a], [tgt_vocab.encode(t) for t in b]) for s, (a, b) in tokens.items()}
    return Multi30k(src_vocab, tgt_vocab, text, ids)


def pad_batch(seqs: list[Tensor], pad_id: int = PAD) -> Tensor:
    """[B, L] int64, each row one sequence followed by ``pad_id`` up to the longest."""
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)


def collate(src: list[Tensor], tgt: list[Tensor], index: Tensor) -> tuple[Tensor, Tensor]:
    """(source [B, S], target [B, T]) of the pairs at ``index``, padded with ``<pad>``."""
    rows = index.tolist()
    return pad_batch([src[i] for i in rows]), pad_batch([tgt[i] for i in rows])


def bucket_batches(lengths: Tensor, indices: Tensor, batch_size: int, chunk: int = 64,
                   drop_last: bool = True, generator: torch.Generator | None = None) -> list[Tensor]:
    """``indices`` (a worker's shard, already shuffled) cut into batches of similar lengths:
    each run of ``chunk × batch_size`` indices is sorted by ``lengths[index]`` (stable) and cut
    into batches. With ``drop_last`` every batch has ``batch_size`` items (the shard's remainder
    is dropped), so K equal shards give K equal batch counts. ``generator`` shuffles the order
    of the batches; without it they come chunk by chunk, short to long."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    n = len(indices) // batch_size * batch_size if drop_last else len(indices)
    indices = indices[:n]
    batches: list[Tensor] = []
    span = chunk * batch_size
    for start in range(0, n, span):
        part = indices[start:start + span]
        part = part[torch.argsort(lengths[part], stable=True)]
        batches.extend(part.split(batch_size))
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def bleu(hypotheses_ids, references: list[str], vocab: Vocab, lowercase: bool = True) -> float:
    """Corpus BLEU (sacrebleu, 13a tokenisation, 0–100) of the decoded, detokenised
    ``hypotheses_ids`` (rows of target ids; each stops at its first ``<eos>``) against the raw
    reference sentences. ``lowercase`` should match the vocabulary's tokenisation."""
    import sacrebleu  # only needed here: keeps `import data` light

    hyps = [detokenize(vocab.decode(h)) for h in hypotheses_ids]
    if len(hyps) != len(references):
        raise ValueError(f"hypotheses: {len(hyps)} for {len(references)} references")
    return sacrebleu.corpus_bleu(hyps, [list(references)], lowercase=lowercase).score
