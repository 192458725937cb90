"""``make bench``: every measurement in ``bench/``, each in a process (or processes) of its own, and
the report of them side by side: ``docs/bench.md`` and ``docs/bench.json``.

    python -m bench [--out docs] [--tiny] [--device cpu|cuda] [--one-process]

Each script runs as ``python -m bench.<script> --out <its JSON>``; those that need several
processes under ``torchrun --standalone --nproc-per-node N`` (torch's launcher: nothing to
install), one CPU thread each unless ``OMP_NUM_THREADS`` says otherwise. A script that fails
fails the bench. ``--tiny`` runs every script at toy sizes (CI checks that the bench still runs;
its numbers mean nothing); ``--one-process`` leaves out the multi-process runs. About 5 min on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import (allreduce, data_throughput, gpu, optimizer_step, processes, train_loop, train_step,
                   virtual_workers)
from bench.common import pick_device

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """One process (``ranks`` of them under torchrun) of one script; its result goes under
    ``results[key]`` (``results[key][variant]`` where a script runs several times)."""

    key: str
    args: list[str] = field(default_factory=list)
    variant: str | None = None
    ranks: int = 1
    env: dict[str, str] = field(default_factory=dict)
    device: bool = True  # whether the script takes --device


def runs(tiny: bool) -> list[Run]:
    """The report's runs, in its order."""
    k = train_loop.SIZES["tiny" if tiny else "full"]["workers"]
    return [
        Run("train_step"),
        Run("optimizer_step"),
        Run("allreduce", ranks=allreduce.PROCESSES, device=False),
        Run("virtual_workers"),
        Run("processes", ranks=processes.PROCESSES, device=False),
        Run("gpu", device=False),
        *(Run("train_loop", ["--engine", kind], variant=kind) for kind in ("batched", "loop")),
        # K ranks sharing one device: Gloo, since NCCL refuses two ranks on one GPU
        Run("train_loop", ["--engine", "processes"], variant="processes", ranks=k, env={"EXTRAP_BACKEND": "gloo"}),
        Run("train_loop", ["--host-reads"], variant="host_reads"),
        Run("data_throughput"),
    ]


def command(run: Run, out: Path, tiny: bool, device: str | None) -> list[str]:
    script = [f"bench.{run.key}", *run.args, "--out", str(out), *(["--tiny"] if tiny else []),
              *(["--device", device] if device and run.device else [])]
    if run.ranks == 1:
        return [sys.executable, "-m", *script]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(run.ranks),
            "-m", *script]


def execute(run: Run, tiny: bool, device: str | None) -> dict:
    """The run's result; raises with the tail of its output if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **run.env}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = command(run, out, tiny, device)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(cmd[1:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def markdown(report: dict) -> str:
    r = report["results"]
    lines = ["# extrap benchmarks", "",
             f"Measured by `{report['command']}` on {report['machine']} (torch {report['torch']}, "
             f"{report['threads']} CPU threads, device {report['device']}), {report['date']}.",
             "Each ratio comes from variants timed in alternating rounds in one process (medians); each "
             "script's header in `bench/` says what it measures and what a healthy result is.", "",
             "| # | measurement | result |", "|---|---|---|",
             train_step.row(r["train_step"], report["implied_step_ratio"]),
             optimizer_step.row(r["optimizer_step"])]
    for key, script in (("allreduce", allreduce), ("processes", processes)):
        lines.append(f"| {3 if key == 'allreduce' else 5} | {key} | not measured: {r[key]['skipped']} |"
                     if "skipped" in r[key] else script.row(r[key]))
    lines += [virtual_workers.row(r["virtual_workers"]), gpu.row(r["gpu"]), *train_loop.rows(r["train_loop"]),
              data_throughput.row(r["data_throughput"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs", help="folder for bench.md and bench.json (default: docs)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: checks that the bench runs")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--one-process", action="store_true", help="leave out the runs of several processes")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for run in runs(args.tiny):
        t0 = time.perf_counter()
        result = ({"skipped": "--one-process"} if args.one_process and run.ranks > 1
                  else execute(run, args.tiny, args.device))
        if run.variant is None:
            results[run.key] = result
        else:
            results.setdefault(run.key, {})[run.variant] = result
        print(f"{run.key}{f' ({run.variant})' if run.variant else ''}: {time.perf_counter() - t0:.0f} s", flush=True)
    # extrap-SGD's extra work is its optimizer step's extra time: the step ratio it implies,
    # finer than the timing noise of two whole training steps
    opt_s, step_s = results["optimizer_step"]["seconds"], results["train_step"]["seconds"]
    implied = 1 + (opt_s["extrap-sgd"] - opt_s["extrap-none"]) / step_s["sgd"]
    report = {"command": "python -m bench" + (" --tiny" if args.tiny else ""), "tiny": args.tiny,
              "date": time.strftime("%Y-%m-%d"), "implied_step_ratio": implied,
              "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPUs",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device": str(pick_device(args.device)), "results": results}
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
