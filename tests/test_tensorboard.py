"""``--tensorboard``: a run's trace points and evaluations as TensorBoard scalars, read back from
the event files and compared with the run's record."""

import json

import pytest
import yaml

pytest.importorskip("tensorboard", reason="TensorBoard is an optional extra: pip install 'extrap[tensorboard]'")

CONFIG = {
    "about": {"title": "TensorBoard test"},
    "common": {"task": "digits", "model": "digits_cnn", "workers": 2, "local_batch": 32, "base_batch": 32,
               "epochs": 2, "schedule": "constant", "log_every": 3, "weight_decay": 0.0, "engine": "virtual",
               "base_lr": 0.05},
    "scales": {"smoke": {"seeds": 1}},
    "cells": {"extrap-sgd": {"perturbation": "extrap"}},
}


@pytest.fixture
def item(tmp_path, monkeypatch):
    import reproduce.config as config

    path = tmp_path / "tb.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setattr(config, "config_path", lambda name: path)
    return "figure1"  # its script; the config is the one above


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_trace_points_and_evaluations_are_read_back_from_the_event_files(item, tmp_path):
    from reproduce.runner import main

    out = tmp_path / "out"
    assert main(item, ["--scale", "smoke", "--out", str(out), "--no-progress", "--tensorboard"]) == 0
    (record,) = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    (folder,) = list(out.rglob("tensorboard"))
    scalars = _scalars(folder)
    assert len(record["trace"]) >= 4 and len(record["curve"]) == 2
    for key in ("lr", "gamma", "batch_loss", "train_loss_subset"):
        got = scalars[f"trace/{key}"]
        assert [s for s, _ in got] == [p["step"] for p in record["trace"]]
        assert [v for _, v in got] == pytest.approx([p[key] for p in record["trace"]], rel=1e-6)
    for key in ("train_loss", "batch_loss", "test_top1"):
        got = scalars[f"eval/{key}"]
        assert got == [(p["step"], pytest.approx(p[key], rel=1e-6)) for p in record["curve"]]
    assert record["config"]["tensorboard"] is True


def test_without_the_flag_no_event_files(item, tmp_path):
    from reproduce.runner import main

    out = tmp_path / "out"
    assert main(item, ["--scale", "smoke", "--out", str(out), "--no-progress"]) == 0
    assert not list(out.rglob("tensorboard"))


def test_without_the_package_the_flag_is_one_line_saying_how_to_install_it(item, tmp_path, monkeypatch, capsys):
    import reproduce.tensorboard
    from reproduce.runner import main

    monkeypatch.setattr(reproduce.tensorboard, "available", lambda: False)
    assert main(item, ["--scale", "smoke", "--out", str(tmp_path / "out"), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'extrap[tensorboard]'" in err[0]
