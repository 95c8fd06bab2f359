"""Where every array of an episode store lives on disk, and the rules its values follow.

Format version 2 (this tether writes it; `tether data migrate` upgrades version 1):

    <store>/zarr.json (or .zgroup)     root attributes: tether_format, format_version, fps, ...
    <store>/data/<key>                 data arrays, concatenated over time, named by
                                       tether.core.schema (`state`, `action`, `image.<cam>`, ...)
                                       plus `timestamp` (float64 tick time), as diffusion_policy's
                                       ReplayBuffer lays them out
    <store>/timing/<stream>/<field>    per-stream timing (`FIELDS`): `t_host` capture time on
                                       the host clock, `t_device` the device's own stamp, `t_recv`
                                       when the recorder received it (float64 s), `index` the
                                       device's frame counter (int64); `<stream>` is an array
                                       name (`image.top`, `state.left`)
    <store>/meta/episode_ends          int64 cumulative ends: the single commit point
    <store>/episodes/<NNNNNN>.json     one metadata object per committed episode (data/episodes)
    <store>/manifest/<NNNNNN>.json     one chunk manifest per committed episode (data/manifest)
    <store>/last_commit.json           a checked cache for append opens: the folders' stamps
                                       and the next seed at the last commit (data/last_commit)

Timing arrays are told apart from data arrays by the group they live in, never by a suffix, so a
camera named `wrist_t` is an image like any other. In the flat `key -> array` dicts the store
reads and writes, a timing array's key is its path, `timing/<stream>/<field>` (`timing_key`):
data keys never contain `/`, so the two cannot collide.

Version 1 kept timing in `data/` as `<stream>_t`, `<stream>_t_host` and `<key>_index` and the
episode metadata as one list attribute of `meta`; `legacy_v1_key` is the only place that still
reads those suffixes, for migration.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from tether.core.errors import StoreError
from tether.core.schema import TIMING_FIELDS, is_image_key

#: Timing fields a store keeps per stream: the schema's record plus the recorder's receive time.
FIELDS = (*TIMING_FIELDS, "t_recv")

FORMAT_NAME = "tether-episodes"
FORMAT_VERSION = 2
DATA = "data"
TIMING = "timing"
META = "meta"
EPISODE_ENDS = "meta/episode_ends"
TIMESTAMP = "timestamp"  # the tick time of every step, float64 seconds (diffusion_policy's name)
LOWDIM_CHUNK = 1024  # rows per chunk of low-dim arrays
METADATA_NAMES = ("zarr.json", ".zgroup", ".zattrs", ".zarray")

__all__ = [
    "DATA", "EPISODE_ENDS", "FORMAT_NAME", "FORMAT_VERSION", "META", "TIMESTAMP", "TIMING",
    "array_dir", "array_path", "is_image_key", "is_timing_key", "legacy_v1_key", "normalize",
    "parse_timing_key", "timing_key",
]


def timing_key(stream: str, field: str) -> str:
    """`timing/<stream>/<field>`: the key of one stream's timing array in step dicts."""
    if field not in FIELDS:
        raise StoreError(f"Timing field '{field}' is not one of {', '.join(FIELDS)}.")
    check_data_key(stream)
    return f"{TIMING}/{stream}/{field}"


def is_timing_key(key: str) -> bool:
    return key.startswith(TIMING + "/")


def parse_timing_key(key: str) -> tuple[str, str]:
    """(stream, field) of a `timing/<stream>/<field>` key, StoreError for anything else."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != TIMING or parts[2] not in FIELDS or not parts[1]:
        raise StoreError(
            f"Invalid timing key '{key}': expected 'timing/<stream>/<field>' with field one of "
            f"{', '.join(FIELDS)} (build it with tether.data.layout.timing_key)."
        )
    check_data_key(parts[1])
    return parts[1], parts[2]


def check_data_key(key: str) -> str:
    """A data key must be one path component zarr can store (no `/`, not hidden)."""
    if not key or "/" in key or "\\" in key or key.startswith(".") or key in (TIMING, META):
        raise StoreError(
            f"Invalid key '{key}': data keys are non-empty, contain no '/' and do not start with "
            "'.'; timing arrays are keyed 'timing/<stream>/<field>'."
        )
    return key


def check_key(key: str) -> str:
    """Any store key: a data key or a timing key (StoreError naming the accepted forms)."""
    if is_timing_key(key):
        parse_timing_key(key)
    else:
        check_data_key(key)
    return key


def array_path(key: str) -> str:
    """The array's folder relative to the store root: `data/<key>` or the timing key itself."""
    return key if is_timing_key(key) else f"{DATA}/{key}"


def array_dir(store_path: Path, key: str) -> Path:
    from tether.data.location import as_location

    return as_location(store_path) / array_path(key)


def is_framewise(key: str) -> bool:
    """Arrays stored one step per chunk (camera frames)."""
    return not is_timing_key(key) and is_image_key(key)


def normalize(key: str, arr: np.ndarray) -> np.ndarray:
    """Apply the on-disk dtype rules for `key`'s place in the layout, refusing lossy input."""
    if arr.ndim == 0:
        raise StoreError(f"Key '{key}' must be an array with a leading time axis, got a scalar.")
    if is_timing_key(key):
        _, field = parse_timing_key(key)
        if arr.ndim != 1:
            raise StoreError(f"Timing key '{key}' must hold one value per step, got shape {arr.shape}.")
        if field == "index":
            if arr.dtype.kind not in "iu":
                raise StoreError(f"Index key '{key}' must hold integers, got dtype {arr.dtype}.")
            return arr.astype(np.int64, copy=False)
        if arr.dtype.kind not in "fiu":
            raise StoreError(f"Time key '{key}' must be numeric seconds, got dtype {arr.dtype}.")
        return arr.astype(np.float64, copy=False)
    if key == TIMESTAMP:
        if arr.dtype.kind not in "fiu":
            raise StoreError(f"Time key '{key}' must be numeric seconds, got dtype {arr.dtype}.")
        return arr.astype(np.float64, copy=False)
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


def legacy_v1_key(name: str) -> str:
    """The version-2 key of a version-1 `data/<name>` array (migration only).

    Version 1 classified arrays by suffix: `<stream>_t` capture time (what sync compared, so
    `t_host` here), `<stream>_t_host` when the recorder received it (`t_recv`), `<key>_index`
    frame counters; this mirrors that rule exactly, so migration reads a version-1 store the way
    it was written.
    """
    if name == TIMESTAMP:
        return name
    for suffix, field in (("_t_host", "t_recv"), ("_t", "t_host"), ("_index", "index")):
        if name.endswith(suffix) and len(name) > len(suffix):
            return timing_key(name[: -len(suffix)], field)
    return name


# ---------------------------------------------------------------------- zarr metadata files
def looks_like_store(path: Path) -> bool:
    return (path / "zarr.json").is_file() or (path / ".zgroup").is_file()


def meta_file(folder: Path, attrs: bool = False) -> Path:
    """The zarr metadata file of a group/array folder (format 3, else format 2)."""
    if (folder / "zarr.json").exists():
        return folder / "zarr.json"
    if attrs:
        return folder / ".zattrs"
    return folder / (".zarray" if (folder / ".zarray").exists() else ".zgroup")


def metadata_folders(path: Path) -> list[Path]:
    """Every group/array folder the store reads on open."""
    folders = [path, path / META, path / EPISODE_ENDS, path / DATA, path / TIMING]
    with contextlib.suppress(OSError):
        folders += sorted(p for p in (path / DATA).iterdir() if p.is_dir())
    with contextlib.suppress(OSError):
        for stream in sorted(p for p in (path / TIMING).iterdir() if p.is_dir()):
            folders.append(stream)
            folders += sorted(p for p in stream.iterdir() if p.is_dir())
    return folders


def check_metadata_files(path: Path) -> None:
    """Parse every zarr metadata file the store reads, so a damaged one is named, not a traceback."""
    for folder in metadata_folders(path):
        for name in METADATA_NAMES:
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


def damaged(store: Path, folder: Path, exc: BaseException) -> StoreError:
    """zarr refused a metadata file that is valid JSON (wrong fields, types, codecs)."""
    return StoreError(
        f"{meta_file(folder)} is damaged or unsupported ({type(exc).__name__}: {exc}). Restore it "
        f"from a backup of {store}; if it names an unknown codec, install the package that "
        "provides it."
    )


def list_arrays(root) -> dict:
    """`key -> zarr array` of every data and timing array under an open root group."""
    arrays = {name: arr for name, arr in root[DATA].arrays()}
    if TIMING in root:
        timing = root[TIMING]
        for stream, group in timing.groups():
            for field, arr in group.arrays():
                arrays[f"{TIMING}/{stream}/{field}"] = arr
    return arrays
