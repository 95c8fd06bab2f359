"""The Zarr episode store: diffusion_policy's ReplayBuffer layout, with an atomic commit point.

This module is the public entry: `EpisodeStore` (open, create, read, episode metadata) and
`EpisodeWriter`. The store's parts live beside it, one job each:

    data/layout.py    where every array lives (data/<key>, timing/<stream>/<field>, ...), the
                      format version and the dtype rules
    data/writer.py    create, append to the tail, commit, recover a crashed writer's tail
    data/episodes.py  one metadata file per episode (a commit writes only its own)
    data/editing.py   delete (compaction), merge and copy of episodes, format migration
    data/manifest.py  per-episode chunk manifests, checked by readers and `tether data verify`
    data/lock.py      the one-writer lock

See data/layout.py for the on-disk format and data/writer.py for crash safety; docs/data.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.core.schema import is_image_key
from tether.data import editing as _editing
from tether.data import episodes as _episodes
from tether.data import last_commit as _last_commit
from tether.data import manifest as _manifest
from tether.data import writer as _writer
from tether.data.codecs import (
    DEFAULT_JPEG_QUALITY,
    default_image_codec,
    image_encoding,
    is_video_array,
    register_codecs,
)
from tether.data.durable import write_durable
from tether.data.layout import (
    DATA,
    EPISODE_ENDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    META,
    array_path,
    check_metadata_files,
    damaged,
    is_timing_key,
    list_arrays,
    looks_like_store,
    parse_timing_key,
    timing_key,
)
from tether.data.location import RemotePath, is_remote, is_url
from tether.data.lock import StoreLock
from tether.data.writer import EpisodeWriter, Recovery, jsonable, os_error

log = logging.getLogger(__name__)

__all__ = [
    "EPISODE_ENDS", "FORMAT_NAME", "FORMAT_VERSION", "EpisodeStore", "EpisodeWriter", "Recovery",
    "chunk_file", "is_image_key", "migrate", "timing_key",
]

_MANAGED_ATTRS = ("tether_format", "format_version")
_REMOTE_WRITE = (
    "{url} is an object-store URL: remote stores are read-only here (object stores have no "
    "rename or lock for the commit). Record to a local store and upload its committed episodes "
    "with `tether data push LOCAL {url}` (`tether record --out URL` does both)."
)


class EpisodeStore:
    """A dataset of episodes in one Zarr directory. Use `create` or `open`, not the constructor.

    Modes: "r" read-only (never changes anything on disk, not even a lock file); "a" append
    (takes the writer lock `<store>.lock`, truncates a crashed writer's partial tail, refuses
    when committed data is missing unless `repair=True`).

    Keys: data arrays by their schema name (`state`, `action`, `image.<cam>`, `timestamp`), and
    per-stream timing arrays as `timing/<stream>/<field>` (build with `timing_key`).
    """

    def __init__(self, path: Path, mode: str, _internal: bool = False, *, repair: bool = False,
                 lock: StoreLock | None = None) -> None:
        if not _internal:
            raise TypeError("use EpisodeStore.create(...) or EpisodeStore.open(...)")
        self.path = path if is_remote(path) else Path(path)
        self.mode = mode
        self._repair = repair
        self._owns_lock = lock is None
        self._lock: StoreLock | None = lock
        self._writer: EpisodeWriter | None = None
        self._manifests: dict[int, dict[str, Any] | None] = {}
        self._video_arrays: dict[str, Any] = {}  # key -> VideoArray (see array())
        self._recovery = Recovery(0, 0, 0, False)
        try:
            self._load()
        except BaseException:
            self._release_lock()
            raise

    # ------------------------------------------------------------------ creation and opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        fps: float,
        *,
        zarr_format: int = 3,
        image_codec: str | None = None,
        image_quality: int = DEFAULT_JPEG_QUALITY,
        robot_config: Mapping[str, Any] | None = None,
        calibration: str | Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        _lock: StoreLock | None = None,
    ) -> EpisodeStore:
        """Create an empty store and open it for appending.

        `image_codec` is a spec (data/codecs.py): "h264", "h264:crf=20,gop=16", "av1", "jpeg"
        (quality `image_quality`), "avif", "jxl", "zstd", "none". None: the default for the
        format (`default_image_codec`: h264, or JPEG for zarr format 2, whose outside readers
        have imagecodecs but not tether's video codec).

        Holds the writer lock from before `overwrite` removes anything until the returned store
        is closed, so a store another process is writing is never removed under it.
        """
        if is_url(path):
            raise StoreError(_REMOTE_WRITE.format(url=path))
        path = Path(path)
        if zarr_format not in (2, 3):
            raise StoreError(f"zarr_format must be 2 or 3, got {zarr_format}.")
        if not fps > 0:
            raise StoreError(f"fps must be positive, got {fps}.")
        if image_codec is None:
            image_codec = default_image_codec(zarr_format)
        image_encoding(image_codec, image_quality, zarr_format)  # validate early
        if path.exists() and not overwrite:
            raise StoreError(
                f"{path} already exists. Add episodes to it (`tether record --append`, or "
                "EpisodeStore.open(path, mode='a')), replace it (`--overwrite`, or "
                "overwrite=True), or pick a new path."
            )
        _refuse_non_store(path)
        if _lock is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(exc, f"creating the folder {path.parent}") from exc
        lock = _lock or StoreLock(path).acquire("replace it" if path.exists() else "create it")
        try:
            if path.exists():
                if not overwrite:  # appeared between the check and the lock
                    raise StoreError(f"{path} already exists; pass overwrite=True to replace it.")
                _refuse_non_store(path)
                _editing.remove_tree(path, f"removing the old store {path}")
            _writer.create_files(path, fps, zarr_format, image_codec, image_quality, robot_config,
                                 calibration, attrs)
            store = cls(path, "a", _internal=True, lock=lock)
            store._owns_lock = _lock is None
            return store
        except BaseException:
            if _lock is None:
                lock.release()
            raise

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", *, repair: bool = False) -> EpisodeStore:
        """Open an existing store read-only ("r") or for appending ("a").

        `repair=True` (append mode) also drops committed episodes whose data is missing, which
        a plain append open refuses to do; prefer `tether data repair STORE`, which reports
        what it dropped.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' (read-only) or 'a' (append), got '{mode}'.")
        if repair and mode != "a":
            raise StoreError("repair=True needs mode='a' (repairing writes to the store).")
        if is_url(path) or is_remote(path):
            if mode != "r":
                raise StoreError(_REMOTE_WRITE.format(url=path))
            location = path if is_remote(path) else RemotePath.open(str(path))
            return cls(location, "r", _internal=True)
        return cls(Path(path), mode, _internal=True, repair=repair)

    def close(self) -> None:
        if self._writer is not None and self._writer.active:
            self._writer.discard()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None and self._owns_lock:
            self._lock.release()
        self._lock = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:  # release the lock if the user forgot close()
        with contextlib.suppress(Exception):
            self._release_lock()

    # ------------------------------------------------------------------ description
    @property
    def is_remote(self) -> bool:
        """True when the store is read from an object-store URL (data/location.py)."""
        return is_remote(self.path)

    @property
    def recovery(self) -> Recovery:
        """What open found (see `Recovery`). Asking reads every episode's metadata file once
        (open itself reads none), so damaged metadata is counted here, not at open."""
        if not self._recovery.complete:  # a read-only open listed nothing: do it now
            known = self._h.episodes
            self._recovery = _writer.recover(self._h, self._raw_ends, False, False, full=True)
            self._h.episodes.adopt(known)  # metadata already read stays read
        episodes = getattr(getattr(self, "_h", None), "episodes", None)
        if isinstance(episodes, _episodes.LazyMetadata) and not episodes.checked:
            missing, errors = episodes.check_all()
            self._recovery = dataclasses.replace(
                self._recovery, missing_metadata=max(missing, self._recovery.missing_metadata),
                metadata_errors=tuple(dict.fromkeys((*self._recovery.metadata_errors, *errors))))
        return self._recovery

    @property
    def fps(self) -> float:
        return float(self._root_attrs["fps"])

    @property
    def zarr_format(self) -> int:
        return self._h.zarr_format

    @property
    def attrs(self) -> dict[str, Any]:
        """Store-level attributes (fps, robot_config, calibration, format version, ...)."""
        return dict(self._root_attrs)

    @property
    def meta_attrs(self) -> dict[str, Any]:
        """Attributes of the `meta` group (normalizer statistics, see data/stats.py)."""
        return dict(self._h.meta.attrs)

    @property
    def episode_ends(self) -> np.ndarray:
        return self._h.ends.copy()

    @property
    def n_episodes(self) -> int:
        return self._h.n_episodes

    def __len__(self) -> int:
        return self.n_episodes

    @property
    def n_steps(self) -> int:
        """Committed steps over all episodes."""
        return self._h.n_steps

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._h.ends])).astype(np.int64)

    @property
    def keys(self) -> list[str]:
        """Every array's key: data keys, then `timing/<stream>/<field>` keys."""
        return self.data_keys + self.timing_keys

    @property
    def data_keys(self) -> list[str]:
        """Keys of the arrays under `data/` (what policies and diffusion_policy read)."""
        return sorted(k for k in self._h.arrays if not is_timing_key(k))

    @property
    def timing_keys(self) -> list[str]:
        return sorted(k for k in self._h.arrays if is_timing_key(k))

    @property
    def image_keys(self) -> list[str]:
        return [k for k in self.data_keys if is_image_key(k)]

    @property
    def timing_streams(self) -> dict[str, list[str]]:
        """`stream -> [field, ...]` of the timing arrays the store holds."""
        out: dict[str, list[str]] = {}
        for key in self.timing_keys:
            stream, field = parse_timing_key(key)
            out.setdefault(stream, []).append(field)
        return out

    def array(self, key: str):
        """The zarr array behind `key` (its length may include an uncommitted tail). A video
        array comes wrapped (data/video_store.VideoArray) so that indexing it decodes frames."""
        if key not in self._h.arrays:
            raise StoreError(f"Store {self.path} has no key '{key}'. Keys: {', '.join(self.keys)}.")
        array = self._h.arrays[key]
        if is_video_array(array):
            from tether.data.video_store import VideoArray

            cached = self._video_arrays.get(key)
            if cached is None or cached.zarr_array is not array:
                cached = self._video_arrays[key] = VideoArray(self, key, array)
            return cached
        return array

    def array_dir(self, key: str) -> Path:
        """The folder of `key`'s array on disk (`data/<key>` or `timing/<stream>/<field>`)."""
        self.array(key)
        return self.path / array_path(key)

    def episode_metadata(self, episode: int) -> dict[str, Any]:
        self._check_episode(episode)
        return dict(self._h.episodes[episode])

    def episode_range(self, episode: int) -> tuple[int, int]:
        """(start, stop) step indices of an episode in the concatenated arrays."""
        self._check_episode(episode)
        ends = self._h.ends
        start = int(ends[episode - 1]) if episode > 0 else 0
        return start, int(ends[episode])

    @property
    def next_seed(self) -> int:
        """One past the largest integer `seed` in the episode metadata (0 for none): where
        scripted recording continues on `--append` so appended episodes do not repeat earlier
        ones. Reads only the metadata of episodes committed since `last_commit.json` last
        counted them (data/last_commit.py), so asking costs the same at 100 or 10,000 episodes.
        """
        h = self._h
        n = self.n_episodes
        if h.seeds is None:  # a read-only open: look the count up now
            record = None if self.is_remote else _last_commit.read(self.path)
            h.seeds = record.seeds if record is not None and record.seeds[0] <= n else (0, None)
        count, value = h.seeds
        if count > n:  # counted episodes that are no longer committed: count again
            count, value = 0, None
        for episode in range(count, n):
            value = _last_commit.next_seed_after(value, h.episodes[episode])
        h.seeds = (n, value)
        return 0 if value is None else value

    # ------------------------------------------------------------------ reading
    def get_episode(self, episode: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        start, stop = self.episode_range(episode)
        return self.read_steps(start, stop, keys)

    def timing(self, episode: int) -> dict[str, dict[str, np.ndarray]]:
        """`stream -> {field: array}` of one episode's timing arrays."""
        data = self.get_episode(episode, self.timing_keys)
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, values in data.items():
            stream, field = parse_timing_key(key)
            out.setdefault(stream, {})[field] = values
        return out

    def slice_episode(
        self, episode: int, start: int = 0, stop: int | None = None, keys: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Steps `start:stop` of one episode (episode-relative, like Python slicing)."""
        ep_start, ep_stop = self.episode_range(episode)
        rel = range(ep_stop - ep_start)[slice(start, stop)]
        if rel.step != 1:
            raise StoreError("slice_episode supports contiguous slices only.")
        return self.read_steps(ep_start + rel.start, ep_start + max(rel.start, rel.stop), keys)

    def iter_episodes(self, keys: Iterable[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for episode in range(self.n_episodes):
            yield self.get_episode(episode, keys)

    def read_steps(self, start: int, stop: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Committed steps `start:stop` (store-wide indices) of `keys`, checked.

        A chunk that fails to decode, or one the episode's manifest lists but that is gone
        from disk (zarr would return zeros or a black frame for it), raises a StoreError naming
        the episode, key and frame.
        """
        start, stop = max(0, int(start)), min(int(stop), self.n_steps)
        selected = self.keys if keys is None else list(keys)
        out = {}
        for key in selected:
            arr = self.array(key)
            if is_video_array(arr):  # groups of pictures: decoded from their keyframes
                from tether.data.video_store import VideoFrames

                out[key] = VideoFrames(self, key).read(start, stop)
                self._check_chunks_present(key, start, stop)
                continue
            try:
                out[key] = np.asarray(arr[start:stop])
            except Exception as exc:  # noqa: BLE001 - codec errors have no common base class
                raise self.locate_decode_error(key, start, stop, exc) from exc
            self._check_chunks_present(key, start, stop)
        return out

    def locate(self, step: int) -> tuple[int, int]:
        """(episode, frame within the episode) of a committed store-wide step index."""
        if not 0 <= step < self.n_steps:
            raise StoreError(f"Step {step} is not committed in {self.path} ({self.n_steps} steps).")
        ends = self._h.ends
        episode = int(np.searchsorted(ends, step, side="right"))
        start = int(ends[episode - 1]) if episode > 0 else 0
        return episode, int(step) - start

    def manifest(self, episode: int) -> dict[str, Any] | None:
        """The chunk manifest written when `episode` was committed (None for older stores)."""
        self._check_episode(episode)
        if episode not in self._manifests:
            self._manifests[episode] = _manifest.load(self.path, episode)
        return self._manifests[episode]

    def write_manifest(self, episode: int) -> dict[str, Any]:
        """Rebuild `episode`'s chunk manifest from the data on disk (what repair does for
        episodes recorded before manifests existed). Only for data that was checked first."""
        self.require_writable()
        start, stop = self.episode_range(episode)
        man = _manifest.build(self.path, self._h.arrays, start, stop)
        try:
            write_durable(_manifest.manifest_file(self.path, episode), _manifest.encode(man))
        except OSError as exc:
            raise os_error(exc, f"writing the manifest of episode {episode}") from exc
        self._manifests[episode] = man
        return man

    def chunk_path(self, key: str, chunk_index: int) -> Path:
        """File of chunk `chunk_index` (along time) of `key`'s array."""
        return _manifest.chunk_path(self.path, key, self.array(key), chunk_index)

    def missing_frame_error(self, key: str, step: int) -> StoreError | None:
        """For readers that open chunk files directly: the error for an absent chunk file.

        None when the frame was never stored because it was all zeros (then zeros are right).
        Stores without manifests cannot tell; they keep zarr's behaviour (zeros) with a warning.
        """
        episode, frame = self.locate(step)
        expected = _manifest.expected_frame(self.manifest(episode), key, frame)
        if expected is None:
            log.warning("Store %s has no manifest for episode %d: frame %d of '%s' has no chunk "
                        "and reads as zeros; run `tether data verify`.", self.path, episode, frame, key)
            return None
        if not expected:
            return None
        return self._missing_error(key, episode, frame, step)

    def decode_error(self, key: str, step: int, exc: BaseException) -> StoreError:
        """The error for a chunk of `key` at store step `step` that did not decode."""
        episode, frame = self.locate(step)
        path = self.chunk_path(key, step // int(self.array(key).chunks[0]))
        return StoreError(
            f"Cannot decode episode {episode}, key '{key}', frame {frame} of {self.path} "
            f"(chunk {path.relative_to(self.path)}): {type(exc).__name__}: {exc}. The chunk is "
            f"corrupt; run `tether data verify {self.path}` for a full report, then restore the "
            f"file from a backup or drop the episode (`tether data repair {self.path} "
            "--drop-damaged`)."
        )

    def locate_decode_error(self, key: str, start: int, stop: int, exc: BaseException) -> StoreError:
        """Find the first chunk of `start:stop` that fails to decode and name it."""
        arr = self.array(key)
        rows = int(arr.chunks[0])
        for chunk_start in range(start - start % rows, stop, rows):
            step = max(start, chunk_start)
            try:
                np.asarray(arr[step : step + 1])
            except Exception as inner:  # noqa: BLE001
                return self.decode_error(key, step, inner)
        return StoreError(f"Reading '{key}' steps {start}:{stop} of {self.path} failed: "
                          f"{type(exc).__name__}: {exc}")

    def _missing_error(self, key: str, episode: int, frame: int, step: int) -> StoreError:
        path = self.chunk_path(key, step // int(self.array(key).chunks[0]))
        return StoreError(
            f"Episode {episode}, key '{key}', frame {frame} of {self.path}: its chunk file "
            f"{path.relative_to(self.path)} is missing, though the episode's manifest lists it "
            f"(zarr would read it back as zeros). Run `tether data verify {self.path}` for a full "
            f"report, then restore the file from a backup or drop the episode (`tether data "
            f"repair {self.path} --drop-damaged`)."
        )

    def _check_chunks_present(self, key: str, start: int, stop: int) -> None:
        if stop <= start:
            return
        arr = self.array(key)
        rows = int(arr.chunks[0])
        if rows > 1:
            # Low-dim chunks hold many episodes: look at the chunk files first, and read the
            # manifests only of episodes overlapping an absent one (all-zero chunks are never
            # written, so absence alone is not loss). Reading all rows then costs one check per
            # chunk, not one manifest per episode (flat index build as the store grows).
            for chunk in range(start // rows, (stop - 1) // rows + 1):
                if self.chunk_path(key, chunk).is_file():
                    continue
                c_lo, c_hi = max(start, chunk * rows), min(stop, (chunk + 1) * rows)
                for episode in range(self.locate(c_lo)[0], self.locate(c_hi - 1)[0] + 1):
                    man = self.manifest(episode)
                    if man is not None and key in man["keys"] and chunk in man["keys"][key].get("chunks", []):
                        ep_start, _ = self.episode_range(episode)
                        lo = max(c_lo, ep_start)
                        raise self._missing_error(key, episode, lo - ep_start, lo)
            return
        first, _ = self.locate(start)
        last, _ = self.locate(stop - 1)
        for episode in range(first, last + 1):
            man = self.manifest(episode)
            if man is None or key not in man["keys"]:
                continue
            ep_start, ep_stop = self.episode_range(episode)
            lo, hi = max(start, ep_start), min(stop, ep_stop)
            entry = man["keys"][key]
            if "frames_crc32" in entry:
                crcs = entry["frames_crc32"]
                for step in range(lo, hi):
                    frame = step - ep_start
                    if frame < len(crcs) and crcs[frame] is not None and \
                            not self.chunk_path(key, step).is_file():
                        raise self._missing_error(key, episode, frame, step)
            else:
                for chunk in entry.get("chunks", []):
                    c_lo, c_hi = max(lo, chunk * rows), min(hi, (chunk + 1) * rows)
                    if c_lo < c_hi and not self.chunk_path(key, chunk).is_file():
                        raise self._missing_error(key, episode, c_lo - ep_start, c_lo)

    # ------------------------------------------------------------------ writing
    def begin_episode(self, flush_every: int = 32) -> EpisodeWriter:
        """Start an episode; data goes to the uncommitted tail until `commit()`."""
        self.require_writable()
        if self._writer is not None and self._writer.active:
            raise StoreError("An episode is already being written; commit() or discard() it first.")
        self._writer = EpisodeWriter(self._h, flush_every)
        return self._writer

    def add_episode(self, data: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None) -> int:
        """Write a whole episode (`key -> (T, ...)` arrays) and commit it. Returns its index."""
        writer = self.begin_episode()
        try:
            writer.extend(data)
            return writer.commit(metadata)
        except BaseException:
            if writer.active:
                writer.discard()
            raise

    def update_episode_metadata(self, episode: int, **fields: Any) -> None:
        """Change metadata of a committed episode (for example the success flag after review).

        Rewrites that episode's metadata file only.
        """
        self.require_writable()
        self._check_episode(episode)
        old = self._h.episodes[episode]
        entry = {**old, **jsonable(fields)}
        try:
            _episodes.write(self.path, episode, entry)
        except OSError as exc:
            raise os_error(exc, f"writing the metadata of episode {episode}") from exc
        self._h.episodes[episode] = entry
        self._h.seeds = _seeds_after_edit(self._h.seeds, episode, old, entry)
        _last_commit.write(self.path, self.n_episodes, self._h.seeds or (0, None))

    def set_attrs(self, **fields: Any) -> None:
        """Update store-level attributes (not the format keys)."""
        self.require_writable()
        for key in _MANAGED_ATTRS:
            if key in fields:
                raise StoreError(f"'{key}' is managed by the store and cannot be set.")
        try:
            self._h.root.attrs.update(jsonable(fields))
        except OSError as exc:
            raise os_error(exc, "writing attributes") from exc
        self._root_attrs = dict(self._h.root.attrs)

    def set_meta_attrs(self, **fields: Any) -> None:
        """Update attributes of the `meta` group (derived data such as normalizer statistics)."""
        self.require_writable()
        try:
            self._h.meta.attrs.update(jsonable(fields))
        except OSError as exc:
            raise os_error(exc, f"writing meta attributes {sorted(fields)}") from exc

    def require_writable(self) -> None:
        """StoreError unless this store is open for appending and holds the writer lock."""
        if self.mode != "a":
            raise StoreError(
                f"{self.path} is open read-only; open it with EpisodeStore.open(path, mode='a') "
                "to write."
            )
        if self._lock is None or not self._lock.held:
            raise StoreError(f"{self.path} was closed; open it again to write.")

    # ------------------------------------------------------------------ editing (data/editing.py)
    def delete_episodes(self, episodes: Iterable[int]) -> None:
        """Remove episodes and compact the store (frames are copied, never re-encoded).

        The store is rewritten beside itself and swapped in with directory renames, so a crash
        leaves either the old or the new store (plus a `.old`/`.new` sibling to clean up).
        """
        self.require_writable()
        drop = sorted(set(int(e) for e in episodes))
        for episode in drop:
            self._check_episode(episode)
        if not drop:
            return
        keep = [e for e in range(self.n_episodes) if e not in set(drop)]
        if self._writer is not None and self._writer.active:
            self._writer.discard()
        assert self._lock is not None
        _editing.rewrite(self, keep, self._lock)
        self._writer = None
        self._manifests = {}
        self._load()

    def delete_episode(self, episode: int) -> None:
        self.delete_episodes([episode])

    def append_from(self, other: EpisodeStore | str | Path, episodes: Iterable[int] | None = None) -> list[int]:
        """Copy committed episodes of another store into this one (merge). Returns new indices.

        JPEG frames with the same quality are copied as bytes (no generation loss); everything
        else goes through the normal, checked append path.
        """
        self.require_writable()
        source = other if isinstance(other, EpisodeStore) else EpisodeStore.open(other, "r")
        try:
            return _editing.append_from(self, source, episodes)
        finally:
            if source is not other:
                source.close()

    @classmethod
    def merge(cls, out: str | Path, sources: Iterable[str | Path], **create_kwargs: Any) -> EpisodeStore:
        """Create `out` holding every committed episode of `sources`, in order."""
        return _editing.merge(cls, out, sources, **create_kwargs)

    # ------------------------------------------------------------------ internals
    def _load(self) -> None:
        import zarr

        register_codecs()
        path = self.path
        remote = is_remote(path)
        if self.mode == "a" and self._lock is None:
            # Before recovery touches anything: nobody else may be writing or swapping.
            self._lock = StoreLock(path).acquire("open it for appending")
        if not remote:  # a pushed store is never compacted in place (data/remote.py)
            _editing.resolve_interrupted_swap(path, self.mode == "a")
        if not looks_like_store(path):
            if remote or not path.exists():
                raise StoreError(f"No episode store at {path}: the path does not exist.")
            raise StoreError(
                f"{path} is not an episode store (no zarr group metadata found). Create one with "
                "`tether record` or EpisodeStore.create()."
            )
        if not remote:
            check_metadata_files(path)
        try:
            target = path.zarr_store if remote else str(path)
            root = zarr.open_group(target, mode="r" if self.mode == "r" else "r+")
            self._root_attrs = dict(root.attrs)
        except Exception as exc:
            raise damaged(path, path, exc) from exc
        check_format(path, self._root_attrs)
        try:
            meta = root[META]
            root[DATA]  # noqa: B018 - must exist
            ends_array = meta["episode_ends"]
        except KeyError as exc:
            raise StoreError(
                f"{path} is missing {exc} (its folder or zarr metadata file is gone); the store "
                "is damaged. Restore it from a backup."
            ) from exc
        except Exception as exc:
            raise damaged(path, path / META, exc) from exc
        try:
            arrays = list_arrays(root)
        except Exception as exc:
            raise damaged(path, path / DATA, exc) from exc
        try:
            raw_ends = np.asarray(ends_array[:], dtype=np.int64)
        except Exception as exc:
            raise damaged(path, path / EPISODE_ENDS, exc) from exc
        self._h = _writer.Handles(path, root, meta, ends_array, arrays)
        self._raw_ends = raw_ends
        self._recovery = _writer.recover(self._h, raw_ends, self.mode == "a", self._repair,
                                         full=False)

    def _check_episode(self, episode: int) -> None:
        if not 0 <= episode < self.n_episodes:
            raise StoreError(
                f"Episode {episode} does not exist; {self.path} has {self.n_episodes} episodes "
                f"(0..{self.n_episodes - 1})."
            )


def _seeds_after_edit(seeds: tuple[int, int | None] | None, episode: int, old: Mapping[str, Any],
                      new: Mapping[str, Any]) -> tuple[int, int | None] | None:
    """The seed count once one counted episode's metadata changed from `old` to `new`."""
    if seeds is None or episode >= seeds[0] or old.get("seed") == new.get("seed"):
        return seeds
    value = _last_commit.next_seed_after(seeds[1], new)
    if _last_commit.next_seed_after(None, old) == seeds[1] and value == seeds[1]:
        return (0, None)  # the largest seed may have gone down: count again when asked
    return (seeds[0], value)


def check_format(path: Path, attrs: Mapping[str, Any]) -> None:
    """StoreError unless `attrs` are a store this tether reads (naming migrate or upgrade)."""
    fmt = attrs.get("tether_format")
    version = attrs.get("format_version")
    if fmt != FORMAT_NAME:
        raise StoreError(
            f"{path} is a zarr group but not a tether episode store (attribute tether_format "
            f"is {fmt!r}). If it is a diffusion_policy / UMI replay buffer, import it with "
            f"`tether import {path} --format diffusion_policy --out new.zarr --fps N`."
        )
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format version {version}, newer than this tether supports "
            f"({FORMAT_VERSION}). Upgrade tether to read it."
        )
    if version < FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format version {version}; this tether reads version "
            f"{FORMAT_VERSION} (timing arrays in their own group, one metadata file per "
            f"episode). Run `tether data migrate {path}` once to upgrade it in place (frames are "
            "moved, not re-encoded; keep a backup if other tools read it)."
        )


def _refuse_non_store(path: Path) -> None:
    if path.exists() and not looks_like_store(path) and any(path.iterdir()):
        raise StoreError(
            f"Refusing to overwrite {path}: it is a non-empty directory that is not an "
            "episode store. Pick another path or remove it yourself."
        )


def chunk_file(store: EpisodeStore, key: str, step: int) -> Path:
    """Path of the file holding frame `step` of image key `key` (one frame per chunk)."""
    return store.chunk_path(key, step)


def migrate(path: str | Path) -> dict[str, Any]:
    """Upgrade a store written by an older tether to the current format (see data/editing)."""
    return _editing.migrate(Path(path))
