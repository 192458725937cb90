"""The demo (``make demo``): mini-batch SGD against extrap-SGD and a noise variant at a large batch.

What it shows: on scikit-learn's digits (1,437 training images, 360 test; embedded, offline) a
small CNN is trained by K = 4 workers at a global batch of 256 — a sixth of the training set per
step — with Nesterov momentum, linear learning-rate scaling from a small-batch rate of 0.01 at
batch 32 (so η = 0.08), a 2-epoch warmup and step decay at 50 % and 75 % of training: 30 epochs,
150 steps. Three methods, three seeds each:

- ``sgd``: mini-batch SGD (perturbation ``none``);
- ``extrap-sgd``: each worker's gradient at x_t − γ g_{t-1}^k, γ the unscaled rate (0.01, decayed);
- ``smoothout``: filter-wise uniform noise of scale α = 0.05 (SmoothOut, the framework's ``filter-uniform``; docs/method.md).

The settings are ``reproduce/demo.yaml``; the same runner as the paper's items runs them
(``reproduce/runner.py``: run folders, records, resume) and ``results/`` collates them
(``results.study``). It prints, per method, the steps until the training loss at x_t on 512 fixed
training images is at most ``target_loss`` (0.01), with a 95 % interval over the seeds, and the
final test accuracy, and writes ``results.md`` (that table), ``records.jsonl`` and ``demo.png``
(training loss and test accuracy against steps) to ``--out`` (default ``runs/demo``). These numbers
come from this demo's own settings, not from the paper. A rerun skips the finished runs.

Launch: ``python -m reproduce.demo`` starts itself under ``mpirun -np 4`` (one process per worker)
and falls back to 4 virtual workers in one process — saying so — when MPI cannot start. About a
minute on 2 CPU cores. ``--scale smoke`` runs 2 epochs of one seed; ``key=value`` overrides any
setting (``epochs=10``, ``base_lr=0.05``, ``target_loss=0.05``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from extrap.engines import under_launcher
from reproduce import DEMO, config, runner

DEFAULT_SCALE, DEFAULT_OUT = "laptop", "runs/demo"


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


def launch_under_mpi(workers: int, argv: list[str]) -> int | None:
    """Re-run this script under ``mpirun -np workers``: its exit status, or None (after saying
    why) when MPI cannot start."""
    mpirun = mpirun_command()
    if mpirun is None:
        print("MPI could not start: no mpirun found (make install puts one in .venv)")
        return None
    probe = subprocess.run([*mpirun, "-np", str(workers), sys.executable, "-c",
                            "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"MPI could not start ({last[0]})")
        return None
    print(f"launching {workers} worker processes: mpirun -np {workers}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([*mpirun, "-np", str(workers), sys.executable, "-m", "reproduce.demo",
                           *argv, "--engine", "processes"], env=env).returncode


def collate(out: Path) -> None:
    """The demo's table (printed, and ``results.md``) and plot (``demo.png``), by ``results/``."""
    from results import load_records
    from results.figures import write_study_figure
    from results.study import build_study

    records = load_records(out / "records.jsonl")
    table = build_study(records, DEMO).to_markdown()
    print("\n" + table)
    (out / "results.md").write_text(table, encoding="utf-8")
    write_study_figure(records, DEMO, out / "demo.png")
    print(f"wrote {out / 'results.md'}, {out / 'records.jsonl'}, {out / 'demo.png'}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--scale" or a.startswith("--scale=") for a in argv):
        argv = ["--scale", DEFAULT_SCALE, *argv]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv = ["--out", DEFAULT_OUT, *argv]
    if "--no-progress" not in argv:  # a line per run instead: four ranks' bars would interleave
        argv = ["--no-progress", *argv]
    if under_launcher():  # a rank of the launch below (or of the user's own mpirun): run, no more
        return runner.main(DEMO, argv)
    args = config.parse_args(DEMO, argv)
    try:
        workers = config.plan(DEMO, args)[0].settings["workers"]
    except config.ConfigError as e:
        print(f"reproduce.{DEMO}: {e}", file=sys.stderr)
        return 2
    code = None
    if args.engine in (None, "auto") and workers > 1:
        code = launch_under_mpi(workers, argv)
        if code is None:
            print(f"falling back to {workers} virtual workers in this process", flush=True)
            argv += ["--engine", "virtual"]
    if code is None:
        code = runner.main(DEMO, argv)
    if code == 0:
        collate(Path(args.out))
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # in the process waiting on mpirun (the runner says its own)
        print(f"\nreproduce.{DEMO}: interrupted; the same command resumes from the last checkpoint", file=sys.stderr)
        sys.exit(130)
