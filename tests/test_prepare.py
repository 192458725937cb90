"""A user's clone: the configs read datasets/ (data.prepare): a missing dataset is fetched there
with its checksum, the smoke and laptop scales' CIFAR-10 slice is cut from it, and offline the
run ends in one line saying what to download and where to put it. Local archives stand in for
the downloads."""

import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from data import cifar
from data.prepare import write_cifar10_subset


def _full_cifar10(root, per_batch=940, test=850, seed=0):
    """A stand-in for the official CIFAR-10 (Python 2 pickles, bytes keys), a few more images
    per batch than the slice takes; returns the folder."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)],
                                                        b"num_vis": 3072}, protocol=2))
    return folder


def _archive(tmp_path):
    folder = _full_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return folder, archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_the_slice_is_the_first_images_of_each_batch(tmp_path):
    full = _full_cifar10(tmp_path / "full")
    out = write_cifar10_subset(full, tmp_path / "datasets" / "cifar10-subset")
    for split, per_file in (("train", 932), ("test", 846)):
        x, y = cifar.load_cifar(out.parent, split=split)
        xf, yf = cifar.load_cifar(full.parent, split=split)
        files = 5 if split == "train" else 1
        rows = torch.cat([torch.arange(i * (len(xf) // files), i * (len(xf) // files) + per_file) for i in range(files)])
        assert torch.equal(x, xf[rows]) and torch.equal(y, yf[rows])
    assert cifar.cifar_classes(out.parent) == [f"c{i}" for i in range(10)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["cifar-10-batches-py"]  # no staging folder left


def test_a_slice_cut_from_the_shared_slice_is_the_shared_slice(tmp_path):
    """The project's own slice has exactly 932 and 846 images per file: cutting it again gives
    the same images and labels, so a slice cut from the official CIFAR-10 is that slice."""
    shared = SHARED_DATA / "cifar10-subset" / "cifar-10-batches-py"
    if not shared.is_dir():
        pytest.skip(f"{shared} not present (the real data slices live in ../shared/data beside the project)")
    out = write_cifar10_subset(shared, tmp_path)
    for split in ("train", "test"):
        a, b = cifar.load_cifar(out.parent, split=split), cifar.load_cifar(shared.parent, split=split)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _smoke(tmp_path, data):
    from reproduce.runner import main

    return main("table1", ["--scale", "smoke", "--workers", "2", "--data-dir", str(data), "--only", "sgd",
                           "--variants", "resnet20", "--seeds", "1", "--no-progress", "--out", str(tmp_path / "out"),
                           "epochs=1", "task_kwargs.max_train_images=256"])


def test_a_clone_without_the_data_fetches_it_then_runs(tmp_path, monkeypatch, capsys):
    _, archive, md5 = _archive(tmp_path)
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar10", dict(cifar.CIFAR_SPECS["cifar10"], url=archive.as_uri(), md5=md5))
    monkeypatch.setenv("EXTRAP_DOWNLOAD", "1")
    datasets = tmp_path / "datasets"
    assert _smoke(tmp_path, datasets) == 0, capsys.readouterr().err
    assert sorted(p.name for p in datasets.iterdir()) == ["cifar-10-batches-py", "cifar10-subset"]
    assert (tmp_path / "out" / "records.jsonl").read_text().count("\n") == 1
    x, _ = cifar.load_cifar(datasets / "cifar10-subset")
    assert len(x) == 5 * 932


def test_offline_a_clone_without_the_data_ends_in_one_line_saying_where_to_get_it(tmp_path, monkeypatch, capsys):
    absent = tmp_path / "no-such-archive.tar.gz"
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar10", dict(cifar.CIFAR_SPECS["cifar10"], url=absent.as_uri()))
    monkeypatch.setenv("EXTRAP_DOWNLOAD", "1")
    datasets = tmp_path / "datasets"
    assert _smoke(tmp_path, datasets) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert absent.as_uri() in line and str(datasets) in line and "extract" in line
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("EXTRAP_DOWNLOAD", "0")  # never fetching: the same line, without trying
    datasets.mkdir()
    assert _smoke(tmp_path, datasets) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert absent.as_uri() in line and str(datasets) in line
