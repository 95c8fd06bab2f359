"""Durable file writes for the store's commit: temp file + fsync + rename + fsync of the folder.

zarr's LocalStore (zarr >= 3.1.3, pinned in pyproject.toml) already writes every file through a
temp file and `os.replace` (`zarr/storage/_local.py`: `_atomic_write` writes
`<name>.<uuid>.partial` and renames it over the target), so no reader ever sees a half-written
chunk or metadata file. It does not fsync, though: after a power cut the rename can reach the
disk before the bytes. The store therefore fsyncs an episode's files itself before it writes the
commit point, and fsyncs the commit point after (see `EpisodeStore._commit`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush one existing file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # not every file system lets a folder be opened; the rename itself is atomic
    try:
        with contextlib.suppress(OSError):  # EINVAL on file systems without folder fsync
            os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` atomically and durably (temp, fsync, rename, fsync folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty file of the file system holding `path` (Linux `syncfs`, else `sync`).

    One call covers the thousands of chunk files (and their new folders) an episode writes;
    fsyncing each of them and every parent folder costs several syscalls per frame.
    """
    libc = _libc()
    if libc is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
            import ctypes

            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
        finally:
            os.close(fd)
    os.sync()


_LIBC: list = []


def _libc():
    if not _LIBC:
        lib = None
        with contextlib.suppress(Exception):
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            candidate = ctypes.CDLL(name, use_errno=True) if name else None
            if candidate is not None and hasattr(candidate, "syncfs"):
                lib = candidate
        _LIBC.append(lib)
    return _LIBC[0]
