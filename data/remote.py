"""Uploading a local store's committed episodes to an object store (`tether data push`).

Object stores have no rename and no lock, so the local commit protocol (data/writer.py) cannot
run there. A store is therefore recorded locally and its *committed* episodes are uploaded, in
the same order the local writer uses, through zarr's own FsspecStore (s3fs, or any fsspec file
system):

    once:          every group/array metadata file except the commit point, then the root
                   `zarr.json` last (before it exists the URL is no store)
    per episode:   its chunk files (frames; the low-dim chunks its rows fall in), its arrays'
                   metadata (their lengths), `manifest/<e>.json`, `episodes/<e>.json`, and
                   last `meta/episode_ends` grown by one entry (metadata, then the chunk)

Each object PUT is atomic, and readers only see episodes the remote `episode_ends` lists, so a
push killed at any moment leaves every uploaded episode intact and at most one invisible,
partial one (exactly what a killed local writer leaves, which readers already hide). A push
resumes from the remote commit point. Uploading never changes the local store and needs no lock,
so it runs while `tether record` goes on (`BackgroundPusher`).

The remote must be a prefix of the local store: after a local compaction (deleting episodes)
push to a new URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.data import episodes as _episodes
from tether.data import manifest as _manifest
from tether.data.layout import EPISODE_ENDS, METADATA_NAMES, metadata_folders
from tether.data.location import is_url, writable_store
from tether.data.store import EpisodeStore

log = logging.getLogger(__name__)

EXTRA_FILES = ("robot_config.yaml",)
_CONCURRENCY = 16  # object PUTs in flight


@dataclass
class PushReport:
    """What one push did."""

    source: str
    url: str
    remote_before: int  # episodes the remote had
    pushed: list[int] = field(default_factory=list)  # episodes uploaded now
    objects: int = 0
    bytes: int = 0

    @property
    def remote_after(self) -> int:
        return self.remote_before + len(self.pushed)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "url": self.url, "remote_before": self.remote_before,
                "remote_after": self.remote_after, "pushed": list(self.pushed),
                "objects": self.objects, "bytes": self.bytes}


def push(local: str | Path, url: str, *, max_episodes: int | None = None,
         on_episode: Callable[[int, str], None] | None = None) -> PushReport:
    """Upload the committed episodes of `local` that `url` does not have yet; resumable.

    `on_episode(episode, phase)` is called with phase "uploaded" (data, manifest and metadata
    are up, the commit point not yet) and "committed".
    """
    from zarr.core.sync import sync

    if not is_url(url):
        raise StoreError(f"{url} is not an object-store URL (s3://bucket/name.zarr, file://...).")
    local = Path(local)
    with EpisodeStore.open(local, "r") as src:
        remote = writable_store(url)
        ends = src.episode_ends
        report = PushReport(str(local), url, 0)
        uploader = _Uploader(remote, local, report)
        remote_ends = _remote_ends(remote)
        if remote_ends is None and not len(ends):
            return report  # nothing committed yet: create nothing remotely
        if remote_ends is None:
            sync(uploader.skeleton(src))
            remote_ends = np.zeros(0, np.int64)
        report.remote_before = len(remote_ends)
        _check_prefix(local, url, ends, remote_ends)
        _check_same_last(remote, local, url, len(remote_ends))
        stop = len(ends) if max_episodes is None else min(len(ends), len(remote_ends) + max_episodes)
        ends_array = _open_remote_ends(remote)
        for episode in range(len(remote_ends), stop):
            sync(uploader.episode(src, episode))
            if on_episode:
                on_episode(episode, "uploaded")
            _commit(ends_array, episode, int(ends[episode]))  # the commit point, last
            report.pushed.append(episode)
            if on_episode:
                on_episode(episode, "committed")
        if report.pushed:
            sync(uploader.refresh_attrs())
    return report


def _check_prefix(local: Path, url: str, ends: np.ndarray, remote_ends: np.ndarray) -> None:
    n = len(remote_ends)
    if n > len(ends) or not np.array_equal(ends[:n], remote_ends):
        raise StoreError(
            f"{url} holds {n} episode(s) that are not the first episodes of {local} (it has "
            f"{len(ends)}); it was pushed from another store or the local one was edited since "
            "(delete/compaction). Push to a new URL, or remove the remote store first."
        )


def _check_same_last(remote: Any, local: Path, url: str, n: int) -> None:
    """The last remote episode's chunk checksums (its manifest) must be the local one's."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    if n == 0:
        return
    key = _manifest.manifest_file(local, n - 1).relative_to(local).as_posix()
    theirs = sync(remote.get(key, default_buffer_prototype()))
    mine = _manifest.load(local, n - 1)
    if theirs is None or mine is None:
        return  # stores from before manifests: the ends are all there is to compare
    if json.loads(theirs.to_bytes()).get("keys") != mine.get("keys"):
        raise StoreError(
            f"{url} holds {n} episode(s) that are not the first episodes of {local}: episode "
            f"{n - 1}'s data differs. Push to a new URL, or remove the remote store first.")


def _remote_ends(remote: Any) -> np.ndarray | None:
    """The remote's committed episode ends (its valid prefix), None when it is no store yet."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    if sync(remote.get("zarr.json", default_buffer_prototype())) is None and \
            sync(remote.get(".zgroup", default_buffer_prototype())) is None:
        return None
    try:
        raw = np.asarray(zarr.open_array(store=remote, path=EPISODE_ENDS, mode="r")[:], np.int64)
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a damaged array
        raise StoreError(f"The store at the remote is damaged ({type(exc).__name__}: {exc}); "
                         "push to a new URL.") from exc
    valid, previous = 0, 0
    for end in raw:
        if end <= previous:
            break
        previous, valid = int(end), valid + 1
    return raw[:valid]


def _open_remote_ends(remote: Any) -> Any:
    import zarr

    return zarr.open_array(store=remote, path=EPISODE_ENDS, mode="r+")


def _commit(ends_array: Any, episode: int, end: int) -> None:
    """Grow the remote `episode_ends` to episode+1 entries: metadata first (the new slot reads
    as the fill value 0, which readers treat as no commit), then the chunk holding `end`."""
    if ends_array.shape[0] > episode:  # a previous push died between its two writes
        ends_array[episode:] = 0
        ends_array.resize((episode,))
    ends_array.resize((episode + 1,))
    ends_array[episode] = end


class _Uploader:
    def __init__(self, remote: Any, local: Path, report: PushReport) -> None:
        self.remote = remote
        self.local = local
        self.report = report

    async def _put(self, keys: list[str], sem: asyncio.Semaphore | None = None) -> None:
        from zarr.core.buffer import default_buffer_prototype

        sem = sem or asyncio.Semaphore(_CONCURRENCY)
        proto = default_buffer_prototype()

        async def one(key: str) -> None:
            try:
                payload = (self.local / key).read_bytes()
            except FileNotFoundError:
                return  # an all-zero frame (never stored) or an optional file
            async with sem:
                await self.remote.set(key, proto.buffer.from_bytes(payload))
            self.report.objects += 1
            self.report.bytes += len(payload)

        await asyncio.gather(*(one(k) for k in keys))

    def _metadata_keys(self) -> list[str]:
        keys = []
        for folder in metadata_folders(self.local):
            for name in METADATA_NAMES:
                if (folder / name).is_file():
                    keys.append((folder / name).relative_to(self.local).as_posix())
        return keys

    async def skeleton(self, src: EpisodeStore) -> None:
        """Groups and arrays (lengths as they are now; readers trust only episode_ends), an
        empty commit point, extra files, and the root metadata last."""

        keys = self._metadata_keys()
        root = [k for k in keys if "/" not in k]
        await self._put([k for k in keys if k not in root and not _is_array_meta(k)] + list(EXTRA_FILES))
        await self._put_array_meta([k for k in keys if _is_array_meta(k)], 0)  # empty arrays
        await self._put(root)

    async def _put_array_meta(self, keys: list[str], length: int) -> None:
        """Array metadata with the time axis cut to `length` (what is committed remotely), so a
        reader of the remote finds no uncommitted tail to warn about."""
        from zarr.core.buffer import default_buffer_prototype

        proto = default_buffer_prototype()
        for key in keys:
            meta = json.loads((self.local / key).read_bytes())
            if isinstance(meta.get("shape"), list) and meta["shape"]:
                meta["shape"][0] = int(length)
            payload = json.dumps(meta, indent=2).encode()
            await self.remote.set(key, proto.buffer.from_bytes(payload))
            self.report.objects += 1
            self.report.bytes += len(payload)

    async def episode(self, src: EpisodeStore, episode: int) -> None:
        start, stop = src.episode_range(episode)
        chunk_keys: list[str] = []
        for key in src.keys:
            arr = src.array(key)
            rows = int(arr.chunks[0])
            for chunk in range(start // rows, (stop - 1) // rows + 1):
                chunk_keys.append(src.chunk_path(key, chunk).relative_to(self.local).as_posix())
        await self._put(chunk_keys)
        keys = self._metadata_keys()
        await self._put([k for k in keys if "/" in k and not _is_array_meta(k)])  # new groups
        array_meta = [k for k in keys if _is_array_meta(k) and not k.startswith(EPISODE_ENDS + "/")]
        await self._put_array_meta(array_meta, stop)  # lengths now cover the episode
        for file in (_manifest.manifest_file(self.local, episode), _episodes.episode_file(self.local, episode)):
            await self._put([file.relative_to(self.local).as_posix()])

    async def refresh_attrs(self) -> None:
        """`meta` attributes (normalizer statistics) and the root's, after new episodes."""
        keys = [k for k in self._metadata_keys() if k in ("meta/zarr.json", "meta/.zattrs",
                                                              "zarr.json", ".zattrs")]
        await self._put(keys)


def _is_array_meta(key: str) -> bool:
    """zarr metadata of an array (not a group): the data, timing and episode_ends arrays."""
    name = key.rsplit("/", 1)[-1]
    if name == ".zarray":
        return True
    return name == "zarr.json" and (key.startswith(("data/", EPISODE_ENDS)) or key.count("/") == 3)


class BackgroundPusher:
    """Push a store that is being recorded every `interval` seconds, and once more at close.

    Upload errors (no network) are logged and retried at the next round; `close` reports
    whether everything committed is up, and `tether data push` resumes what is not.
    """

    def __init__(self, local: str | Path, url: str, interval: float = 5.0) -> None:
        self.local, self.url, self.interval = Path(local), url, float(interval)
        self.error: BaseException | None = None
        self.pushed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tether-push", daemon=True)

    def start(self) -> BackgroundPusher:
        self._thread.start()
        return self

    def notify(self) -> None:
        """Push now (call after a commit)."""
        self._wake.set()

    def _once(self) -> None:
        try:
            self.pushed += len(push(self.local, self.url).pushed)
            self.error = None
        except Exception as exc:  # noqa: BLE001 - retried next round, reported at close
            log.warning("push %s -> %s failed (%s); retrying", self.local, self.url, exc)
            self.error = exc

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._once()

    def close(self) -> PushReport:
        """Stop the thread and push what is left (raises when that final push fails)."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        report = push(self.local, self.url)
        self.pushed += len(report.pushed)
        return report


def staging_path(url: str) -> Path:
    """Where `tether record --out URL` records before uploading: a stable local folder per URL
    (TETHER_STAGING_DIR, default ~/.cache/tether/staging), so an interrupted upload resumes."""
    base = Path(os.environ.get("TETHER_STAGING_DIR") or Path.home() / ".cache" / "tether" / "staging")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("_")[-80:]
    return base / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"




@contextlib.contextmanager
def local_copy(store: str | Path) -> Iterator[Path]:
    """A local path for `store`: itself, or for a URL a temporary local copy (merge)."""
    if not is_url(str(store)):
        yield Path(store)
        return
    with tempfile.TemporaryDirectory(prefix="tether-pull-") as tmp:
        local = Path(tmp) / "store.zarr"
        EpisodeStore.merge(local, [str(store)]).close()
        yield local


@contextlib.contextmanager
def pushed_from_local(out: str | Path) -> Iterator[Path]:
    """A local path to write a new store to; for a URL, a temporary one pushed on success."""
    if not is_url(str(out)):
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="tether-push-") as tmp:
        local = Path(tmp) / "store.zarr"
        yield local
        push(local, str(out))


__all__ = ["BackgroundPusher", "PushReport", "local_copy", "push", "pushed_from_local", "staging_path"]
