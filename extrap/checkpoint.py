"""Checkpoint files that a crash cannot leave half-written and that are verified before use.

A file is one header line, ``EXTRAP-CHECKPOINT 1 <sha256 of the rest>``, then ``torch.save``'s
bytes. ``save`` writes a temporary file, fsyncs it, moves the current checkpoint to
``<name>.prev`` and renames the new one into place (then fsyncs the folder), so a crash at any
moment leaves a complete current or previous checkpoint. ``load_latest`` verifies the checksum
and reads with ``torch.load(weights_only=True)`` (no code runs from a checkpoint); a corrupt or
truncated file is reported and the previous one used.

``Writer`` does the file work (checksum, write, fsync, renames) in a background thread, so
training goes on while a checkpoint is written; the state is serialised before ``save`` returns.
``pack_worker_copies`` stores once what all K workers of a process hold identically (their
parameters and momentum while training is synchronous); ``unpack_worker_copies`` restores it
bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["save", "Writer", "load", "load_latest", "previous", "CheckpointError", "pack_worker_copies",
           "unpack_worker_copies"]

MAGIC = b"EXTRAP-CHECKPOINT 1 "


class CheckpointError(ValueError):
    """A checkpoint that is truncated, corrupt or not one of ours."""


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save(obj, path: str | Path) -> None:
    _write(_serialise(obj), Path(path))


def _serialise(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Writer:
    """``save`` whose file work runs in a background thread. One write at a time: the next
    ``save`` (and ``wait``) first waits for the one before, and re-raises its error."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, obj, path: str | Path) -> None:
        data = _serialise(obj)  # now: training may change the tensors once this returns
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(data, Path(path)), daemon=True)
        self._thread.start()

    def _run(self, data: bytes, path: Path) -> None:
        try:
            _write(data, path)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        """Until the last write is on disk."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _write(data: bytes, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, say: no partial file left behind; the previous ones stand
        tmp.unlink(missing_ok=True)
        raise
    if path.exists():
        os.replace(path, previous(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | Path, map_location=None):
    """The object in a checkpoint file, after checking its header and checksum."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.readline()
        data = f.read()
    if not header.startswith(MAGIC) or not header.endswith(b"\n"):
        raise CheckpointError(f"{path}: not an extrap checkpoint (no header line)")
    expected = header[len(MAGIC):-1].decode("ascii", errors="replace")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(f"{path}: checksum mismatch ({len(data)} bytes; truncated or corrupt)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a checksum-valid file that still does not load
        raise CheckpointError(f"{path}: cannot be read ({e.__class__.__name__}: {e})") from None


def load_latest(path: str | Path, warn: Callable[[str], None] | None = None, map_location=None) -> list:
    """The verified checkpoints at ``path`` and its ``.prev``, newest first: ``[(file, obj)]``.
    Each that exists but does not verify is reported (``warnings.warn``, or ``warn``) and left out."""
    path = Path(path)
    found = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            found.append((candidate, load(candidate, map_location)))
        except (CheckpointError, OSError) as e:
            message = f"{e}; trying the previous checkpoint"
            if warn is None:
                warnings.warn(message, stacklevel=2)
            else:
                warn(message)
    return found


_SHARED = "extrap: the same for all workers"


def pack_worker_copies(obj, workers: int):
    """``obj`` (nested dicts, lists, tuples) with every tensor whose leading axis holds
    ``workers`` bitwise-equal slices replaced by one slice, marked; lossless. ``workers <= 1``:
    ``obj`` unchanged."""
    if workers <= 1:
        return obj
    leaves, spec = tree_flatten(obj)
    stacked = [i for i, t in enumerate(leaves) if torch.is_tensor(t) and t.dim() >= 1 and t.shape[0] == workers]
    if not stacked:
        return obj
    same = []
    for i in stacked:  # compare the bytes: 0.0 and −0.0, or two NaNs, are not the same bits
        b = leaves[i].detach().contiguous().reshape(workers, -1).view(torch.uint8)
        same.append((b == b[:1]).all())
    for i, equal in zip(stacked, torch.stack(same).tolist()):  # one read of the device
        if equal:
            leaves[i] = {_SHARED: leaves[i][0].clone(), "workers": workers}
    return tree_unflatten(leaves, spec)


def unpack_worker_copies(obj):
    """The inverse of ``pack_worker_copies``: each marked slice repeated for its workers."""
    if isinstance(obj, dict):
        if _SHARED in obj:
            t = obj[_SHARED]
            return t.unsqueeze(0).repeat(obj["workers"], *[1] * t.dim())
        return {k: unpack_worker_copies(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack_worker_copies(v) for v in obj)
    return obj
