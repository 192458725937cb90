"""`make bench` still runs and still measures: every script in bench/ at toy sizes (`--tiny`), the
report's two files, and in them numbers that exist, are finite and positive, and counts that
match a hand count. A tiny run's times mean nothing, so no time is compared with a target."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, launcher_env

PARAMETER_BYTES = 269_722 * 4  # ResNet-20's gradient in float32
UNIT_MIB = PARAMETER_BYTES / 2**20  # one copy of the model's parameters
PHASES = {"prepare", "build_optimizer", "data", "perturb", "forward_backward", "step", "evaluation", "checkpoint"}


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def hand_count(steps: int) -> dict:
    """Calls of each phase in one epoch of `steps` steps, one evaluation and one checkpoint."""
    per_step = {"data", "perturb", "forward_backward", "step"}
    return {p: steps if p in per_step else 1 for p in PHASES}


@pytest.mark.slow
def test_bench_runs_at_tiny_sizes(tmp_path):
    from bench import train_loop, virtual_workers

    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["tiny"] is True and report["command"] == "python -m bench --tiny"
    assert positive(report["implied_step_ratio"])
    r = report["results"]

    for key, variants in (("train_step", {"sgd", "extrap-sgd", "sgd-again"}),
                          ("optimizer_step", {"torch-sgd-foreach", "extrap-sgd", "extrap-none", "extrap-sgd-foreach"})):
        assert set(r[key]["seconds"]) >= variants
        assert all(positive(s) for s in r[key]["seconds"].values())
        assert positive(r[key]["ratio"]) and r[key]["round_min"] <= r[key]["ratio"] <= r[key]["round_max"]

    # two processes under torchrun: counts are exact even at toy sizes
    ar = r["allreduce"]
    assert ar["extrap-sgd"] == ar["sgd"] == {"calls": 1, "bytes": PARAMETER_BYTES}
    assert ar["ddp"]["bytes"] == ar["extrap-sgd-ddp"]["bytes"] == PARAMETER_BYTES
    assert ar["ddp"]["calls"] >= 1 and ar["extrap-sgd-ddp"]["calls"] == ar["ddp"]["calls"]
    pr = r["processes"]
    assert set(pr["seconds"]) == {"sgd", "extrap-sgd", "sgd-again", "extrap-sgd-ddp"}
    assert all(positive(s) for s in pr["seconds"].values()) and positive(pr["ratio"])

    vw = r["virtual_workers"]
    assert set(vw["images_per_s"]) == {"batched", "loop", "single-model"}
    assert all(positive(v) for v in vw["images_per_s"].values())
    assert vw["engine_default"] == "loop"  # on a CPU
    # the training state, by hand: shared, at least x_t + K points + their K gradients; as K models,
    # at least K parameters + K gradients + K saved x_t; and sharing x_t holds less
    k = virtual_workers.SIZES["tiny"]["workers"]
    assert vw["workers"] == k >= 4
    assert (1 + 2 * k) * UNIT_MIB < vw["state_mib"]["shared"] < vw["state_mib"]["models"]
    assert 3 * k * UNIT_MIB < vw["state_mib"]["models"] < 8 * k * UNIT_MIB

    assert "skipped" in r["gpu"] if not torch.cuda.is_available() else positive(r["gpu"]["images_per_s"])

    loop = r["train_loop"]  # train() itself, from its profiler ranges
    assert set(loop) == {"batched", "loop", "processes", "host_reads"}
    steps = train_loop.SIZES["tiny"]["steps"]
    for name in ("batched", "loop", "processes"):
        run = loop[name]
        assert run["engine"] == name and run["steps"] == steps
        assert {p: m["calls"] for p, m in run["phases"].items()} == hand_count(steps), name
        assert all(positive(m["seconds"]) for m in run["phases"].values()), run["phases"]
        assert sum(run["phases"][p]["seconds"] for p in train_loop.STEP_PHASES) < run["total_s"]
        assert positive(run["images_per_s"]) and positive(run["peak_memory_mib"])
    assert loop["processes"]["workers"] == train_loop.SIZES["tiny"]["workers"]  # K ranks under torchrun
    reads = loop["host_reads"]["host_reads"]
    assert reads and all(isinstance(n, int) and n > 0 for n in reads.values())  # the epoch's end reads its loss

    dt = r["data_throughput"]
    assert positive(dt["data_img_s"]) and positive(dt["model_img_s"])
    assert dt["batches"]["data"] > dt["batches"]["model"] > 0

    text = (tmp_path / "bench.md").read_text()
    assert text.startswith("# extrap benchmarks")
    items = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")][1:]
    assert items == ["1", "2", "3", "5", "4", "6", "7", "7", "7", "7", "8"]  # item 7: three runs and the host reads
    assert "nan" not in text and "not measured" not in text.replace("| 6 | GPU throughput | not measured", "")


def test_train_loop_phases_are_its_profiler_ranges():
    """The ranges extrap.train places, read from one profile: each phase once per step or per
    epoch, and the step phases within the run's wall-clock time."""
    from bench import train_loop

    steps = 3
    run = train_loop.run(dict(workers=2, batch=2, steps=steps), torch.device("cpu"), "loop")
    assert {p: m["calls"] for p, m in run["phases"].items()} == hand_count(steps)
    assert all(positive(m["seconds"]) for m in run["phases"].values())
    assert sum(m["seconds"] for m in run["phases"].values()) < run["total_s"]
