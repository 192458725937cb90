"""``--config FILE``: a user's own item file, run like the shipped items and checked like them."""

import json
import os
import subprocess
import sys

import pytest
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


def _records(out):
    return {(r["cell"], r["seed"]): r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}


def test_jobs_runs_several_at_once_and_computes_what_one_at_a_time_computes(tmp_path):
    """``--jobs 2``: the four runs in spawned processes, two at a time, each writing its output to
    its folder's log.txt; the records equal the serial ones (one CPU thread each, as here), and the
    same command then skips them all."""
    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump({**OWN, "scales": {"smoke": {"seeds": 2}}}))
    serial = _reproduce("--config", path, "--scale", "smoke", "--out", tmp_path / "one", "--no-progress")
    assert serial.returncode == 0, serial.stderr
    jobs = _reproduce("--config", path, "--scale", "smoke", "--out", tmp_path / "two", "--no-progress", "--jobs", 2)
    assert jobs.returncode == 0, jobs.stderr
    assert "4 runs, 2 at a time" in jobs.stdout and "virtual engine" not in jobs.stdout  # the runs' own lines: in logs
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert sorted(two) == sorted(one) == [("extrap-sgd", 0), ("extrap-sgd", 1), ("sgd", 0), ("sgd", 1)]
    for key in one:
        assert two[key]["final"] == one[key]["final"] and two[key]["trace"] == one[key]["trace"], key
        log = tmp_path / "two" / "my_study" / "default" / key[0] / f"seed{key[1]}" / "log.txt"
        assert "virtual engine, K=2 workers" in log.read_text()
    again = _reproduce("--config", path, "--scale", "smoke", "--out", tmp_path / "two", "--no-progress", "--jobs", 2)
    assert again.returncode == 0 and again.stdout.count("skip ") == 4, again.stderr


def test_jobs_reports_a_failed_run_as_one_line_keeps_the_others_and_starts_no_more(tmp_path):
    """Four runs, two at a time. The first finds another run's checkpoint in its folder (K = 4
    where K = 2 runs) and fails in its own process while the slow second one trains: that one
    finishes and keeps its record, the last two never start, and the failure is one line, exit 2,
    as without --jobs."""
    cells = {"sgd": {"perturbation": "none"}, "slow": {"perturbation": "none", "epochs": 15},
             "third": {"perturbation": "extrap"}, "fourth": {"perturbation": "extrap"}}
    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump({**OWN, "cells": cells}, sort_keys=False))  # the runs in this order
    four = _reproduce("--config", path, "--scale", "smoke", "--out", tmp_path / "four", "--no-progress",
                      "--workers", 4, "--only", "sgd")
    assert four.returncode == 0, four.stderr
    ours = tmp_path / "out" / "my_study" / "default" / "sgd" / "seed0"
    ours.mkdir(parents=True)
    (ours / "checkpoint.rank0.pt").write_bytes((tmp_path / "four" / ours.relative_to(tmp_path / "out") /
                                                "checkpoint.rank0.pt").read_bytes())
    proc = _reproduce("--config", path, "--scale", "smoke", "--out", tmp_path / "out", "--no-progress", "--jobs", 2)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("reproduce.my_study: default/sgd seed 0: ") and "holds another run's state" in line
    assert sorted(_records(tmp_path / "out")) == [("slow", 0)]
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("my_study/default/*/seed0")) == ["sgd", "slow"]


def test_jobs_under_a_launcher_is_refused_in_one_line_before_any_work(tmp_path):
    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump(OWN))
    proc = subprocess.run([sys.executable, "-m", "reproduce", "--config", str(path), "--scale", "smoke", "--out",
                           str(tmp_path / "out"), "--jobs", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**launcher_env(), "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "reproduce.my_study: --jobs 2: under a launcher each process is one worker of one run; run without --jobs"]
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads the process table from /proc (Linux)")
@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c", "runner-alone"])
def test_jobs_an_interrupt_ends_every_process_at_once(tmp_path, to_group):
    """SIGINT, to the process group as a terminal's Ctrl-C sends it or to the runner alone, once two
    runs are running at once (each has a checkpoint; neither can finish): the runner and its run
    processes end within seconds, with the one-line message and exit 130, no process left behind,
    and no run started after it."""
    import signal
    import time

    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump({**OWN, "common": {**OWN["common"], "epochs": 500}, "scales": {"smoke": {"seeds": 2}}}))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "reproduce", "--config", str(path), "--scale", "smoke", "--out", str(out),
                             "--no-progress", "--jobs", "2"], cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoints = lambda: list(out.glob("my_study/default/*/seed*/checkpoint.rank0.pt"))  # noqa: E731
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(checkpoints()) < 2:
            time.sleep(0.05)
        assert len(checkpoints()) == 2, proc.stderr.read() if proc.poll() is not None else "no checkpoints"
        (os.killpg if to_group else os.kill)(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["reproduce: interrupted; the same command resumes from the last checkpoint"]
    deadline = time.time() + 10
    while time.time() < deadline and _live_in_group(proc.pid):
        time.sleep(0.1)
    assert not _live_in_group(proc.pid), "a run process outlived the runner"
    assert not (out / "records.jsonl").exists() and len(list(out.glob("my_study/default/*/seed*"))) == 2


def _live_in_group(pgid: int) -> list[int]:
    """The processes of group ``pgid`` still running (not zombies waiting for init to reap them)."""
    from pathlib import Path

    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live
