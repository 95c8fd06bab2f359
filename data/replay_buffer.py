"""diffusion_policy / UMI ReplayBuffer Zarr files, both ways (data layer; `tether export|import
--format diffusion_policy`).

The ReplayBuffer layout (diffusion_policy/common/replay_buffer.py) is a zarr FORMAT 2 group with
`data/<key>` arrays concatenated over time (every one exactly `episode_ends[-1]` long) and
`meta/episode_ends` (int64, one entry per episode, uncompressed). ReplayBuffer chunks in time
only, so every array here is chunked `(c, *frame_shape)` with `c` frames of about 2 MB (what its
`get_optimal_chunks` picks) and `meta/episode_ends` is one chunk.

Export (tether store -> ReplayBuffer) maps names to the conventional ones:

    image.<cam>               -> data/camera_<cam>        uint8 (T, H, W, 3)
    state                     -> data/robot_joint         (joint positions, as recorded)
    state.<arm>               -> data/robot_joint_<arm>
    action                    -> data/action
    timing/<stream>/<field>   -> data/timing_<stream>_<field>
    any other data key        -> data/<key>

Images are the frames tether decodes, compressed losslessly with Blosc(zstd, level 5,
bit-shuffle) -- ReplayBuffer's own 'disk' compressor, which a plain zarr 2.x + numcodecs decodes
with nothing registered -- or, with `image_codec="jpeg"`, as `imagecodecs_jpeg` (smaller, lossy,
needs `imagecodecs.numcodecs.register_codecs()` in the reader). Low-dim arrays keep their dtype
and use Blosc(lz4, level 5), ReplayBuffer's 'default'. fps, episode metadata (task, success,
operator, seed, ...), robot config, calibration and the name mapping go into the root group's
attributes under "tether": `tether import` reads them back, diffusion_policy ignores them
(`copy_from_path` copies only data/ and meta/), and the report says so.

Import (ReplayBuffer -> new tether store) reads a directory or a UMI-style `.zarr.zip` (ZipStore)
with any numcodecs/imagecodecs compressor (JPEG-XL, JPEG 2000, ... registered from
`imagecodecs.numcodecs`, which uses the same codec ids as UMI's imagecodecs_numcodecs.py). A file
we exported is inverted exactly through the recorded mapping; any other file maps 4-D uint8
3-channel arrays to `image.<name>` and keeps every other name (`rename` overrides).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import ConfigError, StoreError
from tether.core.schema import ACTION, STATE, image_key, is_image_key, parse_key
from tether.data.exchange import ExportReport, ImportReport, check_options
from tether.data.layout import is_timing_key, parse_timing_key

FORMAT = "diffusion_policy"
ATTRS_KEY = "tether"  # root attribute holding what ReplayBuffer has no place for
TARGET_CHUNK_BYTES = 2_000_000  # ReplayBuffer.get_optimal_chunks' default target
IMAGE_CODECS = ("blosc", "jpeg")
EXPORT_OPTIONS = ("image_codec", "image_quality", "overwrite")
IMPORT_OPTIONS = ("fps", "overwrite", "image_codec", "image_quality", "rename")


# ---------------------------------------------------------------------- names
def export_name(key: str) -> str:
    """The ReplayBuffer name of a tether array key (see the module docstring)."""
    if is_timing_key(key):
        stream, field = parse_timing_key(key)
        return f"timing_{stream}_{field}"
    if is_image_key(key):
        return f"camera_{parse_key(key).device}"
    if key == STATE:
        return "robot_joint"
    if key.startswith(STATE + "."):
        return f"robot_joint_{parse_key(key).device}"
    if key == ACTION:
        return "action"
    return key


def chunk_length(frame_shape: tuple[int, ...], dtype: np.dtype, n_steps: int) -> int:
    """Frames per chunk: ~2 MB per chunk, time axis only (as ReplayBuffer's get_optimal_chunks)."""
    frame_bytes = max(1, int(np.prod(frame_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, min(max(n_steps, 1), math.ceil(TARGET_CHUNK_BYTES / frame_bytes)))


def _compressor(is_image: bool, image_codec: str, image_quality: int):
    import numcodecs

    if is_image and image_codec == "jpeg":
        from imagecodecs.numcodecs import Jpeg

        return Jpeg(level=int(image_quality))
    if is_image:  # ReplayBuffer.resolve_compressor('disk')
        return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)  # 'default'


# ---------------------------------------------------------------------- export
def export_store(store_path: Path, out: Path, **options: Any) -> ExportReport:
    """Write the tether store at `store_path` as a ReplayBuffer zarr (format 2) at `out`.

    `out` ending in `.zip` is written as a ZipStore (UMI's `.zarr.zip`), anything else as a
    directory. Options: image_codec ("blosc" lossless, default; "jpeg"), image_quality (JPEG,
    default 95), overwrite (replace an existing `out`).
    """
    from tether.data.store import EpisodeStore

    check_options(FORMAT, "export", options, EXPORT_OPTIONS)
    image_codec = str(options.get("image_codec", "blosc"))
    image_quality = int(options.get("image_quality", 95))
    if image_codec not in IMAGE_CODECS:
        raise ConfigError(
            f"image_codec '{image_codec}' is not one of {', '.join(IMAGE_CODECS)} "
            "(blosc: lossless, any zarr 2 reader; jpeg: smaller, needs imagecodecs)."
        )
    store_path, out = Path(store_path), Path(out)
    _check_out(out, bool(options.get("overwrite", False)))
    with EpisodeStore.open(store_path, "r") as store:
        if store.n_episodes == 0:
            raise StoreError(
                f"{store_path} has no episodes; a ReplayBuffer needs at least one (record some first)."
            )
        keys = store.data_keys + store.timing_keys
        names = {key: export_name(key) for key in keys}
        _check_unique(names)
        n_steps = int(store.n_steps)
        report = ExportReport(FORMAT, store_path, out, store.n_episodes, n_steps, store.fps)
        # Built as a folder beside `out`, then renamed (or zipped) into place: a crash never
        # leaves a half-written `out`, and a .zip gets each file once (zarr's ZipStore appends
        # a new entry whenever metadata is rewritten).
        tmp = out.with_name(f".partial-{out.name}.zarr")
        tmp_zip = out.with_name(f".partial-{out.name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        try:
            with _open_root(tmp, "w") as root:
                data = root.create_group("data")
                for key, name in names.items():
                    _export_array(store, key, data, name, n_steps, image_codec, image_quality)
                    report.keys[f"data/{name}"] = key
                root.create_array(
                    "meta/episode_ends", data=np.asarray(store.episode_ends, np.int64),
                    chunks=(max(1, store.n_episodes),), compressors=None,
                )
                report.keys["meta/episode_ends"] = "episode boundaries"
                root.attrs[ATTRS_KEY] = _jsonable(_tether_attrs(store, names))
            if _is_zip(out):
                _zip_folder(tmp, tmp_zip)
                _remove(tmp)
                tmp = tmp_zip
            _remove(out)
            os.replace(tmp, out)
        except BaseException:
            _remove(tmp)
            _remove(tmp_zip)
            raise
    image_note = (
        "images: Blosc(zstd, 5, bit-shuffle), lossless: plain zarr 2.x + numcodecs decodes them"
        if image_codec == "blosc"
        else f"images: imagecodecs_jpeg quality {image_quality} (lossy; the reader needs "
        "imagecodecs.numcodecs.register_codecs())"
    )
    report.notes += [
        "zarr format 2, ReplayBuffer layout (data/<key>, meta/episode_ends int64); chunks in "
        "time only, ~2 MB each",
        image_note,
        "low-dim arrays: Blosc(lz4, 5), dtypes as stored",
    ]
    report.not_carried += [
        "fps, episode metadata (task, success, operator, ...), robot config and calibration: "
        f"kept in the root attribute '{ATTRS_KEY}' for `tether import`; diffusion_policy's "
        "ReplayBuffer does not read it (pass fps to its dataset config yourself)",
        "per-chunk manifests (checksums) and the writer's lock: store-only",
    ]
    return report


def _export_array(store, key: str, data, name: str, n_steps: int, image_codec: str,
                  image_quality: int) -> None:
    src = store.array(key)
    frame_shape = tuple(src.shape[1:])
    is_image = is_image_key(key)
    chunk = 1 if is_image and image_codec == "jpeg" else chunk_length(frame_shape, src.dtype, n_steps)
    arr = data.create_array(
        name, shape=(n_steps, *frame_shape), dtype=src.dtype, chunks=(chunk, *frame_shape),
        compressors=_compressor(is_image, image_codec, image_quality), fill_value=0,
    )
    block = chunk * max(1, 64 // chunk)  # whole chunks per write: no read-modify-write
    for start in range(0, n_steps, block):
        stop = min(n_steps, start + block)
        arr[start:stop] = store.read_steps(start, stop, [key])[key]


def _tether_attrs(store, names: Mapping[str, str]) -> dict[str, Any]:
    attrs = store.attrs
    return {
        "fps": store.fps,
        "keys": {name: key for key, name in names.items()},
        "episodes": [store.episode_metadata(i) for i in range(store.n_episodes)],
        "robot_config": attrs.get("robot_config") or {},
        "calibration": attrs.get("calibration"),
        "store_attrs": {
            k: v for k, v in attrs.items()
            if k not in ("tether_format", "format_version", "fps", "robot_config", "calibration",
                         "image_codec", "image_quality", "created")
        },
        "meta_attrs": store.meta_attrs,
    }


# ---------------------------------------------------------------------- import
def import_dataset(src: Path, out: Path, **options: Any) -> ImportReport:
    """Create a tether store at `out` from the ReplayBuffer zarr (directory or .zarr.zip) `src`.

    Options: fps (needed unless `src` was exported by tether), rename ({source key: store key},
    "" skips a key), image_codec / image_quality (of the new store: a spec as in
    data/codecs.py, the store's default h264 if not given; "zstd" lossless), overwrite.
    """
    check_options(FORMAT, "import", options, IMPORT_OPTIONS)
    store, report = _import(Path(src), Path(out), **options)
    store.close()
    return report


def import_replay_buffer(source: str | Path, out: str | Path, fps: float | None = None,
                         rename: Mapping[str, str] | None = None, **create_kwargs):
    """Copy every episode of a ReplayBuffer zarr into a new EpisodeStore; returns it open for
    appending (the Python API behind `tether import --format diffusion_policy`)."""
    store, _ = _import(Path(source), Path(out), fps=fps, rename=rename, **create_kwargs)
    return store


def _import(src: Path, out: Path, fps: float | None = None, rename: Mapping[str, str] | None = None,
            overwrite: bool = False, **create_kwargs: Any):
    from tether.data.codecs import parse_image_codec, register_codecs
    from tether.data.store import EpisodeStore

    register_codecs()  # tether's JPEG (zarr 3 too), then every other imagecodecs codec
    _register_image_codecs()
    if rename is not None and not isinstance(rename, Mapping):
        raise ConfigError(
            f"rename must map source keys to store keys, got {rename!r}: e.g. "
            "--option 'rename={robot0_eef_pos: state, camera0_rgb: wrist}'."
        )
    with _open_root(src, "r") as root:
        try:
            ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
            arrays = dict(root["data"].arrays())
        except Exception as exc:  # noqa: BLE001 - zarr raises several unrelated types here
            raise StoreError(
                f"{src} is not a ReplayBuffer-layout zarr group (needs data/<key> and "
                f"meta/episode_ends): {exc}. Check the path (a folder .zarr or a .zarr.zip)."
            ) from exc
        saved = dict(root.attrs.get(ATTRS_KEY) or {})
        names = _import_names(arrays, saved.get("keys") or {}, dict(rename or {}))
        if fps is None:
            fps = saved.get("fps")
        if fps is None:
            raise ConfigError(
                f"{src} does not record its frame rate; pass it: tether import {src} --format "
                f"{FORMAT} --out {out} --fps 10 (or fps= in Python)."
            )
        episodes_meta = list(saved.get("episodes") or [])
        if saved:
            create_kwargs.setdefault("robot_config", saved.get("robot_config") or None)
            create_kwargs.setdefault("calibration", saved.get("calibration"))
            create_kwargs.setdefault("attrs", saved.get("store_attrs") or None)
        store = EpisodeStore.create(out, float(fps), overwrite=bool(overwrite), **create_kwargs)
        report = ImportReport(FORMAT, src, out, len(ends), int(ends[-1]) if len(ends) else 0,
                              float(fps))
        try:
            start = 0
            for episode, end in enumerate(ends):
                block = {target: np.asarray(arrays[name][start:end]) for name, target in names.items()}
                if episode < len(episodes_meta):
                    meta = dict(episodes_meta[episode])
                else:
                    meta = {"source": str(src), "source_episode": episode}
                store.add_episode(block, meta)
                start = int(end)
            if saved.get("meta_attrs"):
                store.set_meta_attrs(**saved["meta_attrs"])
        except BaseException:
            store.close()
            raise
    report.keys = {target: f"data/{name}" for name, target in names.items()}
    codec = parse_image_codec(store.attrs.get("image_codec"), store.attrs.get("image_quality"))
    if any(is_image_key(t) for t in names.values()) and codec.name not in ("zstd", "none"):
        report.notes.append(
            f"images re-encoded as {codec.label()} (lossy; --option image_codec=zstd keeps them "
            "exact)"
        )
    skipped = sorted(set(arrays) - set(names))
    if skipped:
        report.not_carried.append(f"skipped source arrays: {', '.join(skipped)}")
    if not saved:
        report.not_carried.append(
            "no tether metadata in the source: fps from --fps; episode task/success unknown "
            "(each episode records its source and index)"
        )
        extra_meta = sorted(k for k in root_meta_names(src) if k != "episode_ends")
        if extra_meta:
            report.not_carried.append(f"meta arrays not imported: {', '.join(extra_meta)}")
    return store, report


def root_meta_names(src: Path) -> list[str]:
    with _open_root(src, "r") as root:
        return [name for name, _ in root["meta"].arrays()]


def _import_names(arrays: Mapping[str, Any], saved: Mapping[str, str],
                  rename: Mapping[str, str]) -> dict[str, str]:
    """source array name -> store key: `rename`, then the exported mapping, then conventions."""
    names: dict[str, str] = {}
    for name, arr in arrays.items():
        target = rename.get(name, saved.get(name, name))
        if not target:
            continue
        looks_image = arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3
        if looks_image and not is_image_key(target) and not is_timing_key(target):
            target = image_key(target)
        names[name] = target
    if len(set(names.values())) != len(names):
        raise StoreError(
            f"Key mapping {names} maps two source keys to one store key; pass rename= to "
            "give them distinct names."
        )
    return names


def _register_image_codecs() -> None:
    """JPEG-XL, JPEG 2000, ... as UMI and diffusion_policy's real-robot data use (same ids)."""
    import imagecodecs.numcodecs

    imagecodecs.numcodecs.register_codecs(verbose=False)


# ---------------------------------------------------------------------- files
def _is_zip(path: Path) -> bool:
    return path.suffix == ".zip" or (path.is_file() and zipfile.is_zipfile(path))


@contextlib.contextmanager
def _open_root(path: Path, mode: str) -> Iterator[Any]:
    """The zarr format 2 root group of a directory or a `.zip` (ZipStore), closed afterwards."""
    import zarr

    if mode == "r" and not path.exists():
        raise StoreError(f"{path} does not exist: check the path.")
    with warnings.catch_warnings():  # zarr 3 warns that numcodecs codecs are not in the v3 spec
        warnings.simplefilter("ignore")
        if _is_zip(path):
            if mode == "r" and not path.is_file():
                raise StoreError(f"{path} is not a .zip file: check the path.")
            zip_store = zarr.storage.ZipStore(str(path), mode=mode)
            try:
                yield zarr.open_group(store=zip_store, mode=mode, zarr_format=2)
            finally:
                zip_store.close()
        else:
            yield zarr.open_group(str(path), mode=mode, zarr_format=2 if mode == "w" else None)


def _zip_folder(folder: Path, zip_path: Path) -> None:
    """Zip a zarr folder as zarr's ZipStore does (entries stored, names relative to the root)."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(file, file.relative_to(folder).as_posix())


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise StoreError(f"{out} already exists: pass --overwrite to replace it, or pick a new path.")
    is_group = out.is_dir() and ((out / ".zgroup").exists() or (out / "zarr.json").exists())
    if not (is_group or (out.is_file() and _is_zip(out))):
        raise StoreError(
            f"Refusing to overwrite {out}: it is not a zarr group or .zip this command wrote. "
            "Remove it yourself or pick a new path."
        )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _check_unique(names: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    for key, name in names.items():
        if name in seen:
            raise StoreError(
                f"Store keys '{seen[name]}' and '{key}' both export as data/{name}; rename one "
                "in the store first."
            )
        seen[name] = key


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


__all__ = ["export_name", "export_store", "import_dataset", "import_replay_buffer"]
