"""Checkpoint files that a crash cannot leave half-written and that are verified before use.

A file is one header line, ``EXTRAP-CHECKPOINT 1 <sha256 of the rest>``, then ``torch.save``'s
bytes. ``save`` writes a temporary file, fsyncs it, moves the current checkpoint to
``<name>.prev`` and renames the new one into place (then fsyncs the folder), so a crash at any
moment leaves a complete current or previous checkpoint. ``load_latest`` verifies the checksum
and reads with ``torch.load(weights_only=True)`` (no code runs from a checkpoint); a corrupt or
truncated file is reported and the previous one used.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Callable

import torch

__all__ = ["save", "load", "load_latest", "previous", "CheckpointError"]

MAGIC = b"EXTRAP-CHECKPOINT 1 "


class CheckpointError(ValueError):
    """A checkpoint that is truncated, corrupt or not one of ours."""


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save(obj, path: str | Path) -> None:
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n")
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
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


def load_latest(path: str | Path, warn: Callable[[str], None] = print, map_location=None) -> list:
    """The verified checkpoints at ``path`` and its ``.prev``, newest first: ``[(file, obj)]``.
    Each that exists but does not verify is reported through ``warn`` and left out."""
    path = Path(path)
    found = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            found.append((candidate, load(candidate, map_location)))
        except (CheckpointError, OSError) as e:
            warn(f"warning: {e}; trying the previous checkpoint")
    return found
