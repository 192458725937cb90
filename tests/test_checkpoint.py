"""Checkpoints: header + sha256 + torch.save bytes, written atomically with the previous one kept;
a truncated, corrupt or foreign file is reported and the previous one used; a run whose newest
checkpoint is corrupt resumes from the one before and ends with the uninterrupted run's record."""

import shutil

import pytest
import torch

from extrap import checkpoint
from extrap.train import TrainConfig, train
from extrap.engines import make_engine


def test_round_trip_and_rotation(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoint.save({"epoch": 1, "x": torch.arange(5)}, path)
    checkpoint.save({"epoch": 2, "x": torch.arange(6)}, path)
    assert checkpoint.load(path)["epoch"] == 2 and torch.equal(checkpoint.load(path)["x"], torch.arange(6))
    assert checkpoint.load(checkpoint.previous(path))["epoch"] == 1
    assert not path.with_name("ckpt.pt.tmp").exists()
    assert path.read_bytes().startswith(checkpoint.MAGIC)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-header", "empty"])
def test_damaged_files_are_refused_and_the_previous_one_used(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    checkpoint.save({"epoch": 1}, path)
    checkpoint.save({"epoch": 2}, path)
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) - 40], "flip": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:],
               "no-header": data.split(b"\n", 1)[1], "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        checkpoint.load(path)
    warnings = []
    found = checkpoint.load_latest(path, warn=warnings.append)
    assert [state["epoch"] for _, state in found] == [1]
    assert len(warnings) == 1 and str(path) in warnings[0] and "previous" in warnings[0]


def test_a_crash_before_the_rename_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoint.save({"epoch": 1}, path)
    path.with_name("ckpt.pt.tmp").write_bytes(b"EXTRAP-CHECKPOINT 1 abc\npartial")  # killed mid-write
    assert [s["epoch"] for _, s in checkpoint.load_latest(path)] == [1]


def test_only_tensors_and_plain_data_load(tmp_path):
    # a checksum-valid file holding an arbitrary class instance: weights_only refuses to build it
    import argparse

    path = tmp_path / "evil.pt"
    checkpoint.save({"epoch": 1, "obj": argparse.Namespace(cmd="rm -rf /")}, path)
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        checkpoint.load(path)


def _run(tmp_path, prefix, **overrides):
    from data import DigitsTask
    from models import build_model

    torch.manual_seed(0)
    cfg = TrainConfig(**{**dict(perturbation="extrap", local_batch=32, base_batch=32, base_lr=0.05, epochs=3,
                                schedule="step", milestones=(0.5,), checkpoint_every=1, log_every=7), **overrides})
    record = train(cfg, make_engine("virtual", 2), build_model("digits_cnn"), DigitsTask(),
                   checkpoint=tmp_path / prefix, log=print)
    curve = [{k: v for k, v in point.items() if k != "time_s"} for point in record["curve"]]
    return {**record, "curve": curve, "time_s": None}


def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_epoch(tmp_path, capsys):
    whole = _run(tmp_path, "whole")
    again = _run(tmp_path, "again")
    ckpt = tmp_path / "again.rank0.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # the epoch-3 checkpoint, torn
    capsys.readouterr()
    with pytest.warns(UserWarning, match="checksum mismatch") as reported:
        resumed = _run(tmp_path, "again")
    out, _ = capsys.readouterr()
    assert any(str(ckpt) in str(w.message) for w in reported)
    assert f"resumed from {ckpt}.prev at epoch 2" in out
    assert whole == again == resumed  # epoch 3 retrained from epoch 2's checkpoint, bit for bit
    assert [p["step"] for p in whole["trace"]] == list(range(7, 3 * 22 + 1, 7))  # the trace resumed too


def test_a_run_resumed_in_post_local_sgds_local_phase_ends_bit_for_bit(tmp_path):
    """Virtual workers share x_t until the switch (after epoch 1), then hold K models: the
    checkpoint after epoch 2 holds the K models and their momentum, and resuming from it ends
    with the uninterrupted run's record and state."""
    local = dict(post_local=True, switch_epoch=1.0, local_steps=4)
    whole = _run(tmp_path, "whole", **local)
    shutil.copy(tmp_path / "whole.rank0.pt.prev", tmp_path / "split.rank0.pt")  # after epoch 2
    after_two = checkpoint.unpack_worker_copies(checkpoint.load(tmp_path / "split.rank0.pt")["workers"])
    assert after_two["params"]["head.weight"].shape == (2, 10, 512)  # [K, ...]: one model per worker
    assert _run(tmp_path, "split", **local) == whole
    a, b = (checkpoint.load(tmp_path / f"{name}.rank0.pt") for name in ("whole", "split"))
    for key in ("workers", "optimizer"):
        x, y = torch.utils._pytree.tree_leaves(a[key]), torch.utils._pytree.tree_leaves(b[key])
        assert len(x) == len(y) and all(torch.equal(u, v) if torch.is_tensor(u) else u == v for u, v in zip(x, y))


# -- one copy of what K workers hold alike; written in the background; interval in minutes -------

def test_worker_copies_pack_losslessly():
    k = 4
    same = torch.randn(1, 3, 2).repeat(k, 1, 1)
    signed_zero = torch.zeros(k, 5)
    signed_zero[2, 1] = -0.0  # equal as numbers, not as bits
    nan = torch.full((k, 2), float("nan"))
    state = {"a": same, "b": [signed_zero, torch.randn(k, 3)], "c": (nan, torch.arange(k)), "d": torch.ones(k + 1),
             "e": 7, "f": torch.tensor(1.0)}
    packed = checkpoint.pack_worker_copies(state, k)
    assert packed["a"]["workers"] == k and packed["a"][checkpoint._SHARED].shape == (3, 2)
    assert torch.is_tensor(packed["b"][0]) and torch.is_tensor(packed["b"][1])  # −0.0 keeps its copies
    assert not torch.is_tensor(packed["c"][0])  # all NaN with the same bits: one copy
    assert torch.is_tensor(packed["d"]) and packed["e"] == 7
    back = checkpoint.unpack_worker_copies(packed)
    flat = lambda s: [s["a"], *s["b"], *s["c"], s["d"], s["f"]]  # noqa: E731
    for x, y in zip(flat(state), flat(back)):
        bits = lambda t: t.reshape(-1).view(torch.uint8) if t.is_floating_point() else t  # noqa: E731
        assert x.shape == y.shape and torch.equal(bits(x), bits(y))
        assert y.is_contiguous()
    assert checkpoint.pack_worker_copies(state, 1) is state


def test_background_writer_writes_the_same_file_and_reports_errors(tmp_path):
    obj = {"epoch": 3, "w": torch.randn(100)}
    checkpoint.save(obj, tmp_path / "direct.pt")
    writer = checkpoint.Writer()
    writer.save(obj, tmp_path / "background.pt")
    obj["w"].zero_()  # after save() returns, the state may change: the file holds the old one
    writer.wait()
    assert (tmp_path / "direct.pt").read_bytes() == (tmp_path / "background.pt").read_bytes()
    writer.save(obj, tmp_path / "missing" / "x.pt")
    with pytest.raises(FileNotFoundError):
        writer.wait()


def _resnet_run(tmp_path, epochs, prefix="ck", **overrides):
    """K = 16 virtual ResNet-20 workers with extrap-SGD and LARS on random images."""
    from data import ClassificationTask
    from models import build_model

    gen = torch.Generator().manual_seed(0)
    task = ClassificationTask(torch.randn(96, 3, 32, 32, generator=gen), torch.randint(0, 10, (96,), generator=gen),
                              torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))
    torch.manual_seed(0)
    cfg = TrainConfig(perturbation="extrap", local_batch=3, epochs=epochs, lars=True, weight_decay=1e-4,
                      **overrides)
    engine = make_engine("virtual", 16)
    record = train(cfg, engine, build_model("resnet20"), task, checkpoint=tmp_path / prefix)
    return record


def test_k16_resnet20_lars_checkpoint_is_small_and_resumes_bit_for_bit(tmp_path):
    """16 workers share one x_t and one momentum buffer (1.08 MB each); their local gradients,
    16 × 1.08 MB = 17.3 MB, are the real per-worker state. Before: 52 MB."""
    whole = _resnet_run(tmp_path, 2, "whole")
    size = (tmp_path / "whole.rank0.pt").stat().st_size
    print(f"K=16 ResNet-20 + LARS checkpoint: {size / 1e6:.2f} MB")
    assert size <= 25e6
    assert 16 * 4 * 269_722 < size  # the local gradients are all there
    shutil.copy(tmp_path / "whole.rank0.pt.prev", tmp_path / "split.rank0.pt")  # after epoch 1
    resumed = _resnet_run(tmp_path, 2, "split")
    assert resumed["curve"][0] == whole["curve"][0]  # from the checkpoint
    strip = lambda r: [{k: v for k, v in p.items() if k != "time_s"} for p in r["curve"]]  # noqa: E731
    assert strip(resumed) == strip(whole)
    a = checkpoint.load(tmp_path / "whole.rank0.pt")
    b = checkpoint.load(tmp_path / "split.rank0.pt")
    assert a["epoch"] == b["epoch"] == 2
    # synchronous training: one x_t and one momentum buffer; a local gradient per worker
    params = checkpoint.unpack_worker_copies(a["workers"])["params"]
    state = checkpoint.unpack_worker_copies(a["optimizer"])["state"]
    conv = next(s for s in state.values() if s["momentum_buffer"].shape == (16, 3, 3, 3))
    assert params["conv1.weight"].shape == (16, 3, 3, 3) and conv["local_grad"].shape == (16, 16, 3, 3, 3)
    for key in ("workers", "optimizer"):  # the states after epoch 2, bit for bit
        x, y = torch.utils._pytree.tree_leaves(a[key]), torch.utils._pytree.tree_leaves(b[key])
        assert len(x) == len(y) and all(torch.equal(u, v) if torch.is_tensor(u) else u == v for u, v in zip(x, y))


@pytest.mark.parametrize("minutes, saves", [(1e-9, 3), (1e6, 1)])
def test_checkpoint_interval_in_minutes(tmp_path, monkeypatch, minutes, saves):
    import extrap.train

    epochs, real = [], extrap.train.save_checkpoint
    monkeypatch.setattr(extrap.train, "save_checkpoint", lambda run, prefix, epoch, *a: (epochs.append(epoch),
                                                                                        real(run, prefix, epoch, *a)))
    from data import DigitsTask
    from models import build_model

    cfg = TrainConfig(perturbation="extrap", local_batch=32, epochs=3, checkpoint_every=100, checkpoint_minutes=minutes)
    train(cfg, make_engine("virtual", 2), build_model("digits_cnn"), DigitsTask(), checkpoint=tmp_path / "m")
    assert epochs == ([1, 2, 3] if saves == 3 else [3])
