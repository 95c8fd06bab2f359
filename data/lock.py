"""The writer lock of an episode store: an exclusive `flock` on the sibling file `<store>.lock`.

Why a sibling and not a file inside the store: compaction (`delete_episodes`) and
`create(overwrite=True)` replace the store directory itself. A lock inside it would vanish with
the old directory, and a second process could take the new one while the first is still
swapping. The sibling file outlives every swap, so one lock covers recovery, rewrites, the final
rename and re-creation. The file is never deleted (deleting a lock file lets two processes each
lock a different inode); it holds the holder's PID so the refusal can name it.

The lock is advisory and per open file description: two `StoreLock`s on the same path conflict
even inside one process, which is what keeps a second `open(mode="a")` out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from tether.core.errors import StoreError


def lock_path(store: Path) -> Path:
    """`<store>.lock` next to the store directory."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


class StoreLock:
    """Exclusive, non-blocking writer lock of one store path."""

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.path = lock_path(self.store)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, purpose: str = "write to it") -> StoreLock:
        """Take the lock or raise a StoreError naming the process that holds it."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"Cannot create the lock file {self.path} ({exc.strerror}); the store's parent "
                "folder must be writable to record or change the store. Open it read-only "
                "(mode='r') to read it."
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise StoreError(
                f"Store {self.store} is in use by {who} (lock {self.path}); cannot {purpose} "
                "while it writes. Wait for it to finish or stop it; open the store read-only "
                "(mode='r') to read it meanwhile."
            ) from exc
        with contextlib.suppress(OSError):  # the PID is only a hint for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)

    def __del__(self) -> None:  # a forgotten store must not keep the lock for the process lifetime
        with contextlib.suppress(Exception):
            self.release()


def holder_pid(store: Path) -> int | None:
    """PID of the process holding the writer lock of `store`, or None when nobody holds it.

    Never creates the lock file (read-only opens must not change anything on disk).
    """
    path = lock_path(store)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
