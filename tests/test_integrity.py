"""No silently wrong or lost record: a rerun with other settings neither skips nor continues a
run that computed something else; a record is appended whole or not at all (a full disk), on its
own line (after a partial one); a second run into a folder in use is refused. The runs are the
demo's (digits, embedded), so these tests need nothing from ../shared."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, launcher_env
from reproduce import rundir
from results import load_records


RUNNER = "import sys; from reproduce import runner; sys.exit(runner.main('demo', sys.argv[1:]))"


def demo_command(out, *args, script=RUNNER, engine="virtual") -> list[str]:
    """The demo's item through the runner (``engine``'s workers, smoke scale, mini-batch SGD only),
    run by ``script`` (which ends by calling the runner on its arguments)."""
    return [sys.executable, "-c", script, "--scale", "smoke", *(["--engine", engine] if engine else []),
            "--only", "sgd", "--no-progress", "--out", str(out), *args]


def run_demo(out, *args, check=True, timeout=300, script=RUNNER):
    proc = subprocess.run(demo_command(out, *args, script=script), cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def one_line_refusal(proc, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.fixture
def finished(tmp_path):
    """An output folder holding the demo's finished run."""
    out = tmp_path / "out"
    run_demo(out)
    return out


def rerun(out, *args, check=True):
    """The demo again into ``out``, whose records it leaves as they were, byte for byte."""
    before = (out / "records.jsonl").read_bytes()
    proc = run_demo(out, *args, check=check)
    assert (out / "records.jsonl").read_bytes() == before
    return proc


def test_a_rerun_with_another_setting_is_refused_in_one_line_naming_it(finished):
    changed = rerun(finished, "base_lr=0.02", check=False)
    one_line_refusal(changed, "default/sgd seed 0", "other settings", "base_lr: 0.01 there, 0.02 here", "--out")


def test_a_rerun_for_more_epochs_is_refused_rather_than_extended(finished):
    longer = rerun(finished, "epochs=3", check=False)
    one_line_refusal(longer, "epochs: 2 there, 3 here")


def test_the_same_command_again_skips_the_finished_run(finished):
    same = rerun(finished)
    assert "skip default/sgd seed 0" in same.stdout


def test_another_label_is_the_same_run_and_skips(finished):
    relabelled = rerun(finished, "label=SGD")  # how a run is shown is not what it computed
    assert "skip default/sgd seed 0" in relabelled.stdout


def test_an_interrupted_run_with_other_settings_is_not_continued(tmp_path):
    out = tmp_path / "out"
    run_demo(out)
    (out / "records.jsonl").unlink()  # as if killed after its last checkpoint, before the record
    assert list((out / "demo" / "default" / "sgd" / "seed0").glob("checkpoint.rank*.pt"))
    proc = run_demo(out, "base_lr=0.05", check=False)
    one_line_refusal(proc, "interrupted run with other settings", "base_lr: 0.01 there, 0.05 here")
    assert not (out / "records.jsonl").exists()
    resumed = run_demo(out)  # the same settings resume it
    assert "resumed from" in resumed.stdout and len(load_records(out / "records.jsonl")) == 1


def test_seed_is_not_a_setting(tmp_path):
    proc = run_demo(tmp_path / "out", "seed=3", check=False)
    one_line_refusal(proc, "seed: not a setting", "--seeds")
    assert not (tmp_path / "out").exists()


def test_a_record_after_a_partial_line_starts_its_own_line(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text('{"item": "demo", "variant": "default", "cell": "sgd", "seed": 0, "status": "compl')
    rundir.append_line(records, {"item": "demo", "variant": "default", "cell": "sgd", "seed": 1, "status": "completed"})
    lines = records.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["seed"] == 1
    assert [r["seed"] for r in load_records(records)] == [1]  # the partial line is skipped, with a warning


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from reproduce import rundir
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
    path, limit = Path(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        rundir.append_line(path, {"item": "demo", "cell": "sgd", "seed": 1, "trace": "x" * 4000})
    except OSError as e:
        print("OSError", e.errno)
""")


def test_a_full_disk_during_an_append_leaves_the_file_as_it_was(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text('{"item": "demo", "cell": "sgd", "seed": 0}\n')
    before = records.read_bytes()
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(records), "1000"], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split()[0] == "OSError", proc.stdout + proc.stderr
    assert records.read_bytes() == before


RUNNER_ON_A_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from unittest import mock
    from reproduce import rundir, runner
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # room for everything but the record
    big = {"status": "completed", "final": {}, "trace": "x" * 50000}
    with mock.patch.object(runner, "execute", lambda run, *a, **k: {**big, "item": run.item, "variant": run.variant,
                                                                    "cell": run.cell, "seed": run.seed}):
        sys.exit(runner.main("demo", sys.argv[1:]))
""")


def test_the_runner_on_a_full_disk_exits_1_with_one_line_and_no_partial_record(tmp_path):
    out = tmp_path / "out"
    proc = run_demo(out, check=False, script=RUNNER_ON_A_FULL_DISK)
    assert proc.returncode == 1, proc.stdout[-1000:] + proc.stderr[-1000:]
    assert "seed 0: completed" not in proc.stdout  # the run is not announced as done
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot append its record" in lines[0] and "Traceback" not in proc.stderr
    records = out / "records.jsonl"
    assert not records.exists() or records.read_bytes() == b""


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "out"
    cmd = demo_command(out, "epochs=60")
    first = subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "demo").exists():  # the first run is training
            time.sleep(0.1)
        assert (out / "demo").exists(), "the first run never started"
        second = run_demo(out, "epochs=60", check=False)
        one_line_refusal(second, "--out", "in use by another run", f"pid {first.pid}")
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert len(load_records(out / "records.jsonl")) == 1 and len((out / "records.jsonl").read_text().splitlines()) == 1
    after = run_demo(out, "epochs=60")  # the lock went with the first run
    assert "skip default/sgd seed 0" in after.stdout


RUNNER_HELD_AFTER_ITS_FIRST_CHECKPOINT = textwrap.dedent("""
    import sys, threading
    from extrap import checkpoint
    from reproduce import runner
    write = checkpoint._write

    def write_then_hold(data, path):  # in the writer's thread: the run can neither go on nor end
        write(data, path)
        threading.Event().wait()

    checkpoint._write = write_then_hold
    sys.exit(runner.main("demo", sys.argv[1:]))
""")


def test_ctrl_c_then_the_same_command_resumes(tmp_path):
    """Ctrl-C once the first epoch's checkpoint is on disk: the run is held there until the signal
    comes, so that it is always interrupted mid-run, never finished first."""
    out = tmp_path / "out"
    cmd = demo_command(out, script=RUNNER_HELD_AFTER_ITS_FIRST_CHECKPOINT)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "demo" / "default" / "sgd" / "seed0" / "checkpoint.rank0.pt"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not ckpt.exists():
            time.sleep(0.05)
        assert ckpt.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in 120 s"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # held for ever otherwise
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    resumed = run_demo(out)
    assert "resumed from" in resumed.stdout and len(load_records(out / "records.jsonl")) == 1
    assert os.path.exists(out / "records.jsonl")


@pytest.mark.parametrize("flags, env, message", [
    (["--engine", "processes"], {}, "no launcher started this one"),
    (["--engine", "horovod"], {}, "no launcher started this one"),
    (["--workers", "2"], {"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR is not set"),
    (["--workers", "2"], {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
                          "EXTRAP_TIMEOUT_S": "inf"}, "EXTRAP_TIMEOUT_S: expected a finite number"),
    ([], {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "x"}, "LOCAL_WORLD_SIZE: the torchrun launcher's"),
    (["--workers", "3"], {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}, "3 requested but the launcher"),
])
def test_an_engine_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path, flags, env, message):
    out = tmp_path / "out"
    proc = subprocess.run(demo_command(out, *flags, engine=None), cwd=ROOT, env={**launcher_env(), **env}, capture_output=True, text=True, timeout=120)
    one_line_refusal(proc, message)
    assert not out.exists()


def test_a_checkpoint_of_another_run_is_refused_in_one_line(tmp_path):
    """A checksum-valid checkpoint of K = 4 workers where K = 2 runs: no traceback, exit 2."""
    four, two = tmp_path / "four", tmp_path / "two"
    run_demo(four, "--workers", "4")
    theirs = four / "demo" / "default" / "sgd" / "seed0" / "checkpoint.rank0.pt"
    ours = two / "demo" / "default" / "sgd" / "seed0"
    ours.mkdir(parents=True)
    (ours / "checkpoint.rank0.pt").write_bytes(theirs.read_bytes())
    proc = run_demo(two, "--workers", "2", check=False)
    one_line_refusal(proc, "default/sgd seed 0", "holds another run's state", "to start this run over")
    assert not (two / "records.jsonl").exists()


def test_a_corrupt_or_foreign_records_file_does_not_stop_the_runner(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "records.jsonl").write_bytes(b"\xff\xfe not utf-8\n" + b"[" * 100_000 + b"\n" + b'"a string"\n')
    proc = run_demo(out)
    assert "default/sgd seed 0: completed" in proc.stdout
    assert [r["cell"] for r in load_records(out / "records.jsonl")] == ["sgd"]


def run_item(item, out, *args):
    return subprocess.run([sys.executable, "-m", f"reproduce.{item}", "--scale", "smoke", "--no-progress", "--out",
                           str(out), *args], cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=300)


def _wikitext(root, valid="a b c d e f g\n" * 50, test="h i j k\n" * 50):
    folder = root / "wikitext-2"
    folder.mkdir(parents=True)
    for name, text in (("valid", valid), ("test", test)):
        if text is None:
            (folder / f"wiki.{name}.tokens").mkdir()
        else:
            (folder / f"wiki.{name}.tokens").write_text(text)
    return folder


@pytest.mark.parametrize("case, message", [
    ("blank training file", "wiki.valid.tokens: no words (3 blank lines)"),
    ("empty evaluation file", "wiki.test.tokens: no words"),
    ("a folder for a file", "wiki.test.tokens: a folder, not a file"),
    ("corrupt CIFAR batch", "data_batch_1: corrupt pickle"),
    ("batch larger than the data", "local_batch: 1000 × 4 workers exceeds the 1437 training images"),
])
def test_a_data_error_names_its_file_in_one_line_and_writes_nothing(tmp_path, case, message):
    data, out = tmp_path / "data", tmp_path / "out"
    if case == "blank training file":
        _wikitext(data, valid="\n\n\n")
    elif case == "empty evaluation file":
        _wikitext(data, test="")
    elif case == "a folder for a file":
        _wikitext(data, test=None)
    if "CIFAR" in case:
        folder = data / "cifar10-subset" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                     "batches.meta"):
            (folder / name).write_bytes(b"not a pickle")
        proc = run_item("figure1", out, "--only", "sgd", "--data-dir", str(data))
    elif "larger" in case:
        proc = run_item("demo", out, "--only", "sgd", "--engine", "virtual", "local_batch=1000")
    else:
        proc = run_item("figure2", out, "--only", "sgd", "--data-dir", str(data))
    one_line_refusal(proc, "default/sgd seed 0", message)
    assert not out.exists()


def test_a_resumed_run_never_duplicates_an_evaluation(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    for step in (10, 20, 30):
        rundir.append_evaluation(metrics, {"step": step, "loss": step})
    rundir.append_evaluation(metrics, {"step": 20, "loss": -1})  # resumed from the checkpoint at step 10
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == [{"step": 10, "loss": 10},
                                                                               {"step": 20, "loss": -1}]


RUNNER_CHECKPOINT_FULL = textwrap.dedent("""
    import resource, signal, sys
    from reproduce import runner
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))  # a checkpoint (~130 kB) cannot be written
    sys.exit(runner.main("demo", sys.argv[1:]))
""")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "out"
    proc = run_demo(out, check=False, script=RUNNER_CHECKPOINT_FULL)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "cannot write" in lines[0] and "resumes from its last checkpoint" in lines[0]
    run = out / "demo" / "default" / "sgd" / "seed0"
    assert not list(run.glob("*.tmp")) and not (out / "records.jsonl").exists()
    run_demo(out)  # room again: the same command ends the run
    assert len(load_records(out / "records.jsonl")) == 1


def test_a_failed_checkpoint_write_removes_its_partial_file(tmp_path):
    from extrap import checkpoint

    path = tmp_path / "ck.pt"
    checkpoint._write(b"old", path)
    script = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from extrap import checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        try:
            checkpoint._write(b"x" * 5000, Path({str(path)!r}))
        except OSError as e:
            print("OSError", e.errno)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=launcher_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.startswith("OSError"), proc.stdout + proc.stderr
    assert not list(tmp_path.glob("*.tmp")) and path.read_bytes().endswith(b"\nold")  # the previous file stands


def test_more_seeds_or_another_engine_name_is_the_same_run(tmp_path):
    """What does not change a run's computation is not its identity: --seeds 2 after seed 0 runs
    seed 1 only; naming the engine the default picks, or another data folder, skips seed 0."""
    out = tmp_path / "out"
    run_demo(out)
    more = run_demo(out, "--seeds", "2", "checkpoint_every=2")
    assert "skip default/sgd seed 0" in more.stdout and "default/sgd seed 1: completed" in more.stdout
    again = subprocess.run(demo_command(out, "--seeds", "2", "--data-dir", str(tmp_path), engine=None),
                           cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("skip default/sgd") == 2, again.stderr


def test_a_filesystem_without_locks_warns_and_runs(tmp_path, capsys):
    import errno
    from unittest import mock

    with mock.patch("fcntl.flock", side_effect=OSError(errno.ENOLCK, "No locks available")):
        with rundir.OutLock(tmp_path):
            pass
    assert "no lock on this filesystem" in capsys.readouterr().err


def test_a_model_size_torch_refuses_is_one_line(tmp_path):
    (tmp_path / "multi30k").mkdir()  # a data folder that exists: the settings are checked first
    proc = run_item("figure3", tmp_path / "out", "--data-dir", str(tmp_path), "model_kwargs={d_model: -4}")
    one_line_refusal(proc, "model_kwargs: Trying to create tensor with negative dimension")
    assert not (tmp_path / "out").exists()


def test_records_name_the_commit_the_process_started_with(monkeypatch):
    """A long item's later runs keep the commit of the code the process imported, though HEAD
    moves on while it runs."""
    from reproduce import rundir

    heads = iter(["a" * 40, "b" * 40])
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        out = next(heads) if cmd[1] == "rev-parse" else ""
        return subprocess.CompletedProcess(cmd, 0, stdout=out + "\n", stderr="")

    rundir._git_info_at_start.cache_clear()
    monkeypatch.setattr(rundir.subprocess, "run", fake_run)
    try:
        first = rundir.git_info()
        first["commit"] = "changed by a caller"
        assert rundir.git_info() == {"commit": "a" * 40, "dirty": False} and len(calls) == 2
    finally:
        rundir._git_info_at_start.cache_clear()
