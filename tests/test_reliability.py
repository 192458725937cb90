"""Crash safety on real smoke runs (CIFAR-10 slice):

- a whole run killed with SIGKILL at three points, one of them half-way through a checkpoint
  write, and rerun each time with the same command, ends with the records of an uninterrupted
  run, bit for bit;
- under `mpirun -np 2`, a killed rank ends the job at once, and a hung rank ends it after the
  collective timeout; either way with a message naming the failure, no record, and a cell the
  same command resumes.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA, find_mpirun, launcher_env
from run_records import records, strip_times

needs_data = pytest.mark.skipif(not (SHARED_DATA / "cifar10-subset").is_dir(),
                                reason=f"needs the CIFAR-10 slice in {SHARED_DATA} (beside the checkout in CI)")
# 2 epochs of 24 steps (1,536 images at B = 64): a cell lasts several seconds, long enough to be
# killed in, on any machine these tests run on
SMALL = ["epochs=2", "task_kwargs={max_train_images: 1536, eval_train_samples: 256}", "probe_every=0", "local_batch=32"]


def figure1(out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "reproduce.figure1", "--scale", "smoke", "--no-progress",
            "--out", str(out), *extra]


def ckpt_dir(out: Path, cell: str) -> Path:
    return out / "figure1" / "default" / cell / "seed0"


def wait_for(predicate, proc, timeout=600, what="") -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start(cmd, env=None, log=None):
    return subprocess.Popen(cmd, cwd=ROOT, env=env or launcher_env(), stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL)


def finish(cmd, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env or launcher_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@needs_data
@pytest.mark.slow
def test_three_kills_one_mid_checkpoint_then_the_same_records(tmp_path):
    cells = ["--only", "sgd,extrap-sgd", *SMALL]
    whole = tmp_path / "whole"
    finish(figure1(whole, *cells))
    killed = tmp_path / "killed"
    cmd = figure1(killed, *cells)
    rng = random.Random(7)
    kills = []

    def kill_at_random(after: Path, what: str, lo: float, hi: float) -> None:
        """Start the command, wait for ``after`` to exist, then SIGKILL it lo..hi s later."""
        proc = start(cmd)
        wait_for(after.exists, proc, what=what)
        time.sleep(rng.uniform(lo, hi))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(what)

    # 1: a random moment while the first cell trains
    kill_at_random(killed / "figure1.smoke.resolved.yaml", "the run to start", 2.0, 8.0)

    # 2: half-way through writing a checkpoint (the test's launcher makes the writer pause there)
    proc = start([sys.executable, str(ROOT / "tests" / "pause_in_checkpoint.py"), "30", *cmd[2:]])
    tmp_files = lambda: list(killed.glob("figure1/default/*/seed0/checkpoint.rank0.pt.tmp"))  # noqa: E731
    wait_for(lambda: any(p.stat().st_size > 100 for p in tmp_files()), proc, what="a checkpoint write")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp_files(), "the kill came after the write"
    kills.append("mid-checkpoint")

    # 3: a random moment in the second cell (or between cells)
    kill_at_random(killed / "records.jsonl", "the first cell's record", 1.0, 6.0)

    done = finish(cmd)
    assert "skip default/sgd seed 0" in done.stdout  # finished cells are not run again
    a = {r["cell"]: strip_times(r) for r in records(whole)}
    b = {r["cell"]: strip_times(r) for r in records(killed)}
    assert sorted(a) == sorted(b) == ["extrap-sgd", "sgd"] and len(records(killed)) == 2, kills
    assert a == b, kills  # bit for bit on CPU


def rank_pid(rank: int, marker: str) -> int | None:
    """The pid of Open MPI's rank ``rank`` whose command line has ``marker``."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() + b"\0" in env and marker.encode() in cmdline:
            return int(d.name)
    return None


@needs_data
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc (Linux)")
@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_dead_or_hung_rank_ends_the_job_with_a_message(tmp_path, fault):
    mpirun = find_mpirun()
    if mpirun is None:
        pytest.skip("mpirun not found: `make install` installs Open MPI into .venv")
    out = tmp_path / fault
    cmd = [mpirun, "-np", "2", *figure1(out, "--engine", "processes", "--only", "extrap-sgd", *SMALL)]
    env = {**launcher_env(), "EXTRAP_TIMEOUT_S": "20"}
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = start(cmd, env=env, log=log)
        ckpt = ckpt_dir(out, "extrap-sgd") / "checkpoint.rank1.pt"
        wait_for(ckpt.exists, proc, what="rank 1's first checkpoint")
        pid = rank_pid(1, str(out))
        assert pid is not None
        os.kill(pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        t0 = time.time()
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:  # a hang: clean up, then fail
                os.kill(pid, signal.SIGKILL)
                proc.kill()
        elapsed = time.time() - t0
    text = log_path.read_text(errors="replace")
    assert proc.returncode != 0 and elapsed < 60, (elapsed, text[-2000:])
    if fault == "killed":  # the launcher notices at once
        assert "exited on signal 9" in text or "Killed" in text, text[-2000:]
    else:  # rank 0's collective times out: one line says so and how to go on
        assert "failed: RuntimeError" in text and "Timed out" in text and "rerun the same command" in text
    assert not (out / "records.jsonl").exists()  # nothing recorded as finished
    assert (ckpt_dir(out, "extrap-sgd") / "checkpoint.rank0.pt").exists()
    if fault == "killed":  # and the same command resumes the cell and finishes it
        done = finish(cmd, env=env)
        assert "resumed from" in done.stdout and records(out)[0]["status"] == "completed"


@needs_data
def test_a_diverging_cell_is_recorded_and_the_item_goes_on(tmp_path):
    # loss_bound 2.0 lies below the initial loss (ln 10 ≈ 2.3): each cell diverges in its first
    # steps, is recorded as such, and the item goes on to the next cell
    out = tmp_path / "div"
    done = finish(figure1(out, "--only", "extrap-sgd,sgd", "epochs=1", "probe_every=0",
                          "task_kwargs={max_train_images: 512, eval_train_samples: 100}", "loss_bound=2.0"))
    recs = {r["cell"]: r for r in records(out)}
    assert sorted(recs) == ["extrap-sgd", "sgd"]  # the first diverged, the second still ran
    for r in recs.values():
        assert r["status"] == "diverged" and isinstance(r["diverged_at"], int) and r["diverged_at"] >= 0
    assert "diverged at step" in done.stdout
