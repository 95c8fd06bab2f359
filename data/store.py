"""The Zarr episode store: diffusion_policy's ReplayBuffer layout, with an atomic commit point.

On disk (zarr format 3 by default, format 2 on request):

    <store>/data/<key>        arrays concatenated over time: `state` (T,D float32), `action`
                              (T,A float32), `image.<cam>` (T,H,W,3 uint8, one JPEG frame per
                              chunk), `timestamp` and per-stream `<stream>_t` (float64 seconds)
    <store>/meta/episode_ends int64, cumulative end index of every committed episode

Root attributes hold `tether_format`, `format_version`, `fps`, the robot config and calibration
reference; `meta` attributes hold one metadata dict per committed episode and the normalizer
statistics.

Crash safety: episode data is appended to the tail of every `data/` array first, then the
episode's chunk manifest (`manifest/<episode>.json`, see data/manifest.py) is written and the
file system synced, then its metadata, and `meta/episode_ends` last, which is fsynced. Each file
write is atomic: zarr >= 3.1.3 (pinned) writes every file to `<name>.<uuid>.partial` and
`os.replace`s it (zarr/storage/_local.py, `_atomic_write`), and the store's own files go through
data/durable.py. So `episode_ends` is the single commit point: a writer killed at any moment
leaves every committed episode intact, and the partial tail is truncated when the store is next
opened for writing (and hidden, without touching the disk, when opened read-only). Damage that
is not a partial tail (committed data missing) is never truncated silently: append opens refuse
and name `tether data repair`. One writer lock (`<store>.lock`, data/lock.py) covers recovery,
appends, compaction and re-creation. See docs/data.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.data import manifest as _manifest
from tether.data.codecs import (
    DEFAULT_JPEG_QUALITY,
    image_encoding,
    is_jpeg_array,
    lowdim_encoding,
    register_codecs,
)
from tether.data.durable import fsync_dir, fsync_file, sync_filesystem, write_durable
from tether.data.lock import StoreLock, holder_pid

log = logging.getLogger(__name__)

FORMAT_NAME = "tether-episodes"
FORMAT_VERSION = 1
EPISODE_ENDS = "meta/episode_ends"
LOWDIM_CHUNK = 1024  # rows per chunk of low-dim arrays
_WRITE_BLOCK = 64  # frames per zarr write call


@dataclass(frozen=True)
class Recovery:
    """What `open` found: a partial (uncommitted) tail left by a crashed writer, or damage.

    A partial tail (data after the last commit, at most one metadata entry and one torn
    `episode_ends` entry) is what a killed writer leaves; append opens truncate it. Anything
    more (`lost_episodes`, `missing_metadata`) means committed data is gone; append opens refuse
    unless `repair=True`.
    """

    partial_steps: int  # steps beyond the last committed episode
    dropped_metadata: int  # metadata entries of uncommitted episodes
    invalid_ends: int  # trailing episode_ends entries that were not a valid commit
    repaired: bool  # True when the tail was truncated on disk (append mode)
    lost_episodes: int = 0  # episode_ends entries that look committed but whose data is missing
    missing_metadata: int = 0  # committed episodes without a metadata entry
    missing_keys: tuple[str, ...] = ()  # arrays the last commit had that are gone

    @property
    def clean(self) -> bool:
        return self.partial_steps == 0 and self.dropped_metadata == 0 and self.invalid_ends == 0

    @property
    def damaged(self) -> bool:
        """Committed data is missing: not a crash tail, needs `tether data repair`."""
        return self.lost_episodes > 0 or self.missing_metadata > 0 or bool(self.missing_keys)


def is_image_key(key: str) -> bool:
    return key.startswith("image.") and not _is_time_key(key) and not key.endswith("_index")


def _is_time_key(key: str) -> bool:
    return key == "timestamp" or key.endswith("_t") or key.endswith("_t_host")


class EpisodeStore:
    """A dataset of episodes in one Zarr directory. Use `create` or `open`, not the constructor.

    Modes: "r" read-only (never changes anything on disk, not even a lock file); "a" append
    (takes the writer lock `<store>.lock`, truncates a crashed writer's partial tail, refuses
    when committed data is missing unless `repair=True`).
    """

    def __init__(self, path: Path, mode: str, _internal: bool = False, *, repair: bool = False,
                 lock: StoreLock | None = None) -> None:
        if not _internal:
            raise TypeError("use EpisodeStore.create(...) or EpisodeStore.open(...)")
        self.path = Path(path)
        self.mode = mode
        self._repair = repair
        self._owns_lock = lock is None
        self._lock: StoreLock | None = lock
        self._writer: EpisodeWriter | None = None
        self._manifests: dict[int, dict[str, Any] | None] = {}
        self.recovery = Recovery(0, 0, 0, False)
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
        image_codec: str = "jpeg",
        image_quality: int = DEFAULT_JPEG_QUALITY,
        robot_config: Mapping[str, Any] | None = None,
        calibration: str | Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        _lock: StoreLock | None = None,
    ) -> EpisodeStore:
        """Create an empty store and open it for appending.

        Holds the writer lock from before `overwrite` removes anything until the returned store
        is closed, so a store another process is writing is never removed under it.
        """
        path = Path(path)
        if zarr_format not in (2, 3):
            raise StoreError(f"zarr_format must be 2 or 3, got {zarr_format}.")
        if not fps > 0:
            raise StoreError(f"fps must be positive, got {fps}.")
        image_encoding(image_codec, image_quality, zarr_format)  # validate early
        if path.exists() and not overwrite:
            raise StoreError(
                f"{path} already exists. Add episodes to it (`tether record --append`, or "
                "EpisodeStore.open(path, mode='a')), replace it (`--overwrite`, or "
                "overwrite=True), or pick a new path."
            )
        if path.exists() and not _looks_like_store(path) and any(path.iterdir()):
            raise StoreError(
                f"Refusing to overwrite {path}: it is a non-empty directory that is not an "
                "episode store. Pick another path or remove it yourself."
            )
        if _lock is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _os_error(exc, f"creating the folder {path.parent}") from exc
        lock = _lock or StoreLock(path).acquire("replace it" if path.exists() else "create it")
        try:
            cls._create_locked(path, fps, zarr_format, image_codec, image_quality, robot_config,
                               calibration, attrs, overwrite)
            if _lock is not None:
                return cls(path, "a", _internal=True, lock=_lock)
            return cls._adopt(path, lock)
        except BaseException:
            if _lock is None:
                lock.release()
            raise

    @classmethod
    def _adopt(cls, path: Path, lock: StoreLock) -> EpisodeStore:
        """Open `path` for appending with a lock this process already holds, and own it."""
        store = cls(path, "a", _internal=True, lock=lock)
        store._owns_lock = True
        return store

    @staticmethod
    def _create_locked(path: Path, fps: float, zarr_format: int, image_codec: str,
                       image_quality: int, robot_config: Mapping[str, Any] | None,
                       calibration: str | Mapping[str, Any] | None,
                       attrs: Mapping[str, Any] | None, overwrite: bool) -> None:
        import zarr

        if path.exists():
            if not overwrite:  # appeared between the check and the lock
                raise StoreError(f"{path} already exists; pass overwrite=True to replace it.")
            if not _looks_like_store(path) and any(path.iterdir()):
                raise StoreError(
                    f"Refusing to overwrite {path}: it is a non-empty directory that is not an "
                    "episode store. Pick another path or remove it yourself."
                )
            try:
                shutil.rmtree(path)
            except OSError as exc:
                raise _os_error(exc, f"removing the old store {path}") from exc
        root_attrs = {
            "tether_format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fps": float(fps),
            "image_codec": image_codec,
            "image_quality": int(image_quality),
            "robot_config": _jsonable(robot_config or {}),
            "calibration": _jsonable(calibration),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **_jsonable(dict(attrs or {})),
        }
        try:
            root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
            root.create_group("data")
            meta = root.create_group("meta")
            meta.attrs["episodes"] = []
            enc = lowdim_encoding(zarr_format)
            meta.create_array(
                "episode_ends", shape=(0,), chunks=(1 << 16,), dtype="int64", fill_value=0, **enc.kwargs
            )
            root.attrs.update(root_attrs)  # written last: a store without it is not a store
        except OSError as exc:
            raise _os_error(exc, f"creating {path}") from exc

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
    def fps(self) -> float:
        return float(self._root_attrs["fps"])

    @property
    def zarr_format(self) -> int:
        return int(self._root.metadata.zarr_format)

    @property
    def attrs(self) -> dict[str, Any]:
        """Store-level attributes (fps, robot_config, calibration, format version, ...)."""
        return dict(self._root_attrs)

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    def __len__(self) -> int:
        return self.n_episodes

    @property
    def n_steps(self) -> int:
        """Committed steps over all episodes."""
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._ends])).astype(np.int64)

    @property
    def keys(self) -> list[str]:
        return sorted(self._arrays)

    @property
    def image_keys(self) -> list[str]:
        return [k for k in self.keys if is_image_key(k)]

    def array(self, key: str):
        """The zarr array behind `data/<key>` (its length may include an uncommitted tail)."""
        if key not in self._arrays:
            raise StoreError(f"Store {self.path} has no key '{key}'. Keys: {', '.join(self.keys)}.")
        return self._arrays[key]

    def episode_metadata(self, episode: int) -> dict[str, Any]:
        self._check_episode(episode)
        return dict(self._episodes_meta[episode])

    def episode_range(self, episode: int) -> tuple[int, int]:
        """(start, stop) step indices of an episode in the concatenated arrays."""
        self._check_episode(episode)
        start = int(self._ends[episode - 1]) if episode > 0 else 0
        return start, int(self._ends[episode])

    # ------------------------------------------------------------------ reading
    def get_episode(self, episode: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        start, stop = self.episode_range(episode)
        return self._read(start, stop, keys)

    def slice_episode(
        self, episode: int, start: int = 0, stop: int | None = None, keys: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Steps `start:stop` of one episode (episode-relative, like Python slicing)."""
        ep_start, ep_stop = self.episode_range(episode)
        rel = range(ep_stop - ep_start)[slice(start, stop)]
        if rel.step != 1:
            raise StoreError("slice_episode supports contiguous slices only.")
        return self._read(ep_start + rel.start, ep_start + max(rel.start, rel.stop), keys)

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
            try:
                out[key] = np.asarray(arr[start:stop])
            except Exception as exc:  # noqa: BLE001 - codec errors have no common base class
                raise self._locate_decode_error(key, start, stop, exc) from exc
            self._check_chunks_present(key, start, stop)
        return out

    def _read(self, start: int, stop: int, keys: Iterable[str] | None) -> dict[str, np.ndarray]:
        return self.read_steps(start, stop, keys)

    def locate(self, step: int) -> tuple[int, int]:
        """(episode, frame within the episode) of a committed store-wide step index."""
        if not 0 <= step < self.n_steps:
            raise StoreError(f"Step {step} is not committed in {self.path} ({self.n_steps} steps).")
        episode = int(np.searchsorted(self._ends, step, side="right"))
        start = int(self._ends[episode - 1]) if episode > 0 else 0
        return episode, int(step) - start

    def manifest(self, episode: int) -> dict[str, Any] | None:
        """The chunk manifest written when `episode` was committed (None for older stores)."""
        self._check_episode(episode)
        if episode not in self._manifests:
            self._manifests[episode] = _manifest.load(self.path, episode)
        return self._manifests[episode]

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
        arr = self.array(key)
        path = _manifest.chunk_path(self.path / "data", key, arr, step // int(arr.chunks[0]))
        return StoreError(
            f"Cannot decode episode {episode}, key '{key}', frame {frame} of {self.path} "
            f"(chunk {path.relative_to(self.path)}): {type(exc).__name__}: {exc}. The chunk is "
            f"corrupt; run `tether data verify {self.path}` for a full report, then restore the "
            f"file from a backup or drop the episode (`tether data repair {self.path} "
            "--drop-damaged`)."
        )

    def _missing_error(self, key: str, episode: int, frame: int, step: int) -> StoreError:
        path = _manifest.chunk_path(self.path / "data", key, self.array(key),
                                    step // int(self.array(key).chunks[0]))
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
        data_dir = self.path / "data"
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
                            not _manifest.chunk_path(data_dir, key, arr, step).is_file():
                        raise self._missing_error(key, episode, frame, step)
            else:
                for chunk in entry.get("chunks", []):
                    c_lo, c_hi = max(lo, chunk * rows), min(hi, (chunk + 1) * rows)
                    if c_lo < c_hi and not _manifest.chunk_path(data_dir, key, arr, chunk).is_file():
                        raise self._missing_error(key, episode, c_lo - ep_start, c_lo)

    def _locate_decode_error(self, key: str, start: int, stop: int, exc: BaseException) -> StoreError:
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

    @property
    def next_seed(self) -> int:
        """One past the largest `seed` in the episode metadata (0 for none): where scripted
        recording continues on `--append` so appended episodes do not repeat earlier ones."""
        seeds = [m.get("seed") for m in self._episodes_meta]
        ints = [int(x) for x in seeds if isinstance(x, int) and not isinstance(x, bool)]
        return max(ints) + 1 if ints else 0

    # ------------------------------------------------------------------ writing
    def begin_episode(self, flush_every: int = 32) -> EpisodeWriter:
        """Start an episode; data goes to the uncommitted tail until `commit()`."""
        self._require_writable()
        if self._writer is not None and self._writer.active:
            raise StoreError("An episode is already being written; commit() or discard() it first.")
        self._writer = EpisodeWriter(self, flush_every)
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
        """Change metadata of a committed episode (for example the success flag after review)."""
        self._require_writable()
        self._check_episode(episode)
        episodes = list(self._episodes_meta)
        episodes[episode] = {**episodes[episode], **_jsonable(fields)}
        self._write_meta_attr("episodes", episodes)
        self._episodes_meta = episodes

    def set_attrs(self, **fields: Any) -> None:
        """Update store-level attributes (not the format keys)."""
        self._require_writable()
        for key in ("tether_format", "format_version"):
            if key in fields:
                raise StoreError(f"'{key}' is managed by the store and cannot be set.")
        try:
            self._root.attrs.update(_jsonable(fields))
        except OSError as exc:
            raise _os_error(exc, "writing attributes") from exc
        self._root_attrs = dict(self._root.attrs)

    @property
    def meta_attrs(self) -> dict[str, Any]:
        return dict(self._meta.attrs)

    def _write_meta_attr(self, key: str, value: Any) -> None:
        try:
            self._meta.attrs[key] = value
        except OSError as exc:
            raise _os_error(exc, f"writing meta attribute '{key}'") from exc

    def delete_episodes(self, episodes: Iterable[int]) -> None:
        """Remove episodes and compact the store (frames are copied, never re-encoded).

        The store is rewritten beside itself and swapped in with directory renames, so a crash
        leaves either the old or the new store (plus a `.old`/`.new` sibling to clean up).
        """
        self._require_writable()
        drop = sorted(set(int(e) for e in episodes))
        for episode in drop:
            self._check_episode(episode)
        if not drop:
            return
        keep = [e for e in range(self.n_episodes) if e not in set(drop)]
        self._rewrite(keep)

    def delete_episode(self, episode: int) -> None:
        self.delete_episodes([episode])

    def append_from(self, other: EpisodeStore | str | Path, episodes: Iterable[int] | None = None) -> list[int]:
        """Copy committed episodes of another store into this one (merge). Returns new indices.

        JPEG frames with the same quality are copied as bytes (no generation loss); everything
        else goes through the normal, checked append path.
        """
        self._require_writable()
        source = other if isinstance(other, EpisodeStore) else EpisodeStore.open(other, "r")
        if abs(source.fps - self.fps) > 1e-9:
            raise StoreError(
                f"Cannot merge {source.path} (fps {source.fps}) into {self.path} (fps {self.fps}); "
                "resample one of them first."
            )
        if self.n_steps and set(source.keys) != set(self.keys):
            raise StoreError(
                f"Cannot merge {source.path}: its keys {source.keys} differ from {self.keys}."
            )
        added = []
        for episode in range(source.n_episodes) if episodes is None else episodes:
            added.append(self._copy_episode(source, int(episode)))
        return added

    @classmethod
    def merge(cls, out: str | Path, sources: Iterable[str | Path], **create_kwargs: Any) -> EpisodeStore:
        """Create `out` holding every committed episode of `sources`, in order."""
        sources = [EpisodeStore.open(s, "r") for s in sources]
        if not sources:
            raise StoreError("merge needs at least one source store.")
        first = sources[0]
        kwargs = {
            "zarr_format": first.zarr_format,
            "image_codec": first.attrs.get("image_codec", "jpeg"),
            "image_quality": first.attrs.get("image_quality", DEFAULT_JPEG_QUALITY),
            "robot_config": first.attrs.get("robot_config"),
            "calibration": first.attrs.get("calibration"),
            **create_kwargs,
        }
        try:
            store = cls.create(out, first.fps, **kwargs)
            try:
                for source in sources:
                    store.append_from(source)
            except BaseException:
                store.close()  # releases the lock; what was merged so far stays committed
                raise
        finally:
            for source in sources:
                source.close()
        return store

    # ------------------------------------------------------------------ internals: loading
    def _load(self) -> None:
        import zarr

        register_codecs()
        path = self.path
        if self.mode == "a" and self._lock is None:
            # Before recovery touches anything: nobody else may be writing or swapping.
            self._lock = StoreLock(path).acquire("open it for appending")
        self._resolve_interrupted_swap()
        if not path.exists():
            raise StoreError(f"No episode store at {path}: the path does not exist.")
        if not _looks_like_store(path):
            raise StoreError(
                f"{path} is not an episode store (no zarr group metadata found). Create one with "
                "`tether record` or EpisodeStore.create()."
            )
        _check_metadata_files(path)
        try:
            self._root = zarr.open_group(str(path), mode="r" if self.mode == "r" else "r+")
            self._root_attrs = dict(self._root.attrs)
        except Exception as exc:
            raise _damaged(path, path, exc) from exc
        fmt = self._root_attrs.get("tether_format")
        version = self._root_attrs.get("format_version")
        if fmt != FORMAT_NAME:
            raise StoreError(
                f"{path} is a zarr group but not a tether episode store (attribute tether_format "
                f"is {fmt!r}). If it is a diffusion_policy replay buffer, import it with "
                "tether.data.converters.import_replay_buffer()."
            )
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(
                f"{path} has store format version {version}, newer than this tether supports "
                f"({FORMAT_VERSION}). Upgrade tether to read it."
            )
        try:
            self._meta = self._root["meta"]
            data = self._root["data"]
            ends_array = self._meta["episode_ends"]
        except KeyError as exc:
            raise StoreError(
                f"{path} is missing {exc} (its folder or zarr metadata file is gone); the store "
                "is damaged. Restore it from a backup."
            ) from exc
        except Exception as exc:
            raise _damaged(path, path / "meta", exc) from exc
        try:
            self._arrays = {name: arr for name, arr in data.arrays()}
        except Exception as exc:
            raise _damaged(path, path / "data", exc) from exc
        self._ends_array = ends_array
        self._episodes_meta = self._read_episode_list()
        try:
            ends = np.asarray(ends_array[:], dtype=np.int64)
        except Exception as exc:
            raise _damaged(path, path / "meta" / "episode_ends", exc) from exc
        self._recover(ends)

    def _keys_lost_since_commit(self, valid: int) -> tuple[str, ...]:
        """Arrays the last committed episode's manifest lists that the store no longer has."""
        if valid == 0:
            return ()
        try:
            man = _manifest.load(self.path, valid - 1)
        except StoreError:
            return ()  # a corrupt manifest is reported by verify, not fatal here
        if man is None:
            return ()
        return tuple(sorted(set(man["keys"]) - set(self._arrays)))

    def _read_episode_list(self) -> list[dict[str, Any]]:
        episodes = self._meta.attrs.get("episodes", [])
        if not isinstance(episodes, list) or not all(isinstance(e, dict) for e in episodes):
            if self._repair:  # every entry is replaced by a placeholder in _recover
                log.warning("Store %s: the per-episode metadata is unreadable; resetting it.", self.path)
                return []
            meta_file = _meta_file(self.path / "meta", attrs=True)
            raise StoreError(
                f"{meta_file} is damaged: its 'episodes' attribute must be a list of one metadata "
                f"object per episode, found {type(episodes).__name__}. Restore the file from a "
                f"backup, or run `tether data repair {self.path}` to reset the per-episode "
                "metadata (the recorded data is kept)."
            )
        return list(episodes)

    def _resolve_interrupted_swap(self) -> None:
        """A crash between compaction's two renames leaves `<store>.old` (and `.new`) only.

        Append mode (lock held) finishes or rolls back the swap and removes leftovers. Read-only
        mode never renames or deletes anything: it refuses with the command that fixes it.
        """
        new = self.path.with_name(self.path.name + ".new")
        old = self.path.with_name(self.path.name + ".old")
        if self.mode == "a":
            _finish_interrupted_swap(self.path, cleanup=True)
            return
        if not self.path.exists() and old.exists():
            pid = holder_pid(self.path)
            if pid:
                who = f"process {pid}" if pid > 0 else "another process"
                raise StoreError(
                    f"{self.path} is being compacted by {who} right now; open it again when "
                    "that finishes."
                )
            raise StoreError(
                f"{self.path} was left half-way through a compaction by a process that crashed "
                f"({old.name}{' and ' + new.name if new.exists() else ''} exist beside it). Run "
                f"`tether data repair {self.path}` (or open it with mode='a') to finish it."
            )

    def _recover(self, ends: np.ndarray) -> None:
        """Keep the longest valid prefix of episode_ends; hide or truncate what follows it.

        A killed writer leaves at most: data past the last commit, one metadata entry and one
        `episode_ends` entry still at the fill value 0 (the array grew but its chunk was not yet
        rewritten). That tail is truncated in append mode. Any other invalid entry means
        committed episodes lost data: append mode refuses (unless repairing); read-only hides it.
        """
        lengths = [arr.shape[0] for arr in self._arrays.values()]
        limit = min(lengths) if lengths else 0
        valid = 0
        previous = 0
        for end in ends:
            if end <= previous or end > limit:
                break
            previous = int(end)
            valid += 1
        tail = ends[valid:]
        invalid = len(tail)
        # Zeros are the fill value: a commit cut between growing the array and writing its
        # chunk, or a shrink cut short. A non-zero invalid end is a commit whose data is gone.
        lost = 0 if all(int(e) == 0 for e in tail) else invalid
        # Manifests are written just before the commit point: one past the last valid episode
        # is an uncommitted episode's; any further one belonged to a commit that was lost.
        lost = max(lost, _manifest.count_from(self.path, valid + 1))
        meta_count = len(self._episodes_meta)
        missing_meta = max(0, valid - meta_count)
        # One extra entry is an uncommitted episode's; more are metadata of lost commits.
        dropped_meta = max(0, meta_count - valid)
        if dropped_meta > 1:
            lost = max(lost, dropped_meta - 1)
        self._ends = ends[:valid].copy()
        committed = self.n_steps
        partial = max(lengths) - committed if lengths else 0
        missing_keys = self._keys_lost_since_commit(valid)
        if (lost or missing_meta or missing_keys) and self.mode == "a" and not self._repair:
            raise StoreError(
                f"{self.path} is damaged, not just interrupted: "
                + _describe_damage(lost, missing_meta, valid, missing_keys)
                + f" Opening it for appending would silently drop that. Run `tether data verify "
                f"{self.path}` to see the damage, then `tether data repair {self.path}` to keep the "
                f"{valid} intact episodes (or restore the store from a backup)."
            )
        self._episodes_meta = self._episodes_meta[:valid]
        while len(self._episodes_meta) < valid:
            self._episodes_meta.append({"recovered": True, "notes": "metadata was lost"})
        repaired = False
        uncommitted_schema = valid == 0 and bool(self._arrays)
        if (partial or dropped_meta or invalid or missing_meta or uncommitted_schema) \
                and self.mode == "a":
            try:
                if uncommitted_schema:
                    self._drop_uncommitted_schema()
                self._truncate_tail()
                self._shrink_ends(valid)
                if dropped_meta or missing_meta:
                    self._meta.attrs["episodes"] = self._episodes_meta
            except OSError as exc:
                raise _os_error(exc, "truncating an interrupted episode") from exc
            repaired = True
        if self.mode == "a":
            _manifest.remove_from(self.path, valid)  # manifests of uncommitted episodes
        self.recovery = Recovery(partial, dropped_meta, invalid, repaired, lost, missing_meta,
                                 missing_keys)
        if self.recovery.damaged:
            log.warning(
                "Store %s is damaged: %s %s", self.path,
                _describe_damage(lost, missing_meta, valid, missing_keys),
                "Repaired: the damaged episodes were dropped." if repaired else
                f"They are hidden; run `tether data repair {self.path}`.",
            )
        elif not self.recovery.clean:
            log.warning(
                "Store %s: found an uncommitted tail of %d steps (%d metadata entries, %d invalid "
                "commit entries) from an interrupted writer; %s. %d committed episodes are intact.",
                self.path, partial, dropped_meta, invalid,
                "it was truncated" if repaired else "it is hidden (opened read-only)",
                valid,
            )

    # ------------------------------------------------------------------ internals: writing
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise StoreError(
                f"{self.path} is open read-only; open it with EpisodeStore.open(path, mode='a') "
                "to write."
            )
        if self._lock is None or not self._lock.held:
            raise StoreError(f"{self.path} was closed; open it again to write.")

    def _check_episode(self, episode: int) -> None:
        if not 0 <= episode < self.n_episodes:
            raise StoreError(
                f"Episode {episode} does not exist; {self.path} has {self.n_episodes} episodes "
                f"(0..{self.n_episodes - 1})."
            )

    def _truncate_tail(self) -> None:
        committed = self.n_steps
        for arr in self._arrays.values():
            if arr.shape[0] != committed:
                arr.resize((committed, *arr.shape[1:]))

    def _drop_uncommitted_schema(self) -> None:
        """With no committed episode, the arrays are only a killed first episode's tail.

        Its writer may have died while creating them one by one, so the set of keys is not a
        schema anyone committed to: remove them, and the next episode creates its own.
        """
        for key in list(self._arrays):
            shutil.rmtree(self.path / "data" / key)
            del self._arrays[key]

    def _shrink_ends(self, n: int) -> None:
        """Cut `episode_ends` to `n` entries, zeroing the cut slots first.

        zarr keeps a shrunk array's last chunk as it was, so without zeroing, a later commit
        that grows the array again would briefly expose an old end value there; a crash at that
        moment would look like a valid commit. Zero is never a valid end.
        """
        arr = self._ends_array
        if arr.shape[0] > n:
            arr[n:] = 0
            arr.resize((n,))

    def _restore_committed(self) -> None:
        """After a failed commit: bring the disk back to the last commit, as far as it lets us.

        Whatever cannot be undone (a full disk refuses even metadata rewrites) is an uncommitted
        tail that the next append open truncates.
        """
        n = self.n_episodes
        steps = [
            self._drop_uncommitted_schema if n == 0 else self._truncate_tail,
            lambda: self._shrink_ends(n),
            lambda: _manifest.remove_from(self.path, n),
        ]
        if len(self._meta.attrs.get("episodes", [])) != n:
            steps.append(lambda: self._meta.attrs.__setitem__("episodes", self._episodes_meta))
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - best effort, reported, recovery covers it
                log.warning("Store %s: could not undo part of a failed commit (%s); the next "
                            "append open will truncate it.", self.path, exc)

    def _prepare_block(self, block: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Validate a block of steps against the schema; returns normalized arrays and length."""
        if not block:
            raise StoreError("An episode block must contain at least one key.")
        out: dict[str, np.ndarray] = {}
        length = None
        for key, value in block.items():
            if "/" in key or not key:
                raise StoreError(f"Invalid key '{key}': keys may not be empty or contain '/'.")
            arr = _normalize(key, np.asarray(value))
            if length is None:
                length = arr.shape[0]
            elif arr.shape[0] != length:
                raise StoreError(
                    f"Key '{key}' has {arr.shape[0]} steps but other keys have {length}; every "
                    "key of an episode block needs the same number of steps."
                )
            out[key] = arr
        if self._arrays:
            missing = sorted(set(self._arrays) - set(out))
            extra = sorted(set(out) - set(self._arrays))
            if missing or extra:
                raise StoreError(
                    f"Episode keys do not match the store {self.path}: missing {missing}, "
                    f"unexpected {extra}. Every episode must record the same streams."
                )
            for key, arr in out.items():
                existing = self._arrays[key]
                if tuple(existing.shape[1:]) != arr.shape[1:]:
                    raise StoreError(
                        f"Key '{key}': step shape {arr.shape[1:]} does not match the store's "
                        f"{tuple(existing.shape[1:])}."
                    )
                if np.dtype(existing.dtype) != arr.dtype:
                    raise StoreError(
                        f"Key '{key}': dtype {arr.dtype} does not match the store's {existing.dtype}."
                    )
        return out, int(length or 0)

    def _ensure_arrays(self, block: Mapping[str, np.ndarray]) -> None:
        if self._arrays:
            return
        data = self._root["data"]
        fmt = self.zarr_format
        codec = self._root_attrs.get("image_codec", "jpeg")
        quality = int(self._root_attrs.get("image_quality", DEFAULT_JPEG_QUALITY))
        for key, arr in block.items():
            if is_image_key(key):
                enc = image_encoding(codec, quality, fmt)
                chunks = (1, *arr.shape[1:])
            else:
                enc = lowdim_encoding(fmt)
                chunks = (LOWDIM_CHUNK, *arr.shape[1:])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                created = data.create_array(
                    key, shape=(0, *arr.shape[1:]), chunks=chunks, dtype=arr.dtype, fill_value=0,
                    **enc.kwargs,
                )
            self._arrays[key] = created

    def _append_block(self, block: Mapping[str, np.ndarray], n: int) -> None:
        self._ensure_arrays(block)
        for key, arr in block.items():
            target = self._arrays[key]
            start = target.shape[0]
            target.resize((start + n, *target.shape[1:]))
            step = _WRITE_BLOCK if is_image_key(key) else n  # bounded in-flight chunk writes
            for i in range(0, n, step):
                target[start + i : start + min(i + step, n)] = arr[i : i + step]

    def _commit(self, n_steps: int, metadata: Mapping[str, Any]) -> int:
        """Make the tail an episode. Raises OSError untouched (the caller undoes and reports)."""
        start = self.n_steps
        end = start + n_steps
        for key, arr in self._arrays.items():
            if arr.shape[0] != end:
                raise StoreError(
                    f"Internal error: key '{key}' has {arr.shape[0]} steps, expected {end}; the "
                    "episode was not committed."
                )
        episode = self.n_episodes
        entry = {"index": episode, "length": n_steps, **_jsonable(dict(metadata))}
        episodes = [*self._episodes_meta, entry]
        # 1. the chunk manifest, then everything of the episode reaches the disk before 3.
        manifest = _manifest.build(self.path / "data", self._arrays, start, end)
        write_durable(_manifest.manifest_file(self.path, episode), _manifest.encode(manifest))
        sync_filesystem(self.path)
        self._meta.attrs["episodes"] = episodes  # 2. metadata
        new_ends = np.concatenate([self._ends, [end]]).astype(np.int64)
        self._ends_array.resize((len(new_ends),))  # 3. the commit point
        self._ends_array[len(new_ends) - 1 :] = new_ends[-1:]
        self._ends = new_ends
        self._episodes_meta = episodes
        self._manifests[episode] = manifest
        try:
            self._fsync_commit_point()
        except OSError as exc:
            raise StoreError(
                f"Episode {episode} was committed to {self.path}, but flushing it to disk failed "
                f"({exc.strerror}); it may be lost if the machine loses power now. Check the disk."
            ) from exc
        return episode

    def _fsync_commit_point(self) -> None:
        folder = self.path / "meta" / "episode_ends"
        last = _manifest.chunk_path(self.path / "meta", "episode_ends", self._ends_array,
                                    (len(self._ends) - 1) // int(self._ends_array.chunks[0]))
        for path in (last, _meta_file(folder)):
            fsync_file(path)
        for path in {last.parent, folder, self.path / "meta"}:
            fsync_dir(path)

    # ------------------------------------------------------------------ internals: copying
    def _copy_episode(self, source: EpisodeStore, episode: int) -> int:
        start, stop = source.episode_range(episode)
        n = stop - start
        metadata = source.episode_metadata(episode)
        metadata.pop("index", None)
        metadata.pop("length", None)
        lowdim = {k: np.asarray(source.array(k)[start:stop]) for k in source.keys if not is_image_key(k)}
        if not self._arrays:  # adopt the source schema so frames can be copied as bytes
            self._ensure_arrays({
                k: np.zeros((0, *source.array(k).shape[1:]), dtype=source.array(k).dtype)
                for k in source.keys
            })
        raw_keys = [
            k for k in source.image_keys
            if k in self._arrays and _same_jpeg(source.array(k), self._arrays[k])
        ]
        writer = self.begin_episode()
        try:
            # Images that can be copied as bytes are handled outside the checked block path.
            block = dict(lowdim)
            for key in source.image_keys:
                if key not in raw_keys:
                    block[key] = np.asarray(source.array(key)[start:stop])
            prepared, _ = self._prepare_block_partial(block, raw_keys, source, n)
            self._ensure_arrays(prepared)
            for key in raw_keys:
                dst = self._arrays[key]
                base = dst.shape[0]
                dst.resize((base + n, *dst.shape[1:]))
                _copy_chunks(source, key, start, self, key, base, n)
            self._append_block(prepared, n)
            writer._steps = n
            return writer.commit(metadata)
        except OSError as exc:
            if writer.active:
                writer.discard()
            raise _os_error(exc, f"copying episode {episode} from {source.path}") from exc
        except BaseException:
            if writer.active:
                writer.discard()
            raise

    def _prepare_block_partial(self, block, raw_keys, source, n):
        """Validate `block`; the raw-copied keys were already checked by `_same_jpeg`."""
        full_keys = set(block) | set(raw_keys)
        if full_keys != set(self._arrays):
            raise StoreError(
                f"Cannot copy from {source.path}: keys {sorted(full_keys)} differ from "
                f"{self.keys}."
            )
        saved = self._arrays
        self._arrays = {k: v for k, v in saved.items() if k in block}
        try:
            return self._prepare_block(block)
        finally:
            self._arrays = saved

    def _rewrite(self, keep: list[int]) -> None:
        """Copy `keep` into `<store>.new`, then swap directories, all under this store's lock.

        The lock is never released in between, so no other process can open, remove or
        recreate the store or its `.new` while the rewrite runs.
        """
        new_path = self.path.with_name(self.path.name + ".new")
        old_path = self.path.with_name(self.path.name + ".old")
        try:
            for leftover in (new_path, old_path):  # only a crashed writer of ours leaves these
                if leftover.exists():
                    shutil.rmtree(leftover)
            attrs = {k: v for k, v in self._root_attrs.items() if k not in _CREATE_ATTRS}
            fresh = EpisodeStore.create(
                new_path, self.fps, zarr_format=self.zarr_format,
                image_codec=self._root_attrs.get("image_codec", "jpeg"),
                image_quality=int(self._root_attrs.get("image_quality", DEFAULT_JPEG_QUALITY)),
                robot_config=self._root_attrs.get("robot_config"),
                calibration=self._root_attrs.get("calibration"), attrs=attrs, _lock=self._lock,
            )
            try:
                fresh.append_from(self, keep)
            finally:
                fresh.close()
            for extra in _EXTRA_FILES:  # files beside the zarr data (robot_config.yaml)
                if (self.path / extra).is_file():
                    shutil.copy2(self.path / extra, new_path / extra)
            sync_filesystem(new_path)
            if self._writer is not None and self._writer.active:
                self._writer.discard()
            os.rename(self.path, old_path)
            os.rename(new_path, self.path)
            fsync_dir(self.path.parent)
            shutil.rmtree(old_path)
        except OSError as exc:
            raise _os_error(exc, f"compacting {self.path}") from exc
        self._writer = None
        self._manifests = {}
        self._load()


_EXTRA_FILES = ("robot_config.yaml",)
_CREATE_ATTRS = {
    "tether_format", "format_version", "fps", "image_codec", "image_quality", "robot_config",
    "calibration", "created",
}


class EpisodeWriter:
    """Buffers one episode's steps and appends them to the store's uncommitted tail.

    `append` takes one step (`key -> array`), `extend` a block of steps; every `flush_every`
    steps the buffer is written, so memory stays bounded for long episodes. Nothing is visible
    to readers until `commit()`.
    """

    def __init__(self, store: EpisodeStore, flush_every: int = 32) -> None:
        self.store = store
        self.flush_every = max(1, int(flush_every))
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self._steps = 0  # steps already written to the tail
        self.active = True

    @property
    def n_steps(self) -> int:
        return self._steps + self._buffered

    def append(self, step: Mapping[str, np.ndarray]) -> None:
        self._require_active()
        if self._buffer and set(step) != set(self._buffer):
            raise StoreError(
                f"Step keys {sorted(step)} differ from this episode's keys {sorted(self._buffer)}."
            )
        for key, value in step.items():
            self._buffer.setdefault(key, []).append(np.asarray(value))
        self._buffered += 1
        if self._buffered >= self.flush_every:
            self.flush()

    def extend(self, block: Mapping[str, np.ndarray]) -> None:
        self._require_active()
        self.flush()
        self._write(block)

    def flush(self) -> None:
        self._require_active()
        if not self._buffered:
            return
        try:
            block = {key: np.stack(values) for key, values in self._buffer.items()}
        except ValueError as exc:
            self._buffer, self._buffered = {}, 0
            raise StoreError(f"Steps of this episode have inconsistent shapes: {exc}") from exc
        self._buffer, self._buffered = {}, 0
        self._write(block)

    def commit(self, metadata: Mapping[str, Any] | None = None) -> int:
        """Write what is buffered, then the metadata, then the commit point. Returns the index."""
        self.flush()
        if self._steps == 0:
            raise StoreError("Cannot commit an empty episode; record at least one step or discard().")
        committed_before = self.store.n_episodes
        try:
            episode = self.store._commit(self._steps, metadata or {})
        except OSError as exc:
            self._abort()
            raise _os_error(exc, "committing the episode") from exc
        except BaseException:
            if self.store.n_episodes == committed_before:  # failed before the commit point
                self._abort()
            else:
                self.active = False
            raise
        self.active = False
        return episode

    def discard(self) -> None:
        """Drop everything written for this episode; committed episodes are untouched.

        Never raises for I/O: on a full disk even the truncation can fail, and then the tail
        stays on disk, invisible to readers, until the next append open truncates it.
        """
        if not self.active:
            return
        self._buffer, self._buffered = {}, 0
        self.active = False
        self.store._restore_committed()

    def _write(self, block: Mapping[str, np.ndarray]) -> None:
        prepared, n = self.store._prepare_block(block)
        if n == 0:
            return
        try:
            self.store._append_block(prepared, n)
        except OSError as exc:
            self._abort()
            raise _os_error(exc, "writing episode data") from exc
        self._steps += n

    def _abort(self) -> None:
        self.active = False
        self._buffer, self._buffered = {}, 0
        self.store._restore_committed()

    def _require_active(self) -> None:
        if not self.active:
            raise StoreError("This episode was already committed or discarded; begin a new one.")


# ---------------------------------------------------------------------- helpers
def _finish_interrupted_swap(path: Path, cleanup: bool) -> None:
    """Complete or roll back a `delete_episodes` rewrite that a crash interrupted.

    The rewrite builds `<store>.new`, renames `<store>` to `<store>.old`, renames `.new` into
    place and removes `.old`. If the store itself is missing, one of the renames was cut short.
    """
    new = path.with_name(path.name + ".new")
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        if new.exists():
            os.rename(new, path)  # the new store was complete (and synced) before the first rename
            log.warning("Store %s: finished an interrupted compaction.", path)
        else:
            os.rename(old, path)
            log.warning("Store %s: rolled back an interrupted compaction.", path)
        fsync_dir(path.parent)
    if cleanup and path.exists():
        for leftover in (new, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _looks_like_store(path: Path) -> bool:
    return (path / "zarr.json").is_file() or (path / ".zgroup").is_file()


_METADATA_NAMES = ("zarr.json", ".zgroup", ".zattrs", ".zarray")


def _meta_file(folder: Path, attrs: bool = False) -> Path:
    """The zarr metadata file of a group/array folder (format 3, else format 2)."""
    if (folder / "zarr.json").exists():
        return folder / "zarr.json"
    if attrs:
        return folder / ".zattrs"
    return folder / (".zarray" if (folder / ".zarray").exists() else ".zgroup")


def _check_metadata_files(path: Path) -> None:
    """Parse every zarr metadata file the store reads, so a damaged one is named, not a traceback."""
    folders = [path, path / "meta", path / "meta" / "episode_ends", path / "data"]
    with contextlib.suppress(OSError):
        folders += sorted(p for p in (path / "data").iterdir() if p.is_dir())
    for folder in folders:
        for name in _METADATA_NAMES:
            file = folder / name
            try:
                raw = file.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"Cannot read {file}: {exc.strerror}. Check the store's permissions.") from exc
            try:
                value = json.loads(raw)
                problem = None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"
            except (ValueError, UnicodeDecodeError) as exc:
                problem = f"not valid JSON: {exc}"
            if problem:
                raise StoreError(
                    f"{file} is damaged ({problem}). It holds the zarr metadata of "
                    f"'{folder.relative_to(path).as_posix() if folder != path else '/'}'. Restore "
                    "it from a backup of the store; the store cannot be read without it."
                )


def _damaged(store: Path, folder: Path, exc: BaseException) -> StoreError:
    """zarr refused a metadata file that is valid JSON (wrong fields, types, codecs)."""
    return StoreError(
        f"{_meta_file(folder)} is damaged or unsupported ({type(exc).__name__}: {exc}). Restore it "
        f"from a backup of {store}; if it names an unknown codec, install the package that "
        "provides it."
    )


def _describe_damage(lost: int, missing_meta: int, valid: int, missing_keys: tuple[str, ...] = ()) -> str:
    parts = [f"the arrays {', '.join('data/' + k for k in missing_keys)} are gone"] if missing_keys else []
    if lost:
        parts.append(f"{lost} committed episode(s) after episode {valid - 1} have missing data "
                     "(meta/episode_ends, the data arrays and the manifests disagree)")
    if missing_meta:
        parts.append(f"{missing_meta} committed episode(s) have no metadata entry")
    return "; ".join(parts) + "."


def _normalize(key: str, arr: np.ndarray) -> np.ndarray:
    """Apply the on-disk dtype rules, refusing anything that would lose meaning."""
    if arr.ndim == 0:
        raise StoreError(f"Key '{key}' must be an array with a leading time axis, got a scalar.")
    if _is_time_key(key):
        if arr.dtype.kind not in "fiu":
            raise StoreError(f"Time key '{key}' must be numeric seconds, got dtype {arr.dtype}.")
        return arr.astype(np.float64, copy=False)
    if key.endswith("_index"):
        if arr.dtype.kind not in "iu":
            raise StoreError(f"Index key '{key}' must hold integers, got dtype {arr.dtype}.")
        return arr.astype(np.int64, copy=False)
    if is_image_key(key):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise StoreError(
                f"Image key '{key}' must be uint8 (T, H, W, 3) RGB, got {arr.dtype} {arr.shape}."
            )
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise StoreError(f"Key '{key}' contains NaN or inf; refusing to record it.")
        return arr.astype(np.float32, copy=False)
    if arr.dtype.kind in "biu":
        return arr
    raise StoreError(f"Key '{key}' has unsupported dtype {arr.dtype}; use numbers or uint8 images.")


def _same_jpeg(a, b) -> bool:
    if not (is_jpeg_array(a) and is_jpeg_array(b)):
        return False
    return _jpeg_level(a) == _jpeg_level(b) and tuple(a.shape[1:]) == tuple(b.shape[1:])


def _jpeg_level(array) -> int | None:
    meta = array.metadata
    if meta.zarr_format == 2:
        return meta.compressor.get_config().get("level")
    for codec in meta.codecs:
        config = getattr(codec, "codec_config", None)
        if config is not None:
            return config.get("level")
    return None


def chunk_file(store: EpisodeStore, key: str, step: int) -> Path:
    """Path of the file holding frame `step` of image key `key` (one frame per chunk)."""
    arr = store.array(key)
    coords = (step,) + (0,) * (len(arr.shape) - 1)
    return store.path / "data" / key / arr.metadata.encode_chunk_key(coords)


def _copy_chunks(src: EpisodeStore, src_key: str, src_start: int, dst: EpisodeStore, dst_key: str,
                 dst_start: int, n: int) -> None:
    for i in range(n):
        source = chunk_file(src, src_key, src_start + i)
        target = chunk_file(dst, dst_key, dst_start + i)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            payload = source.read_bytes()
        except FileNotFoundError:  # an all-zero frame is not stored (fill value), or lost
            error = src.missing_frame_error(src_key, src_start + i)
            if error is not None:
                raise error from None
            target.unlink(missing_ok=True)
            continue
        episode, frame = src.locate(src_start + i)
        man = src.manifest(episode)
        if man is not None and src_key in man["keys"]:
            crcs = man["keys"][src_key].get("frames_crc32", [])
            if frame < len(crcs) and crcs[frame] is not None and crcs[frame] != zlib.crc32(payload):
                raise src.decode_error(src_key, src_start + i, ValueError(
                    "checksum differs from the one written at commit"))
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, target)


def _os_error(exc: OSError, action: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StoreError(
            f"Disk full while {action} ({exc.strerror}). The episode being written was dropped; "
            "committed episodes are intact. Free space or record to another disk."
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return StoreError(f"Cannot finish {action}: {exc.filename} is a file where a folder is "
                          "needed. Pick another path for the store.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"Permission denied while {action}: {exc}. Check the store's location.")
    return StoreError(f"I/O error while {action}: {exc}")


def _jsonable(value: Any) -> Any:
    """Plain JSON types only (numpy scalars/arrays, tuples, Paths, dataclasses converted)."""
    from tether.core.config import to_dict

    return json.loads(json.dumps(to_dict(value), default=str))
