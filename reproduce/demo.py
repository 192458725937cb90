"""The demo (``make demo``): mini-batch SGD against extrap-SGD and a noise variant at a large batch.

What it shows: on scikit-learn's digits (1,437 training images, 360 test; embedded, offline) a
small CNN is trained by K = 4 workers at a global batch of 256 — a sixth of the training set per
step — with Nesterov momentum, linear learning-rate scaling from a small-batch rate of 0.01 at
batch 32 (so η = 0.08; at 0.05, η = 0.4, the warmup makes the loss spike to ~100 before it
recovers), a 2-epoch warmup and step decay at 50 % and 75 % of training: 30 epochs, 150 steps.
Three methods, each over ``--seeds`` seeds:

- ``sgd``: mini-batch SGD (perturbation ``none``);
- ``extrap-sgd``: each worker's gradient at x_t − γ g_{t-1}^k, γ the unscaled rate (0.01, decayed);
- ``smoothout``: filter-wise uniform noise of scale α = 0.05 (SmoothOut, the framework's ``filter-uniform``; docs/method.md).

It prints, per method, the steps to reach a full-training-set loss of ``--target`` (mean over
seeds; "—" if a seed never does) and the final test accuracy (mean ± std), and writes
``results.md``, ``records.jsonl`` and ``demo.png`` (training loss and test accuracy against
steps) to ``--out``. These numbers come from this demo's own settings, not from the paper.

Launch: ``python -m reproduce.demo`` starts itself under ``mpirun -np 4`` (one process per worker)
and falls back to 4 virtual workers in one process — saying so — when MPI cannot start. About a
minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from data import DigitsTask
from extrap.engines import make_engine, under_launcher
from extrap.train import TrainConfig, steps_to_target, train
from models import build_model

METHODS = {  # cell -> (perturbation, gamma); γ None: the unscaled learning-rate schedule
    "sgd": ("none", None),
    "extrap-sgd": ("extrap", None),
    "smoothout": ("filter-uniform", 0.05),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", default="auto", choices=["auto", "processes", "virtual", "single"])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--local-batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--base-lr", type=float, default=0.01, help="small-batch rate at batch 32")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.01, help="training-loss target")
    ap.add_argument("--out", default="runs/demo")
    args = ap.parse_args(argv)
    for key in ("workers", "local_batch", "epochs", "seeds"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')}: expected >= 1, got {getattr(args, key)}")
    return args


def mpirun_command() -> list[str] | None:
    """mpirun's argument list (root and oversubscription flags as needed), or None if absent.
    ``$MPIRUN`` names another launcher; otherwise the one beside this Python (.venv), or PATH's."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which(os.environ.get("MPIRUN", "mpirun"), path=search)
    if exe is None:
        return None
    cmd = [exe, "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def launch_under_mpi(args: argparse.Namespace, argv: list[str]) -> bool:
    """Re-run this script under mpirun; False (after saying why) if MPI cannot start."""
    mpirun = mpirun_command()
    if mpirun is None:
        print("MPI could not start: no mpirun found (make install puts one in .venv)")
        return False
    probe = subprocess.run([*mpirun, "-np", str(args.workers), sys.executable, "-c",
                            "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"MPI could not start ({last[0]})")
        return False
    print(f"launching {args.workers} worker processes: mpirun -np {args.workers}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run([*mpirun, "-np", str(args.workers), sys.executable, "-m", "reproduce.demo",
                          *argv, "--engine", "processes"], env=env)
    if run.returncode != 0:
        raise SystemExit(run.returncode)
    return True


def run_demo(args: argparse.Namespace) -> None:
    engine = make_engine(args.engine, args.workers, device="cpu")
    task = DigitsTask(device=engine.device)
    out = Path(args.out)
    records = []
    if engine.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "records.jsonl").write_text("")
    for cell, (perturbation, gamma) in METHODS.items():
        for seed in range(args.seeds):
            cfg = TrainConfig(perturbation=perturbation, gamma=gamma, local_batch=args.local_batch,
                              base_batch=32, base_lr=args.base_lr, warmup_epochs=2, epochs=args.epochs,
                              weight_decay=1e-4, seed=seed)
            torch.manual_seed(seed)
            record = train(cfg, engine, build_model("digits_cnn"), task,
                           log=print if seed == 0 and cell == "sgd" else None)
            record.update(item="demo", cell=cell, method=cell, seed=seed)
            records.append(record)
            if engine.is_main:
                with open(out / "records.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"  {cell:<11} seed {seed}: train loss {record['final']['train_loss']:.4f}, "
                      f"test top-1 {record['final']['test_top1']:.2f}%, "
                      f"steps to loss {args.target}: {steps_to_target(record['curve'], args.target)}",
                      flush=True)
    if engine.is_main:
        table = summarise(records, args.target)
        print("\n" + table)
        (out / "results.md").write_text(table + "\n")
        plot(records, out / "demo.png")
        print(f"\nwrote {out / 'results.md'}, {out / 'records.jsonl'}, {out / 'demo.png'}")
    engine.close()


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarise(records: list[dict], target: float) -> str:
    """The demo's table: steps to the loss target and final accuracy, per method."""
    first = records[0]
    lines = [f"digits, {first['engine']} engine, K={first['workers']} workers, global batch "
             f"{first['global_batch']}, {first['steps']} steps, n={len({r['seed'] for r in records})} seeds",
             "",
             f"| method | steps to train loss ≤ {target} | final train loss | final test top-1 (%) |",
             "|---|---|---|---|"]
    for cell in METHODS:
        rs = [r for r in records if r["cell"] == cell]
        steps = [steps_to_target(r["curve"], target) for r in rs]
        reached = [s for s in steps if s is not None]
        steps_txt = (f"{statistics.mean(reached):.0f}" if len(reached) == len(steps) else
                     f"{len(reached)}/{len(steps)} seeds reach it")
        loss = statistics.mean(r["final"]["train_loss"] for r in rs)
        lines.append(f"| {cell} | {steps_txt} | {loss:.4f} | {_mean_std([r['final']['test_top1'] for r in rs])} |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for color, cell in zip(("C0", "C1", "C2"), METHODS):
        for i, r in enumerate(r for r in records if r["cell"] == cell):
            steps = [p["step"] for p in r["curve"]]
            ax_loss.plot(steps, [p["train_loss"] for p in r["curve"]], color=color, alpha=0.8,
                         label=cell if i == 0 else None)
            ax_acc.plot(steps, [p["test_top1"] for p in r["curve"]], color=color, alpha=0.8,
                        label=cell if i == 0 else None)
    ax_loss.set(yscale="log", xlabel="step", ylabel="training loss at x_t (full set)")
    ax_acc.set(xlabel="step", ylabel="test top-1 (%)", ylim=(80, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    first = records[0]
    fig.suptitle(f"digits, K={first['workers']} workers, B={first['global_batch']} ({first['engine']} engine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.engine == "auto" and args.workers > 1 and not under_launcher():
        if launch_under_mpi(args, argv):
            return
        print(f"falling back to {args.workers} virtual workers in this process", flush=True)
        args.engine = "virtual"
    run_demo(args)


if __name__ == "__main__":
    main()
