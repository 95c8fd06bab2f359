"""LeRobotDataset v3.x folder -> new episode store (`tether import --format lerobot`). Data layer.

Reads a local folder (a hub dataset is the user's `huggingface-cli download`): info.json for
fps and features, the episodes table for row ranges and video segments, the frame table for
states/actions, the mp4 files (video features) or embedded PNGs (image features) for cameras,
tasks.parquet for task strings. States and actions are copied exactly; frames are decoded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.data.exchange import ImportReport, check_options
from tether.data.layout import TIMESTAMP
from tether.data.lerobot import format as fmt
from tether.data.lerobot.format import pa, pq
from tether.data.lerobot.video import read_segment
from tether.data.store import EpisodeStore

OPTIONS = ("overwrite", "fps", "image_codec", "image_quality", "tolerance_s")
_BOOKKEEPING = ("frame_index", "episode_index", "index", "task_index")


def import_dataset(src: Path, out: Path, **options: Any) -> ImportReport:
    """Create the store `out` from the LeRobotDataset folder `src`.

    Options: overwrite, fps (must match info.json if given), image_codec / image_quality (the
    new store's camera codec), tolerance_s (how far a decoded frame may sit from its timestamp,
    default lerobot's 1e-4 s).
    """
    check_options("lerobot", "import", options, OPTIONS)
    src = Path(src)
    info = fmt.read_info(src)
    fps = float(info["fps"])
    if options.get("fps") is not None and abs(float(options["fps"]) - fps) > 1e-9:
        raise StoreError(f"--fps {options['fps']} contradicts {src}'s info.json fps {fps}; drop --fps.")
    tolerance = float(options.get("tolerance_s", 1e-4))
    features: dict[str, dict[str, Any]] = info["features"]
    tasks = fmt.read_tasks(src)
    episodes = _read_table(src / fmt.EPISODES_DIR, "episodes")
    frames = _read_table(src / "data", "frame")
    order = np.argsort(np.asarray(frames.column("index")), kind="stable")
    frames = frames.take(pa.array(order))
    episode_of_row = np.asarray(frames.column("episode_index"))

    report = ImportReport("lerobot", src, Path(out), fps=fps)
    lowdim = [name for name, ft in features.items()
              if ft["dtype"] not in ("video", "image", "string") and name not in fmt.DEFAULT_FEATURES]
    cameras = [name for name, ft in features.items() if ft["dtype"] in ("video", "image")]
    for name in lowdim + cameras:
        report.keys[fmt.store_key(name)] = name
    report.keys[TIMESTAMP] = "timestamp"
    skipped = [name for name, ft in features.items() if ft["dtype"] == "string"]
    if skipped:
        report.not_carried.append("string features " + ", ".join(skipped))

    create = {k: options[k] for k in ("image_codec", "image_quality") if options.get(k) is not None}
    store = EpisodeStore.create(out, fps, overwrite=bool(options.get("overwrite")),
                                attrs={"source": str(src), "source_format": "lerobot",
                                       "robot_type": info.get("robot_type")}, **create)
    try:
        ep_rows = sorted(episodes.to_pylist(), key=lambda r: r["episode_index"])
        for row in ep_rows:
            ep = int(row["episode_index"])
            rows = np.flatnonzero(episode_of_row == ep)
            if len(rows) != int(row["length"]):
                raise StoreError(
                    f"{src}: episode {ep} has {len(rows)} frame rows but its length is {row['length']}; "
                    "the dataset is incomplete (re-download it).")
            part = frames.take(pa.array(rows))
            block = {fmt.store_key(name): _column(part, name, features[name]) for name in lowdim}
            timestamps = np.asarray(part.column("timestamp"), np.float64)
            block[TIMESTAMP] = timestamps
            for name in cameras:
                if features[name]["dtype"] == "video":
                    path = src / info["video_path"].format(
                        video_key=name, chunk_index=row[f"videos/{name}/chunk_index"],
                        file_index=row[f"videos/{name}/file_index"])
                    images = read_segment(path, float(row[f"videos/{name}/from_timestamp"]),
                                          timestamps, tolerance)
                else:
                    images = _png_column(part, name)
                block[fmt.store_key(name)] = images
            metadata = _metadata(row, part, tasks)
            metadata.update({"source": str(src), "source_episode": ep})
            store.add_episode(block, metadata)
            report.n_episodes += 1
            report.n_steps += len(rows)
    except BaseException:
        store.close()
        raise
    store.close()
    return report


def _read_table(folder: Path, what: str) -> pa.Table:
    paths = sorted(folder.glob("*/*.parquet"))
    if not paths:
        raise StoreError(f"{folder} has no {what} parquet files (chunk-*/file-*.parquet); the "
                         "dataset is incomplete.")
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables, promote_options="default")


def _column(table: pa.Table, name: str, feature: dict[str, Any]) -> np.ndarray:
    column = table.column(name).combine_chunks()
    shape = [int(s) for s in feature["shape"]]
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        values = np.asarray(column.flatten().to_numpy(zero_copy_only=False))
        return values.reshape(len(table), *shape)
    values = column.to_numpy(zero_copy_only=False)
    return values.reshape(len(table), *shape) if shape != [1] else values.reshape(len(table), 1)


def _png_column(table: pa.Table, name: str) -> np.ndarray:
    """Image features (dtype "image") embed PNG/JPEG bytes in the frame table."""
    import imagecodecs

    images = []
    for item in table.column(name).to_pylist():
        data = item["bytes"] if isinstance(item, dict) else item
        image = imagecodecs.imread(data)
        images.append(image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, -1))
    return np.stack(images).astype(np.uint8)


def _metadata(row: dict[str, Any], part: pa.Table, tasks: dict[int, str]) -> dict[str, Any]:
    """Episode metadata: tether's own (if exported by tether) else the task strings."""
    if row.get(fmt.TETHER_METADATA):
        try:
            meta = dict(json.loads(row[fmt.TETHER_METADATA]))
            return {k: v for k, v in meta.items() if k not in ("index", "length")}  # the store's own
        except (TypeError, ValueError):
            pass
    names = list(row.get("tasks") or [])
    if not names:
        names = [tasks[i] for i in dict.fromkeys(np.asarray(part.column("task_index")).tolist())]
    meta: dict[str, Any] = {"task": names[0] if names else ""}
    if len(names) > 1:
        meta["tasks"] = names
    return meta
