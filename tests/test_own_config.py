"""``--config FILE``: a user's own item file, run like the shipped items and checked like them."""

import json
import subprocess
import sys

import yaml

from conftest import ROOT, launcher_env

OWN = {
    "about": {"title": "My study"},
    "common": {"task": "digits", "model": "digits_cnn", "workers": 2, "local_batch": 32, "base_batch": 32,
               "epochs": 1, "schedule": "constant", "weight_decay": 0.0, "engine": "virtual", "base_lr": 0.05,
               "log_every": 2, "target_loss": [2.0, 1.0]},
    "scales": {"smoke": {"seeds": 1}},
    "cells": {"sgd": {"perturbation": "none"}, "extrap-sgd": {"perturbation": "extrap"}},
}


def _reproduce(*args):
    return subprocess.run([sys.executable, "-m", "reproduce", *map(str, args)], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=300)


def test_an_own_item_file_runs_and_its_records_carry_its_name(tmp_path):
    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump(OWN))
    proc = _reproduce("--config", path, "--scale", "smoke", "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert sorted(r["cell"] for r in records) == ["extrap-sgd", "sgd"]
    assert {r["item"] for r in records} == {"my_study"} and records[0]["about"]["title"] == "My study"
    tables = subprocess.run([sys.executable, "-m", "results", str(tmp_path / "out")], cwd=ROOT, env=launcher_env(),
                            capture_output=True, text=True, timeout=300)
    assert tables.returncode == 0, tables.stderr
    assert (tmp_path / "out" / "my_study.study.md").read_text().count("extrap-sgd") >= 1  # its study table


def test_an_own_item_file_is_checked_as_the_shipped_ones(tmp_path):
    bad = {**OWN, "cells": {"sgd": {"perturbation": "none", "lr": 0.1}}}
    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = _reproduce("--config", path, "--scale", "smoke", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "reproduce.my_study: lr: unknown key (did you mean base_lr?) (my_study default/sgd)"]
    assert not (tmp_path / "out").exists()
    shadow = tmp_path / "table1.yaml"
    shadow.write_text(yaml.safe_dump(OWN))
    for args, message in [(["--config", tmp_path / "none.yaml"], "no such file"), ([], "--config FILE: expected"),
                          (["--config", shadow], "table1 is one of the paper's items")]:
        proc = _reproduce(*args, "--scale", "smoke", "--out", tmp_path / "out")
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
