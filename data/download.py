"""Downloads that a failure cannot leave half-done: the official archives or files of a dataset,
fetched into a staging folder beside the target, checked against their published checksums, and
renamed into place only when complete.

A failed download, a wrong checksum or a broken archive leaves neither a partial dataset folder
nor temporary files behind (nor the root folder itself, when the call created it). Several
processes may download at once, each into its own staging folder; the first rename wins, though
letting rank 0 download first saves bandwidth.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

__all__ = ["download_and_extract", "download_files"]


def _fetch(url: str, path: Path, algorithm: str, expected: str) -> None:
    """``url`` into ``path``, checked against its ``algorithm`` (md5, sha256) digest."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, OSError) as err:
        raise FileNotFoundError(f"could not download {url} ({err}); is this machine online?") from err
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ValueError(f"{url}: {algorithm} {digest.hexdigest()} does not match the expected {expected}; "
                         "the download is corrupt or not the official file")


def _staged(root, folder: str, fill: Callable[[Path], None]) -> Path:
    """``root/folder``, made by ``fill(staging)`` writing ``staging/folder`` in a temporary
    folder beside it, then renamed into place; nothing is left behind when ``fill`` fails."""
    root = Path(root)
    target = root / folder
    if target.exists():
        raise FileExistsError(f"{target} already exists; remove it to download again")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    done = False
    try:
        fill(staging)
        try:
            os.rename(staging / folder, target)
        except OSError:
            if not target.is_dir():
                raise
            # another process finished the same download first; its folder arrived whole
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not done:
            try:
                os.rmdir(root)  # empty unless another process is using it
            except OSError:
                pass
    return target


def download_and_extract(url: str, root, md5: str, folder: str) -> Path:
    """Fetch the archive at ``url`` (``.tar.gz`` or ``.zip``), check its md5, and extract
    ``folder`` from it into ``root``, atomically (see the module's docstring)."""
    def fill(staging: Path) -> None:
        archive = staging / ".archive"
        _fetch(url, archive, "md5", md5)
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    _safe_unzip(z, staging)
            else:
                with tarfile.open(archive, "r:gz") as tar:
                    _safe_extract(tar, str(staging))
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise ValueError(f"{url}: broken archive ({type(err).__name__}: {err})") from err
        if not (staging / folder).is_dir():
            raise ValueError(f"{url}: the archive has no folder {folder!r}")

    return _staged(root, folder, fill)


def download_files(files: dict[str, tuple[str, str]], root, folder: str) -> Path:
    """Fetch each ``name: (url, sha256)`` of ``files`` into ``root/folder/name``, checking each
    checksum; the folder appears only when every file arrived whole."""
    def fill(staging: Path) -> None:
        (staging / folder).mkdir()
        for name, (url, sha256) in files.items():
            _fetch(url, staging / folder / name, "sha256", sha256)

    return _staged(root, folder, fill)


def _safe_extract(tar: tarfile.TarFile, dest: str) -> None:
    """Extract regular files and folders only, never outside ``dest`` (the "data" filter of
    Python >= 3.10.12 / 3.11.4, with an equivalent check on older interpreters)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    base = os.path.realpath(dest)
    for member in tar.getmembers():
        path = os.path.realpath(os.path.join(dest, member.name))
        if not (member.isfile() or member.isdir()) or os.path.commonpath([base, path]) != base:
            raise tarfile.TarError(f"refusing member {member.name!r}")
    tar.extractall(dest)


def _safe_unzip(archive: zipfile.ZipFile, dest: Path) -> None:
    """Extract every member, refusing any whose path would land outside ``dest``."""
    base = os.path.realpath(dest)
    for name in archive.namelist():
        path = os.path.realpath(os.path.join(base, name))
        if os.path.commonpath([base, path]) != base:
            raise zipfile.BadZipFile(f"refusing member {name!r}")
    archive.extractall(dest)
