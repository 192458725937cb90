"""A run's folder and the item's records: provenance, the records file, the output lock, and
the identities that keep a rerun from skipping or resuming a run that computed something else.

Rank 0 writes each run's directory ``<out>/<item>/<variant>/<cell>/seed<s>/`` (``provenance.json``:
config, git commit and dirty flag, versions, engine, world size; ``metrics.jsonl``: one line per
evaluation); every rank keeps its own checkpoint there; rank 0 appends the finished record to
``<out>/records.jsonl``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from reproduce import identity
from reproduce.config import ConfigError, Run

ROOT = Path(__file__).resolve().parent.parent

def git_info() -> dict:
    """The checkout's commit and dirty flag when this process first asked, which is when it had
    imported the code it runs (a long item's later runs keep it though HEAD moves on); in an
    image without git or .git (k8s/Dockerfile), the commit it was built from
    (``EXTRAP_GIT_COMMIT``) and ``dirty`` None."""
    return dict(_git_info_at_start())


@functools.cache
def _git_info_at_start() -> dict:
    def git(*a):
        try:
            r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": os.environ.get("EXTRAP_GIT_COMMIT") or None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def versions() -> dict:
    import numpy

    import extrap

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "extrap": extrap.__version__, "platform": platform.platform(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def finished_runs(records: Path) -> dict[tuple, dict]:
    """(item, variant, cell, seed) -> settings of the completed and diverged records (the last of
    each key); lines that do not parse are skipped."""
    done: dict[tuple, dict] = {}
    if records.exists():
        try:
            lines = records.read_bytes().splitlines()
        except OSError as e:
            raise ConfigError(f"--out: cannot read {records} ({e.strerror or e})") from None
        for line in lines:
            try:
                r = json.loads(line)
                if r.get("status") in ("completed", "diverged"):
                    done[(r["item"], r["variant"], r["cell"], r["seed"])] = r.get("config")
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                continue
    return done


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # a write that cannot happen: one line, exit 1


def differences(old: dict, new: dict, limit: int = 3) -> str:
    """``base_lr: 2.0 there, 0.01 here; epochs: ...`` for the first ``limit`` keys that differ."""
    old, new = identity(old), identity(new)
    keys = [k for k in sorted(set(old) | set(new), key=str) if (k in old, old.get(k)) != (k in new, new.get(k))]
    shown = lambda d, k: repr(d[k]) if k in d else "not set"  # noqa: E731
    text = "; ".join(f"{k}: {shown(old, k)} there, {shown(new, k)} here" for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def check_identities(runs: list["Run"], out: Path, done: dict[tuple, dict]) -> None:
    """A run already finished, or begun (a checkpoint), in ``out`` with other settings is refused:
    a rerun never skips or continues a run that computed something else."""
    for run in runs:
        where = f"{run.variant}/{run.cell} seed {run.seed}"
        if run.key in done and done[run.key] is not None and identity(done[run.key]) != identity(run.settings):
            raise ConfigError(f"{where}: {out / 'records.jsonl'} holds it with other settings "
                              f"({differences(done[run.key], run.settings)}); use another --out, or remove "
                              f"that record and {run_dir(out, run)} to rerun it")
        directory = run_dir(out, run)
        if run.key in done or not any(directory.glob("checkpoint.rank*.pt*")):  # .prev too
            continue
        try:
            begun = json.loads((directory / "provenance.json").read_text(encoding="utf-8")).get("config")
        except (OSError, ValueError, AttributeError, RecursionError):
            begun = None  # no readable provenance: nothing to compare (the checkpoint is checked on load)
        if isinstance(begun, dict) and identity(begun) != identity(run.settings):
            raise ConfigError(f"{where}: {directory} holds an interrupted run with other settings "
                              f"({differences(begun, run.settings)}); use another --out, or remove that "
                              f"folder to start it afresh")


def append_line(path: Path, obj: dict) -> None:
    """One JSON line appended to ``path`` whole or not at all: on its own line (a newline first
    when the file ends in a partial line), written until done, then fsync; a short write (a full
    disk) truncates the file back and raises OSError."""
    data = (json.dumps(obj) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        written = 0
        try:
            while written < len(data):
                n = os.write(fd, data[written:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, size)  # no partial record left behind
            raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


def append_evaluation(path: Path, point: dict) -> None:
    """``point`` appended to a run's ``metrics.jsonl``; the lines from its step on, which a run
    resumed from an earlier checkpoint evaluates again, are dropped first (never a duplicate)."""
    if path.exists():
        lines = path.read_bytes().splitlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] < point["step"]:
                    keep.append(line)
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # a partial line from an interrupted write
        if len(keep) < len(lines):
            path.write_bytes(b"".join(line + b"\n" for line in keep))
    append_line(path, point)


def run_dir(out: Path, run: "Run") -> Path:
    return out / run.item / run.variant / run.cell / f"seed{run.seed}"


class OutLock:
    """An exclusive lock on ``<out>/.lock`` for the whole invocation: a second run into the same
    folder is refused at once instead of duplicating records or racing on checkpoints. Where the
    filesystem has no locks (some NFS or Lustre mounts), a warning, and the run goes on unlocked."""

    def __init__(self, out: Path):
        self.path, self.fd = out / ".lock", None

    def __enter__(self):
        import fcntl

        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"--out: cannot make {self.path} ({e.strerror or e})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                print(f"warning: {self.path}: no lock on this filesystem ({e.strerror or e}); make sure no "
                      f"other run writes into {self.path.parent}", file=sys.stderr, flush=True)
                return self
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise ConfigError(f"--out: {self.path.parent} is in use by another run ({holder}); wait for it, "
                              f"or use another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {platform.node()}".encode(), 0)
        return self

    def discard(self) -> None:
        """Remove the lock file while still holding it (a refused run that made the folder)."""
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


def check_out(out: Path) -> None:
    """The output folder can be made and written, before any work."""
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise ConfigError(f"--out: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: {probe} is not writable")
    for missing in [out, *out.parents]:  # the folders to be made: none may be a dangling link
        if missing == probe:
            break
        if missing.is_symlink():
            raise ConfigError(f"--out: {missing} is a symbolic link to {os.readlink(missing)}, which does not exist")
    try:  # root passes os.access everywhere, and /proc or /sys refuse a new folder anyway: try one
        tempfile.TemporaryDirectory(dir=probe, prefix=".extrap-probe-").cleanup()
    except OSError as e:
        raise ConfigError(f"--out: cannot make a folder in {probe} ({e.strerror or type(e).__name__})") from None
