"""Where a store lives: a local folder (`pathlib.Path`) or an object-store URL (`RemotePath`).

The store's own files (episode metadata, manifests, JPEG chunks read directly) are reached
through a small pathlib-like handle so the same code reads a local store and one at
`s3://bucket/lift.zarr`. A `RemotePath` is a key inside a zarr 3 store (zarr's FsspecStore over
s3fs, or any fsspec file system: `file://`, `memory://` for tests), wrapped in zarr's own
`CacheStore` with a bounded local chunk cache: no object-store client of our own, only zarr's
store API. Remote stores are read-only here; they are written by `tether data push`
(data/remote.py), which records locally first because object stores have neither the rename
nor the lock the local commit relies on.

Credentials come from the standard AWS environment/config (AWS_ACCESS_KEY_ID, AWS_PROFILE,
~/.aws/...; AWS_ENDPOINT_URL for S3-compatible servers such as MinIO), never from tether
configuration files.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path, PurePosixPath
from typing import Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

#: Bytes of chunks a process keeps on local disk per opened remote store (LRU beyond that).
DEFAULT_CACHE_MB = 1024


def is_url(path: Any) -> bool:
    """True for an object-store URL (`s3://...`, `gs://...`, `file://...`, `memory://...`)."""
    return isinstance(path, str) and bool(_URL.match(path))


def is_remote(path: Any) -> bool:
    return isinstance(path, RemotePath)


def as_location(path: Any) -> Path | RemotePath:
    """A `RemotePath` stays one; anything else is a local `Path`."""
    return path if isinstance(path, RemotePath) else Path(path)


def listdir(folder: Path | RemotePath) -> list[str]:
    """Names in a folder (FileNotFoundError when it does not exist, like os.listdir)."""
    if isinstance(folder, RemotePath):
        names = folder.listdir()
        if not names:
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(folder))
        return names
    return os.listdir(folder)


def store_url(path: str | Path | RemotePath) -> str:
    return str(path)


class _Root:
    """What every RemotePath of one opened store shares: the zarr store and its cache folder."""

    def __init__(self, url: str, store: Any, cache_dir: Path | None) -> None:
        self.url = url.rstrip("/")
        self.store = store
        self.cache_dir = cache_dir
        if cache_dir is not None:
            weakref.finalize(self, shutil.rmtree, str(cache_dir), True)


class RemotePath:
    """A read-only, pathlib-like handle on one key of a remote zarr store.

    Supports what the store's readers use: `/`, `name`, `parent`, `with_name`, `relative_to`,
    `read_bytes`, `read_text`, `exists`, `is_file`, `is_dir`, `iterdir`. Every call goes through
    zarr's store API (and its cache); nothing is written.
    """

    __slots__ = ("_root", "key")

    def __init__(self, root: _Root, key: str = "") -> None:
        self._root = root
        self.key = key.strip("/")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, *, cache_mb: float | None = None) -> RemotePath:
        """The root of the store at `url`, read through a bounded local chunk cache.

        `cache_mb` (default env TETHER_CHUNK_CACHE_MB, else 1024; 0 disables) bounds the bytes
        kept in a private temporary folder (TETHER_CACHE_DIR or the system temp), removed when
        the store is closed and garbage-collected.
        """
        from zarr.storage import FsspecStore

        source = _fsspec_store(FsspecStore, url, read_only=True)
        if cache_mb is None:
            cache_mb = float(os.environ.get("TETHER_CHUNK_CACHE_MB", DEFAULT_CACHE_MB))
        if cache_mb <= 0:
            return cls(_Root(url, source, None))
        from zarr.experimental.cache_store import CacheStore
        from zarr.storage import LocalStore

        base = Path(os.environ.get("TETHER_CACHE_DIR") or tempfile.gettempdir()) / "tether-chunk-cache"
        base.mkdir(parents=True, exist_ok=True)
        cache_dir = base / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        cached = CacheStore(source, cache_store=LocalStore(str(cache_dir)),
                            max_size=int(cache_mb * 1e6))
        return cls(_Root(url, cached, cache_dir))

    @property
    def zarr_store(self) -> Any:
        """The zarr store (cached) to open groups and arrays with."""
        return self._root.store

    @property
    def url(self) -> str:
        return self._root.url

    # -- pathlib-like ------------------------------------------------------------------------
    def __truediv__(self, part: Any) -> RemotePath:
        part = str(part).strip("/")
        return RemotePath(self._root, f"{self.key}/{part}" if self.key else part)

    def __str__(self) -> str:
        return f"{self._root.url}/{self.key}" if self.key else self._root.url

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other._root is self._root and other.key == self.key

    def __hash__(self) -> int:
        return hash((id(self._root), self.key))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1] if self.key else self._root.url.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self._root, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        if other.key and not (self.key == other.key or self.key.startswith(other.key + "/")):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key[len(other.key):].lstrip("/") or ".")

    def read_bytes(self) -> bytes:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self._root.store.get(self.key, default_buffer_prototype()))
        if buf is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", str(self))
        return buf.to_bytes()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def is_file(self) -> bool:
        from zarr.core.sync import sync

        return bool(self.key) and bool(sync(self._root.store.exists(self.key)))

    def is_dir(self) -> bool:
        return bool(self.listdir())

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def listdir(self) -> list[str]:
        from zarr.core.sync import sync

        async def names() -> list[str]:
            return [name async for name in self._root.store.list_dir(self.key)]

        return sorted(sync(names()))

    def iterdir(self) -> list[RemotePath]:
        return [self / name for name in self.listdir()]

    def prefetch(self, paths: list[RemotePath]) -> None:
        """Fetch many objects of this store concurrently into its chunk cache (one round trip
        of latency for a whole batch of frames instead of one per frame)."""
        import asyncio

        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        store, proto = self._root.store, default_buffer_prototype()

        async def fetch() -> None:
            await asyncio.gather(*(store.get(p.key, proto) for p in paths))

        if paths:
            sync(fetch())

    def size_under(self) -> int:
        """Bytes of every object under this key (one listing, no reads)."""
        from zarr.core.sync import sync

        store = getattr(self._root.store, "_store", self._root.store)  # not through the cache
        return int(sync(store.getsize_prefix(self.key)))


def _fsspec_store(cls: Any, url: str, *, read_only: bool) -> Any:
    """zarr's FsspecStore for `url`; file systems without async support are wrapped by zarr."""
    from tether.core.errors import StoreError

    try:
        return cls.from_url(url, read_only=read_only, storage_options=_storage_options(url))
    except ImportError as exc:
        from tether.core.optional import missing_extra

        raise missing_extra(__name__, "s3fs") from exc
    except ValueError as exc:
        raise StoreError(f"Cannot open {url}: {exc}") from exc


def _storage_options(url: str) -> dict[str, Any]:
    """Only what the standard environment does not already tell the file system itself.

    s3fs takes credentials from the AWS chain; AWS_ENDPOINT_URL (the standard variable for an
    S3-compatible endpoint) is passed explicitly because not every botocore reads it.
    """
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    if url.startswith("file://"):
        return {"auto_mkdir": True}
    return {}


def writable_store(url: str) -> Any:
    """zarr's FsspecStore for writing to `url` (no cache): what `push` uploads through."""
    from zarr.storage import FsspecStore

    return _fsspec_store(FsspecStore, url, read_only=False)
