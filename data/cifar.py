"""CIFAR-10 and CIFAR-100 from the python-pickle layout of the official archives.

Layouts (``root`` may name the parent folder or the dataset folder itself)::

    cifar-10-batches-py/   data_batch_1 … data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

Each data file is a pickled dict with ``data`` (N×3072 uint8: the R, G, B planes of 32×32
images, row-major) and ``labels`` (CIFAR-10) or ``fine_labels`` / ``coarse_labels``
(CIFAR-100). Keys are bytes in the official Python 2 pickles and str in files re-pickled by
Python 3; both are read. Files with fewer rows than the official ones (subsets) are read as
they are: no checksum is applied to a directory the user names, only to a downloaded archive.

Trust model: a pickle can run arbitrary code when loaded. Only files inside the directory the
caller names are unpickled, and the unpickler refuses every global except the few NumPy needs
to rebuild an array, so a tampered file fails with an error instead of running code. Even so,
only point ``root`` at files you trust.

Errors: a missing file or layout raises ``FileNotFoundError`` listing the files expected and
where to put them; a malformed file raises ``ValueError`` whose message starts with the file's
path and says what is wrong (truncated pickle, column count, label count or range).
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import torch

from .download import download_and_extract

__all__ = ["load_cifar", "cifar_classes", "locate_cifar", "unpickle_arrays", "download_and_extract", "CIFAR_SPECS"]

CIFAR_SPECS = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": {"fine": ("labels", 10)},
        "names": {"fine": "label_names"},
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": {"fine": ("fine_labels", 100), "coarse": ("coarse_labels", 20)},
        "names": {"fine": "fine_label_names", "coarse": "coarse_label_names"},
    },
}

_PIXELS = 3 * 32 * 32


def load_cifar(root, name: str = "cifar10", split: str = "train", label: str = "fine",
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) of one split, in file order.

    ``label`` picks CIFAR-100's ``"fine"`` (100 classes, the default) or ``"coarse"`` (20)
    labels; CIFAR-10 has only ``"fine"``. With ``download=True`` and no files under ``root``,
    the official archive is fetched, its md5 checked, and extracted atomically into ``root``.
    Pixel ``[i, c, y, x]`` is ``data[i, c*1024 + y*32 + x]`` of the file."""
    spec = _spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if label not in spec["labels"]:
        raise ValueError(f"label: {spec['title']} has {sorted(spec['labels'])} labels, got {label!r}")
    folder = locate_cifar(Path(root), spec, spec[split], download)
    key, num_classes = spec["labels"][label]
    images, labels = [], []
    for fname in spec[split]:
        x, y = _read_batch(folder / fname, key, num_classes)
        images.append(x)
        labels.append(y)
    x = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(np.concatenate(labels))


def cifar_classes(root, name: str = "cifar10", label: str = "fine", download: bool = False) -> list[str]:
    """Class names from the meta file, indexed by label."""
    spec = _spec(name)
    if label not in spec["names"]:
        raise ValueError(f"label: {spec['title']} has {sorted(spec['names'])} labels, got {label!r}")
    folder = locate_cifar(Path(root), spec, [spec["meta"]], download)
    path = folder / spec["meta"]
    meta = unpickle_arrays(path)
    names = meta.get(spec["names"][label])
    if not isinstance(names, list):
        raise ValueError(f"{path}: no list under key {spec['names'][label]!r} (keys: {sorted(meta)})")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _spec(name: str) -> dict:
    if name not in CIFAR_SPECS:
        raise ValueError(f"name: expected one of {sorted(CIFAR_SPECS)}, got {name!r}")
    return CIFAR_SPECS[name]


def locate_cifar(root: Path, spec: dict, needed: list[str], download: bool) -> Path:
    """The folder holding ``needed``: ``root/<folder>``, or ``root`` itself when it already is
    that folder; downloads when allowed and nothing is there."""
    layout = spec["train"] + spec["test"] + [spec["meta"]]
    candidates = [root / spec["folder"], root]
    for folder in candidates:
        if any((folder / f).is_file() for f in layout):
            missing = [f for f in needed if not (folder / f).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{folder}: incomplete {spec['title']} folder, missing {', '.join(missing)}; "
                    f"expected {spec['folder']}/{{{', '.join(layout)}}}")
            return folder
    expected = (f"expected {spec['folder']}/{{{', '.join(layout)}}} (the python version of the "
                f"dataset). Extract {spec['url']} into {root}")
    if download:
        parent = root.parent if root.name == spec["folder"] else root
        try:
            return download_and_extract(spec["url"], parent, spec["md5"], spec["folder"])
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{spec['title']} not found under {root} and {err}; {expected}") from err
    raise FileNotFoundError(f"{spec['title']} not found under {root}: {expected}, "
                            "or pass download=True on a machine that is online")


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, str/bytes and NumPy arrays; refuses any other global.
    (``_codecs.encode`` is how Python 3 writes bytes at pickle protocol 2.)"""

    _ALLOWED = {("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refuses global {module}.{name} (only NumPy arrays are allowed)")
        # Python 3 pickles made by NumPy 2 name numpy._core, older ones numpy.core: take either.
        for mod in (module, module.replace("numpy._core", "numpy.core"), module.replace("numpy.core", "numpy._core")):
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


def unpickle_arrays(path: Path) -> dict:
    """The dict in ``path`` with str keys, or a ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (EOFError, pickle.UnpicklingError) as err:
        what = "truncated pickle" if isinstance(err, EOFError) or "truncated" in str(err) else f"corrupt pickle ({err})"
        raise ValueError(f"{path}: {what}") from err
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            MemoryError) as err:
        raise ValueError(f"{path}: corrupt pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle_arrays(path)
    for key in ("data", label_key):
        if key not in batch:
            raise ValueError(f"{path}: no {key!r} key (keys: {sorted(batch)})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2:
        raise ValueError(f"{path}: data must be a 2-D array, got {type(data).__name__} "
                         f"of shape {getattr(data, 'shape', '?')}")
    if data.shape[1] != _PIXELS:
        raise ValueError(f"{path}: data has {data.shape[1]} columns, expected {_PIXELS}")
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: data has dtype {data.dtype}, expected uint8")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{path}: {label_key} are not integers ({err})") from err
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {labels.size} {label_key} for {len(data)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{path}: label {bad} out of range 0..{num_classes - 1}")
    return data, labels
