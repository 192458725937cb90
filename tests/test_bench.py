"""`make bench` still runs: every measurement at toy sizes (`--tiny`), the report's two files and
their fields. The numbers of a tiny run mean nothing, so nothing here times anything."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, launcher_env


@pytest.mark.slow
def test_bench_runs_at_tiny_sizes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reproduce.bench", "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["tiny"] is True and report["command"] == "python -m reproduce.bench --tiny"
    r = report["results"]
    for key in ("train_step", "optimizer_step"):
        assert r[key]["ratio"] > 0 and set(r[key]["seconds"]) >= {"extrap-sgd"}
    assert set(r["optimizer_step"]["seconds"]) >= {"torch-sgd-foreach", "extrap-sgd", "extrap-none"}
    # the two-process part ran under mpirun: counts are exact even at toy sizes
    ar = r["mpi"]["allreduce"]
    assert ar["extrap-sgd"]["calls"] == ar["sgd"]["calls"] == 1
    assert ar["extrap-sgd"]["bytes"] == ar["ddp"]["bytes"] == 269_722 * 4
    assert r["mpi"]["processes"]["ratio"] > 0
    assert set(r["virtual"]["images_per_s"]) == {"batched", "loop", "single-model"}
    assert "skipped" in r["gpu"] or r["gpu"]["images_per_s"] > 0
    loop = r["train_loop"]  # train() itself, per phase, batched and by the loop
    assert set(loop["runs"]) == {"batched", "loop", "2 processes"}  # K processes sharing the device, under mpirun
    for run in loop["runs"].values():
        assert set(run["seconds"]) == {"data", "perturb", "forward+backward", "step", "evaluation", "checkpoint"}
        assert all(v > 0 for v in run["seconds"].values()) and run["images_per_s"] > 0
    text = (tmp_path / "bench.md").read_text()
    assert text.startswith("# extrap benchmarks") and text.count("\n| ") >= 7
