"""Dataset readers on files fabricated in each dataset's own format and on the real slices in
../shared/data; malformed input; atomic download; on-device augmentation; per-worker sharding."""

import gzip
import hashlib
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data import cifar, multi30k, wikitext
from data.augment import CIFAR10_MEAN, CIFAR10_STD, Augment, random_crop_flip, step_seed, worker_generator
from data.sharding import shard_indices

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR10_SLICE = SHARED / "cifar10-subset"
WIKITEXT_SLICE = SHARED / "wikitext-2"
MULTI30K_SLICE = SHARED / "multi30k"


def need(path: Path):
    if not path.is_dir():
        pytest.skip(f"{path} not present (the real data slices live in ../shared/data beside the project)")
    return path


# ---------------------------------------------------------------- fabricated CIFAR files

def dump(path: Path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def fake_batch(rng, n, num_classes=10, key=b"labels", cols=3072):
    return {b"batch_label": b"fake", b"data": rng.integers(0, 256, (n, cols), dtype=np.uint8),
            key: rng.integers(0, num_classes, n).tolist()}


def write_cifar10(root: Path, n=6, seed=0) -> dict:
    """The official Python 2 layout: bytes keys, data N×3072 uint8, labels a list."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": fake_batch(rng, n + i) for i in range(1, 6)}
    batches["test_batch"] = fake_batch(rng, n)
    for name, b in batches.items():
        dump(folder / name, b)
    dump(folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072})
    return batches


def write_cifar100(root: Path, n=7, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        b = fake_batch(rng, n, 100, b"fine_labels")
        b[b"coarse_labels"] = rng.integers(0, 20, n).tolist()
        dump(folder / split, b)
        out[split] = b
    dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    return out


def test_cifar10_fabricated_round_trip(tmp_path):
    batches = write_cifar10(tmp_path)
    x, y = cifar.load_cifar(tmp_path, "cifar10", "train")
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert x.shape == (len(data), 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    for i, c, yy, xx in [(0, 0, 0, 0), (3, 1, 5, 17), (len(data) - 1, 2, 31, 31), (11, 2, 31, 0)]:
        assert x[i, c, yy, xx].item() == data[i, c * 1024 + yy * 32 + xx]
    assert torch.equal(x.reshape(len(data), -1), torch.from_numpy(data))
    assert y.tolist() == labels
    # `root` may also name the cifar-10-batches-py folder itself
    xt, yt = cifar.load_cifar(tmp_path / "cifar-10-batches-py", split="test")
    assert torch.equal(xt.reshape(len(xt), -1), torch.from_numpy(batches["test_batch"][b"data"]))
    assert yt.tolist() == batches["test_batch"][b"labels"]
    assert cifar.cifar_classes(tmp_path) == [f"class{i}" for i in range(10)]


def test_cifar10_python3_pickles_with_str_keys(tmp_path):
    """Re-pickled files (str keys, protocol 4, as in the shared slice) read the same."""
    batches = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for name, b in batches.items():
        dump(folder / name, {k.decode(): v for k, v in b.items()}, protocol=4)
    x, y = cifar.load_cifar(tmp_path, split="test")
    assert torch.equal(x.reshape(len(x), -1), torch.from_numpy(batches["test_batch"][b"data"]))
    assert y.tolist() == batches["test_batch"][b"labels"]


def test_cifar100_fabricated_fine_and_coarse(tmp_path):
    batches = write_cifar100(tmp_path)
    for split in ("train", "test"):
        x, y = cifar.load_cifar(tmp_path, "cifar100", split)
        data = batches[split][b"data"]
        assert x[2, 1, 7, 9].item() == data[2, 1 * 1024 + 7 * 32 + 9]
        assert torch.equal(x.reshape(len(x), -1), torch.from_numpy(data))
        assert y.tolist() == batches[split][b"fine_labels"]
        _, yc = cifar.load_cifar(tmp_path / "cifar-100-python", "cifar100", split, label="coarse")
        assert yc.tolist() == batches[split][b"coarse_labels"]
    assert cifar.cifar_classes(tmp_path, "cifar100", "coarse") == [f"c{i}" for i in range(20)]
    with pytest.raises(ValueError, match="label"):
        cifar.load_cifar(tmp_path, "cifar10", "train", label="coarse")


# ---------------------------------------------------------------- malformed CIFAR input

def test_cifar_truncated_pickle_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"data_batch_3: truncated pickle"):
        cifar.load_cifar(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update({b"data": b[b"data"][:, :3071].copy()}), r"data_batch_2: data has 3071 columns, expected 3072"),
    (lambda b: b.update({b"labels": b[b"labels"][:-1]}), r"data_batch_2: 7 labels for 8 images"),
    (lambda b: b[b"labels"].__setitem__(0, 10), r"data_batch_2: label 10 out of range 0\.\.9"),
    (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), r"data_batch_2: data has dtype float32"),
    (lambda b: b.pop(b"labels"), r"data_batch_2: no 'labels' key"),
])
def test_cifar_malformed_batch_names_file_and_fault(tmp_path, change, message):
    batches = write_cifar10(tmp_path)
    b = batches["data_batch_2"]
    change(b)
    dump(tmp_path / "cifar-10-batches-py" / "data_batch_2", b)
    with pytest.raises(ValueError, match=message):
        cifar.load_cifar(tmp_path)


def test_cifar_missing_files_list_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cifar.load_cifar(tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and "cifar-10-batches-py" in msg and "download=True" in msg
    assert all(f in msg for f in ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"])
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/\{train, test, meta\}"):
        cifar.load_cifar(tmp_path, "cifar100")
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"cifar-10-batches-py: incomplete CIFAR-10 folder, missing data_batch_4"):
        cifar.load_cifar(tmp_path)
    assert cifar.load_cifar(tmp_path, split="test")[0].shape[0] == 6  # the test split is whole


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    write_cifar10(tmp_path)
    dump(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": Evil(), b"labels": []})
    with pytest.raises(ValueError, match=r"test_batch: corrupt pickle .*refuses global"):
        cifar.load_cifar(tmp_path, split="test")
    assert not marker.exists()


# ---------------------------------------------------------------- download and atomic extraction

def make_archive(tmp_path: Path) -> tuple[Path, str, dict]:
    src = tmp_path / "src"
    batches = write_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest(), batches


def point_spec_at(monkeypatch, archive: Path, md5: str):
    spec = dict(cifar.CIFAR_SPECS["cifar10"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar10", spec)


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    archive, md5, batches = make_archive(tmp_path)
    point_spec_at(monkeypatch, archive, md5)
    dest = tmp_path / "dest"
    with pytest.raises(FileNotFoundError):
        cifar.load_cifar(dest, download=False)
    x, y = cifar.load_cifar(dest, split="test", download=True)
    assert torch.equal(x.reshape(len(x), -1), torch.from_numpy(batches["test_batch"][b"data"]))
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]  # no temporary left


@pytest.mark.parametrize("fault", ["checksum", "truncated archive", "offline"])
def test_failed_download_leaves_nothing(tmp_path, monkeypatch, fault):
    archive, md5, _ = make_archive(tmp_path)
    if fault == "checksum":
        md5 = "0" * 32
    elif fault == "truncated archive":
        broken = tmp_path / "broken.tar.gz"
        broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
        archive, md5 = broken, hashlib.md5(broken.read_bytes()).hexdigest()
    else:
        archive = tmp_path / "absent.tar.gz"
    point_spec_at(monkeypatch, archive, md5)
    dest = tmp_path / "dest"
    error = FileNotFoundError if fault == "offline" else ValueError
    message = {"checksum": "does not match the expected", "truncated archive": "broken archive",
               "offline": "could not download"}[fault]
    with pytest.raises(error, match=message) as err:
        cifar.load_cifar(dest, download=True)
    if fault == "offline":  # says what to put where
        assert "cifar-10-batches-py/{data_batch_1" in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists()  # neither the dataset folder, nor temporaries, nor the new root
    dest.mkdir()
    with pytest.raises(error, match=message):
        cifar.load_cifar(dest, download=True)
    assert list(dest.iterdir()) == []  # a root the user made is kept, empty


# ---------------------------------------------------------------- WikiText-2 and Multi30k downloads

def wikitext_archive(tmp_path: Path) -> tuple[Path, str]:
    """A local stand-in for the official zip: wikitext-2/wiki.{train,valid,test}.tokens."""
    write_wikitext(tmp_path / "src" / "wikitext-2")
    archive = tmp_path / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted((tmp_path / "src" / "wikitext-2").iterdir()):
            z.write(f, f"wikitext-2/{f.name}")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def multi30k_files(tmp_path: Path) -> dict:
    """Local stand-ins for the six official files, with their sha256."""
    write_multi30k(tmp_path / "src", gz=True)
    return {p.name: (p.as_uri(), hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted((tmp_path / "src").iterdir())}


@pytest.mark.parametrize("dataset", ["wikitext-2", "multi30k"])
def test_text_datasets_download_verify_and_extract(tmp_path, monkeypatch, dataset):
    dest = tmp_path / "dest"
    if dataset == "wikitext-2":
        archive, md5 = wikitext_archive(tmp_path)
        monkeypatch.setattr(wikitext, "WIKITEXT2", {**wikitext.WIKITEXT2, "url": archive.as_uri(), "md5": md5})
        with pytest.raises(FileNotFoundError, match="download=True"):
            wikitext.load_wikitext(dest)
        wt = wikitext.load_wikitext(dest, download=True)
        assert wt.vocab.itos[:3] == ["=", "Title", "<eos>"] and len(wt.ids["test"]) == 4
    else:
        monkeypatch.setattr(multi30k, "MULTI30K_FILES", multi30k_files(tmp_path))
        with pytest.raises(FileNotFoundError, match="download=True"):
            multi30k.prepare_multi30k(dest)
        data = multi30k.prepare_multi30k(dest, download=True)
        assert data.text["val"] == (EN, DE)
    assert [p.name for p in dest.iterdir()] == [dataset]  # no temporary left
    again = (wikitext.load_wikitext(dest, download=True).ids["test"] if dataset == "wikitext-2"
             else multi30k.prepare_multi30k(dest, download=True).text["val"])  # present: read, not fetched
    assert len(again) > 0


@pytest.mark.parametrize("dataset", ["wikitext-2", "multi30k"])
@pytest.mark.parametrize("fault", ["checksum", "offline"])
def test_a_failed_text_download_leaves_nothing_and_says_where_files_go(tmp_path, monkeypatch, dataset, fault):
    dest = tmp_path / "dest"
    if dataset == "wikitext-2":
        archive, md5 = wikitext_archive(tmp_path)
        url = (tmp_path / "absent.zip").as_uri() if fault == "offline" else archive.as_uri()
        monkeypatch.setattr(wikitext, "WIKITEXT2", {**wikitext.WIKITEXT2, "url": url,
                                                    "md5": "0" * 32 if fault == "checksum" else md5})
        load = lambda: wikitext.load_wikitext(dest, download=True)  # noqa: E731
        where = "wiki.{train,valid,test}.tokens"
    else:
        files = multi30k_files(tmp_path)
        name = "val.de.gz"  # one bad file of six spoils the lot
        files[name] = ((tmp_path / "absent.gz").as_uri(), files[name][1]) if fault == "offline" else (files[name][0], "0" * 64)
        monkeypatch.setattr(multi30k, "MULTI30K_FILES", files)
        load = lambda: multi30k.prepare_multi30k(dest, download=True)  # noqa: E731
        where = "train.en.gz"
    error, message = {"checksum": (ValueError, "does not match the expected"),
                      "offline": (FileNotFoundError, "could not download")}[fault]
    with pytest.raises(error, match=message) as err:
        load()
    if fault == "offline":
        assert where in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists()  # neither the dataset folder, nor temporaries, nor the new root


# ---------------------------------------------------------------- real CIFAR-10 slice

@pytest.fixture(scope="module")
def cifar_slice():
    root = need(CIFAR10_SLICE)
    return cifar.load_cifar(root, split="train"), cifar.load_cifar(root, split="test")


def test_cifar10_slice_counts_and_labels(cifar_slice):
    (x, y), (xt, yt) = cifar_slice
    assert x.shape == (4660, 3, 32, 32) and xt.shape == (846, 3, 32, 32)
    assert len(y) == 4660 and len(yt) == 846
    assert set(y.unique().tolist()) == set(range(10)) and set(yt.unique().tolist()) <= set(range(10))
    raw = pickle.load(open(CIFAR10_SLICE / "cifar-10-batches-py" / "data_batch_2", "rb"), encoding="bytes")
    assert torch.equal(x[932:1864].reshape(932, -1), torch.from_numpy(raw["data"]))
    assert cifar.cifar_classes(CIFAR10_SLICE)[:2] == ["airplane", "automobile"]


def test_normalised_slice_has_zero_mean_unit_std(cifar_slice):
    (x, _), _ = cifar_slice
    z = Augment(CIFAR10_MEAN, CIFAR10_STD).normalize(x)
    assert z.dtype == torch.float32
    assert z.mean((0, 2, 3)).abs().max() < 0.05
    assert (z.std((0, 2, 3)) - 1).abs().max() < 0.05


# ---------------------------------------------------------------- augmentation

def images(b=256, seed=0):
    return torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_augment_deterministic_per_seed_and_different_across_workers():
    x, aug = images(), Augment()
    a = aug(x, worker_generator(seed=3, worker=0))
    assert a.shape == (256, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, aug(x, worker_generator(seed=3, worker=0)))
    assert not torch.equal(a, aug(x, worker_generator(seed=3, worker=1)))
    assert not torch.equal(a, aug(x, worker_generator(seed=4, worker=0)))
    # float input in [0, 1] gives the same result as uint8
    assert torch.allclose(a, aug(x.float() / 255, worker_generator(seed=3, worker=0)), atol=1e-5)
    seeds = {step_seed(0, w, e, s) for w in range(4) for e in range(3) for s in range(5)}
    assert len(seeds) == 60 and step_seed(0, 1, 2, 3) == step_seed(0, 1, 2, 3)


def test_crops_are_shifts_of_the_padded_image_and_half_are_flipped():
    x = images(512)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    found = torch.zeros(512, dtype=torch.long)
    offsets, flips = torch.full((512, 2), -1), torch.zeros(512, dtype=torch.bool)
    for oy in range(9):
        for ox in range(9):
            crop = padded[:, :, oy:oy + 32, ox:ox + 32]
            for flip in (False, True):
                hit = (out == (crop.flip(3) if flip else crop)).flatten(1).all(1)
                found += hit
                offsets[hit] = torch.tensor([oy, ox])
                flips[hit] = flip
    assert (found == 1).all()  # every output is exactly one shift (and maybe mirror) of its input
    oy, ox = offsets[0].tolist()
    hand = padded[0, :, oy:oy + 32, ox:ox + 32]
    assert torch.equal(out[0], hand.flip(2) if flips[0] else hand)
    assert set(offsets[:, 0].tolist()) == set(range(9)) == set(offsets[:, 1].tolist())
    assert 0.4 < flips.float().mean().item() < 0.6


def test_normalize_matches_the_formula():
    x = images(8)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(Augment().normalize(x), (x.float() / 255 - mean) / std, atol=1e-5)
    no_aug = Augment(padding=0, flip=False)
    assert torch.allclose(no_aug(x, torch.Generator()), no_aug.normalize(x))


# ---------------------------------------------------------------- WikiText-2

def write_wikitext(folder: Path, splits=("train", "valid", "test")):
    text = {"train": " = Title = \n\n the cat sat . \n the dog <unk> ran \n",
            "valid": " the cat ran . \n\n",
            "test": " a bird sat \n"}
    folder.mkdir(parents=True, exist_ok=True)
    for s in splits:
        (folder / f"wiki.{s}.tokens").write_text(text[s], encoding="utf-8")
    return text


def test_wikitext_fabricated_vocab_and_ids(tmp_path):
    text = write_wikitext(tmp_path / "wikitext-2")
    wt = wikitext.load_wikitext(tmp_path)  # the parent of wikitext-2/ works too
    words = [w for line in text["train"].split("\n")[:-1] for w in line.split() + ["<eos>"]]
    assert wt.vocab.itos[:6] == ["=", "Title", "<eos>", "the", "cat", "sat"]
    assert [wt.vocab.itos[i] for i in wt.ids["train"]] == words
    assert len(wt.ids["train"]) == 11 + 4  # 11 words + one <eos> per line, blank ones included
    unk = wt.vocab.stoi["<unk>"]
    assert [wt.vocab.itos[i] if i != unk else "?" for i in wt.ids["test"]] == ["?", "?", "sat", "<eos>"]


def test_wikitext_missing_train_split_and_vocab_from_valid(tmp_path):
    write_wikitext(tmp_path, ("valid", "test"))
    with pytest.raises(FileNotFoundError, match=r"missing wiki\.train\.tokens \(found: wiki\.test\.tokens, "
                                                r"wiki\.valid\.tokens\).*vocab_split='valid'"):
        wikitext.load_wikitext(tmp_path)
    wt = wikitext.load_wikitext(tmp_path, vocab_split="valid", splits=("valid", "test"))
    assert wt.vocab_split == "valid" and set(wt.ids) == {"valid", "test"}
    assert wt.vocab.itos[:5] == ["the", "cat", "ran", ".", "<eos>"]


def test_batchify_and_bptt_windows():
    ids = torch.arange(103)
    src = wikitext.batchify(ids, 4)
    assert src.shape == (25, 4) and torch.equal(src[:, 1], torch.arange(25, 50))
    x, y = wikitext.get_batch(src, 0, 10)
    assert x.shape == y.shape == (10, 4) and torch.equal(y, x + 1)
    x, y = wikitext.get_batch(src, 20, 10)  # the last window is shorter
    assert x.shape == (4, 4) and torch.equal(y[-1], src[-1])


def test_wikitext_worker_streams_are_disjoint_contiguous():
    ids = torch.arange(1003)
    streams = [wikitext.worker_stream(ids, 4, w) for w in range(4)]
    assert torch.equal(torch.cat(streams), ids[:1000])
    assert all(torch.equal(s, torch.arange(w * 250, (w + 1) * 250)) for w, s in enumerate(streams))
    with pytest.raises(ValueError, match="worker"):
        wikitext.worker_stream(ids, 4, 4)


def test_wikitext_slice_token_counts():
    root = need(WIKITEXT_SLICE)
    wt = wikitext.load_wikitext(root.parent, vocab_split="valid", splits=("valid", "test"))
    # the README's counts include one <eos> per line (3,760 and 4,358 lines)
    assert len(wt.ids["valid"]) == 217_646 and len(wt.ids["test"]) == 245_569
    eos = wt.vocab.stoi["<eos>"]
    assert (wt.ids["valid"] == eos).sum() == 3760 and (wt.ids["test"] == eos).sum() == 4358
    first = [wt.vocab.itos[i] for i in wt.ids["test"][:6]]
    assert first == ["<eos>", "=", "Robert", "<unk>", "=", "<eos>"]


# ---------------------------------------------------------------- Multi30k

EN = ["Two dogs run.", "A man, in a red t-shirt, runs!", "Two cats sleep.", "A dog runs."]
DE = ["Zwei Hunde rennen.", "Ein Mann in einem roten T-Shirt rennt!", "Zwei Katzen schlafen.", "Ein Hund rennt."]


def write_multi30k(folder: Path, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    for split in multi30k.SPLITS:
        for lang, lines in (("en", EN), ("de", DE)):
            data = ("\n".join(lines) + "\n").encode("utf-8")
            if gz:
                (folder / f"{split}.{lang}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / f"{split}.{lang}").write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_multi30k_fabricated_plain_and_gzip(tmp_path, gz):
    write_multi30k(tmp_path / "multi30k", gz)
    assert multi30k.read_pairs(tmp_path, "val") == (EN, DE)
    m = multi30k.prepare_multi30k(tmp_path / "multi30k", min_freq=2)
    assert m.src_vocab.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    # min_freq 2 keeps the tokens seen twice or more in train, most frequent first
    assert set(m.src_vocab.itos[4:]) == {".", ",", "two", "a", "runs"}
    assert m.src_vocab.itos[4] == "."
    ids = m.ids["train"][0][0]
    assert ids[0] == multi30k.BOS and ids[-1] == multi30k.EOS
    assert m.src_vocab.decode(ids) == ["two", "<unk>", "<unk>", "."]
    assert multi30k.tokenize(EN[1]) == ["a", "man", ",", "in", "a", "red", "t-shirt", ",", "runs", "!"]
    assert multi30k.detokenize(multi30k.tokenize(EN[1])) == EN[1].lower()
    src, tgt = m.ids["train"]
    x, y = multi30k.collate(src, tgt, torch.tensor([1, 0]))
    assert x.shape == (2, len(src[1])) and y.shape == (2, len(tgt[1]))  # pair 1 is the longest
    assert torch.equal(x[1, :len(src[0])], src[0]) and (x[1, len(src[0]):] == multi30k.PAD).all()
    assert torch.equal(y[0], tgt[1])


def test_multi30k_mismatched_and_missing_files(tmp_path):
    write_multi30k(tmp_path, gz=False)
    (tmp_path / "val.de").write_text("\n".join(DE[:3]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"val\.en has 4 lines but .*val\.de has 3"):
        multi30k.read_pairs(tmp_path, "val")
    (tmp_path / "test_2016_flickr.de").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing test_2016_flickr\.de \(or test_2016_flickr\.de\.gz\)"):
        multi30k.read_pairs(tmp_path, "test_2016_flickr")


def test_bleu_on_ids():
    refs = ["Two dogs run.", "A man sleeps!"]
    vocab = multi30k.Vocab.build([multi30k.tokenize(r) for r in refs], min_freq=1)
    hyps = [vocab.encode(multi30k.tokenize(r)) for r in refs]
    assert multi30k.bleu(hyps, refs, vocab) == pytest.approx(100)
    padded = multi30k.pad_batch(hyps)  # padding after <eos> is ignored
    assert multi30k.bleu(padded, refs, vocab) == pytest.approx(100)
    worse = [hyps[0], vocab.encode(["a", "man", "run", "!"])]
    assert multi30k.bleu(worse, refs, vocab) < 100


def test_bucket_batches_sort_within_chunks():
    lengths = torch.tensor([5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11])
    shard = torch.tensor([0, 3, 6, 9, 1, 4, 7, 10, 2, 5])
    batches = multi30k.bucket_batches(lengths, shard, batch_size=3, chunk=2)
    assert [len(b) for b in batches] == [3, 3, 3]  # the shard's remainder is dropped
    assert torch.equal(torch.cat(batches[:2]).sort().values, shard[:6].sort().values)
    assert lengths[torch.cat(batches[:2])].tolist() == sorted(lengths[shard[:6]].tolist())
    again = multi30k.bucket_batches(lengths, shard, 3, 2, generator=torch.Generator().manual_seed(1))
    assert sorted(map(tuple, map(torch.Tensor.tolist, again))) == sorted(map(tuple, map(torch.Tensor.tolist, batches)))


@pytest.fixture(scope="module")
def multi30k_slice():
    return multi30k.prepare_multi30k(need(MULTI30K_SLICE), min_freq=2)


def test_multi30k_slice_counts_and_self_bleu(multi30k_slice):
    m = multi30k_slice
    assert {s: (len(a), len(b)) for s, (a, b) in m.text.items()} == {
        "train": (29000, 29000), "val": (1014, 1014), "test_2016_flickr": (1000, 1000)}
    refs = m.text["test_2016_flickr"][1]
    import sacrebleu
    assert sacrebleu.corpus_bleu(refs, [refs]).score == pytest.approx(100)
    # through our tokeniser, ids and detokeniser (every word in the vocabulary): still 100
    tokens = [multi30k.tokenize(r) for r in refs]
    vocab = multi30k.Vocab.build(tokens, min_freq=1)
    assert multi30k.bleu([vocab.encode(t) for t in tokens], refs, vocab) == pytest.approx(100)
    # with the train vocabulary (min_freq 2) unknown words cost some BLEU, but not most of it
    assert 70 < multi30k.bleu(m.ids["test_2016_flickr"][1], refs, m.tgt_vocab) < 100


# ---------------------------------------------------------------- sharding of every training set

def training_set_sizes(tmp_path):
    write_cifar10(tmp_path / "c10")
    write_cifar100(tmp_path / "c100")
    write_multi30k(tmp_path / "m30k", gz=True)
    sizes = {"cifar10": len(cifar.load_cifar(tmp_path / "c10")[1]),
             "cifar100": len(cifar.load_cifar(tmp_path / "c100", "cifar100")[1]),
             "multi30k": len(multi30k.read_pairs(tmp_path / "m30k", "train")[0])}
    if CIFAR10_SLICE.is_dir():
        sizes["cifar10 slice"] = len(cifar.load_cifar(CIFAR10_SLICE)[1])
    if MULTI30K_SLICE.is_dir():
        sizes["multi30k slice"] = len(multi30k.read_pairs(MULTI30K_SLICE, "train")[0])
    return sizes


def test_every_training_set_shards_disjointly(tmp_path):
    for name, n in training_set_sizes(tmp_path).items():
        for k in (1, 2, 4):
            if n < k:
                continue
            shards = [shard_indices(n, k, w, epoch=1, seed=7) for w in range(k)]
            union = torch.cat(shards)
            assert len(union) == k * (n // k) and len(union.unique()) == len(union), name
            assert union.min() >= 0 and union.max() < n, name
            # the union is the epoch's permutation (less its remainder), the same on every call
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(7 * 1_000_003 + 1))
            assert torch.equal(union, perm[:k * (n // k)]), name
            assert torch.equal(shards[-1], shard_indices(n, k, k - 1, epoch=1, seed=7)), name
        if n >= 8:
            assert not torch.equal(shard_indices(n, 2, 0, 0), shard_indices(n, 2, 0, 1)), name


def test_wikitext_training_stream_shards(tmp_path):
    write_wikitext(tmp_path)
    ids = wikitext.load_wikitext(tmp_path).ids["train"]
    streams = [wikitext.worker_stream(ids, 3, w) for w in range(3)]
    assert torch.equal(torch.cat(streams), ids[:3 * (len(ids) // 3)])
    if WIKITEXT_SLICE.is_dir():
        ids = wikitext.load_wikitext(WIKITEXT_SLICE, "valid", ("valid",)).ids["valid"]
        assert torch.equal(torch.cat([wikitext.worker_stream(ids, 8, w) for w in range(8)]), ids[:8 * (len(ids) // 8)])


def test_generator_must_live_on_the_batch_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU: the generator/batch device check only bites across devices")
    x = images(4).cuda()
    with pytest.raises(ValueError, match="generator"):
        random_crop_flip(x, torch.Generator())
    out = Augment()(x, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == x.device and out.dtype == torch.float32
