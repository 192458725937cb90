"""The datasets a run reads, in the folder it names: found there, fetched there, or one line
saying where to get them.

A run reads ``<data_dir>/<data_subdir>`` (``datasets/`` in the configs, or ``--data-dir``):

- CIFAR-10/100: ``cifar-10-batches-py/`` or ``cifar-100-python/`` there, fetched from the
  official archive (md5 checked) when missing.
- the CIFAR-10 slice of the smoke and laptop scales (``data_subdir: cifar10-subset``): the first
  932 images of each training batch and the first 846 of the test batch, 4,660 and 846 in all,
  written from the full CIFAR-10 (itself fetched when missing) by ``write_cifar10_subset``. The
  project's own machines keep the same slice beside the checkout.
- WikiText-2 (``wikitext-2/``) and Multi30k (``multi30k/``): fetched with their checksums when
  missing (``data.wikitext``, ``data.multi30k``).

Offline, a missing dataset ends in a ``FileNotFoundError`` of one line naming what to download
and where to put it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .cifar import CIFAR_SPECS, locate_cifar, unpickle_arrays
from .multi30k import ensure_multi30k
from .wikitext import ensure_wikitext

__all__ = ["SUBSET", "dataset_root", "ensure_dataset", "write_cifar10_subset"]

SUBSET = {"folder": "cifar10-subset", "train_per_batch": 932, "test": 846}


def dataset_root(settings: dict) -> Path:
    """The folder a run reads its dataset from."""
    return Path(settings.get("data_dir") or ".") / (settings.get("data_subdir") or "")


def write_cifar10_subset(full: Path, out: Path, train_per_batch: int = SUBSET["train_per_batch"],
                         test: int = SUBSET["test"]) -> Path:
    """``out/cifar-10-batches-py``: the first ``train_per_batch`` images of each of the five
    training batches of the full CIFAR-10 folder ``full`` and the first ``test`` of its test
    batch, with their labels, in the same layout; the meta file copied. Written to a temporary
    folder and renamed into place."""
    import shutil
    import tempfile

    spec = CIFAR_SPECS["cifar10"]
    target = out / spec["folder"]
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".subset-"))
    try:
        folder = staging / spec["folder"]
        folder.mkdir()
        for name, n in [*((b, train_per_batch) for b in spec["train"]), *((b, test) for b in spec["test"])]:
            batch = unpickle_arrays(full / name)
            data = np.asarray(batch.get("data", batch.get(b"data")))
            labels = list(batch.get("labels", batch.get(b"labels")))
            if len(data) < n:
                raise ValueError(f"{full / name}: {len(data)} images, fewer than the {n} the slice takes")
            with open(folder / name, "wb") as f:
                pickle.dump({"batch_label": f"{name}, first {n}", "labels": labels[:n], "data": data[:n].copy()}, f)
        shutil.copyfile(full / spec["meta"], folder / spec["meta"])
        try:
            staging.joinpath(spec["folder"]).rename(target)
        except OSError:
            if not target.is_dir():  # another process (a rank of the same job) wrote it first: the same files
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_dataset(settings: dict, fetch: bool = True) -> None:
    """The dataset of a run's ``settings`` is in place, fetched if ``fetch`` and it is missing;
    otherwise a one-line ``FileNotFoundError`` says what to download and where to put it."""
    task, root = settings.get("task"), dataset_root(settings)
    try:
        if task == "cifar" and (settings.get("data_subdir") or "") == SUBSET["folder"]:
            _ensure_subset(root, fetch)
        elif task == "cifar":
            spec = CIFAR_SPECS[settings.get("dataset", "cifar10")]
            locate_cifar(root, spec, spec["train"] + spec["test"], fetch)
        elif task == "wikitext2":
            ensure_wikitext(root, fetch)
        elif task == "multi30k":
            ensure_multi30k(root, fetch)
    except FileNotFoundError as e:
        raise FileNotFoundError(" ".join(str(e).split())) from None


def _ensure_subset(root: Path, fetch: bool) -> None:
    spec = CIFAR_SPECS["cifar10"]
    if any((root / spec["folder"] / f).is_file() for f in spec["train"]):
        return
    full_root = root.parent
    try:
        full = locate_cifar(full_root, spec, spec["train"] + spec["test"] + [spec["meta"]], fetch)
    except FileNotFoundError as e:
        failed = f", and downloading it failed ({str(e.__cause__).split(' (', 1)[-1].rsplit(')', 1)[0]})" \
            if e.__cause__ is not None else ""
        raise FileNotFoundError(
            f"the CIFAR-10 slice is not in {root / spec['folder']}, nor the full CIFAR-10 it is cut from in "
            f"{full_root / spec['folder']}{failed}: download {spec['url']} (md5 {spec['md5']}) and extract it "
            f"into {full_root}; the slice is then cut from it") from None
    write_cifar10_subset(full, root)
