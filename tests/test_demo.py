"""`make demo` end to end, at its smoke scale: virtual workers, and the mpirun launch."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, launcher_env


def run_demo(tmp_path, *args):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "reproduce.demo", "--scale", "smoke", "--no-progress",
                           "--out", str(out), *args], env=launcher_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, proc.stdout


def check_outputs(out, engine, workers):
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["cell"] for r in records] == ["sgd", "extrap-sgd", "smoothout"]
    for r in records:
        assert r["engine"] == engine and r["workers"] == workers and r["status"] == "completed"
        assert r["steps"] == 2 * (1437 // workers // 64)
        assert 0 <= r["final"]["test_top1"] <= 100 and r["final"]["train_loss"] > 0
    table = (out / "results.md").read_text()  # collated by results/ with the config's labels
    assert all(f"| {label} |" in table for label in ("mini-batch SGD", "extrap-SGD", "SmoothOut"))
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_on_virtual_workers(tmp_path):
    out, stdout = run_demo(tmp_path, "--engine", "virtual", "--workers", "4")
    check_outputs(out, "virtual", 4)
    assert "steps to target" in stdout


@pytest.mark.slow
def test_demo_launches_itself_under_mpirun(tmp_path, mpirun):
    out, stdout = run_demo(tmp_path, "--workers", "2")
    assert "mpirun -np 2" in stdout
    check_outputs(out, "processes", 2)


def test_demo_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reproduce.demo", "--workers", "0"], env=launcher_env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--workers" in proc.stderr


def test_demo_falls_back_to_virtual_workers_when_mpi_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MPIRUN", "false")  # a launcher that always fails
    out, stdout = run_demo(tmp_path, "--workers", "2")
    assert "MPI could not start" in stdout and "falling back to 2 virtual workers" in stdout
    check_outputs(out, "virtual", 2)
