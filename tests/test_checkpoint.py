"""Checkpoints: header + sha256 + torch.save bytes, written atomically with the previous one kept;
a truncated, corrupt or foreign file is reported and the previous one used; a run whose newest
checkpoint is corrupt resumes from the one before and ends with the uninterrupted run's record."""

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


def _run(tmp_path, prefix):
    from data import DigitsTask
    from models import build_model

    torch.manual_seed(0)
    cfg = TrainConfig(perturbation="extrap", local_batch=32, base_batch=32, base_lr=0.05, epochs=3,
                      schedule="step", milestones=(0.5,), checkpoint_every=1)
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
    resumed = _run(tmp_path, "again")
    out, err = capsys.readouterr()
    assert "checksum mismatch" in err and str(ckpt) in err
    assert f"resumed from {ckpt}.prev at epoch 2" in out
    assert whole == again == resumed  # epoch 3 retrained from epoch 2's checkpoint, bit for bit
