"""LeRobotDataset v3.0 on disk: paths, info.json, feature names, stats, small parquet files.

Constants and rules are those of lerobot 0.4.4 (src/lerobot/datasets/utils.py,
compute_stats.py); the exporter and importer share them so the two directions agree. Data layer;
needs pyarrow (the `lerobot` extra).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tether.core.errors import StoreError
from tether.core.optional import missing_extra
from tether.core.schema import ACTION, IMAGE, SEPARATOR, STATE, image_key, is_image_key

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as exc:
    raise missing_extra(__name__, "pyarrow") from exc

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000  # files per chunk folder
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
# Per-frame bookkeeping columns lerobot adds to every dataset (DEFAULT_FEATURES), in its order.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # lerobot's DEFAULT_QUANTILES -> q01 ... q99
OBS_STATE = "observation.state"
OBS_IMAGES = "observation.images."
#: Episode-metadata column lerobot ignores, carrying tether's full episode metadata as JSON so
#: that tether -> LeRobot -> tether keeps success, operator, seed, ... (lerobot keeps the task).
TETHER_METADATA = "tether/metadata"


def feature_name(key: str) -> str:
    """The LeRobot feature name of a store data key."""
    if key == STATE or key.startswith(STATE + SEPARATOR):
        return "observation." + key
    if is_image_key(key):
        return OBS_IMAGES + key[len(IMAGE + SEPARATOR):]
    return key  # action, and any other data key, keep their names


def store_key(feature: str) -> str:
    """The store data key of a LeRobot feature name (inverse of `feature_name`)."""
    if feature.startswith(OBS_IMAGES):
        camera = feature[len(OBS_IMAGES):].replace(".", "_")
        return image_key(camera)
    if feature == OBS_STATE or feature.startswith(OBS_STATE + SEPARATOR):
        return feature[len("observation."):]
    if feature == ACTION:
        return ACTION
    return feature.replace("/", "_")


def chunk_file(counter: int, chunks_size: int) -> dict[str, int]:
    """`{"chunk_index", "file_index"}` of the `counter`-th file (lerobot fills chunks in order)."""
    return {"chunk_index": counter // chunks_size, "file_index": counter % chunks_size}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json of a v3.x dataset, or StoreError saying what the folder is instead."""
    path = root / INFO_PATH
    if not path.is_file():
        raise StoreError(
            f"{root} is not a LeRobotDataset folder (no {INFO_PATH}). Download one with "
            "`huggingface-cli download --repo-type dataset USER/NAME --local-dir DIR` and import DIR."
        )
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is not readable JSON: {exc}") from exc
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise StoreError(
            f"{root} is a LeRobotDataset {version or '(no version)'}; tether reads v3.x. Convert it "
            "with lerobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`."
        )
    return info


# ---------------------------------------------------------------------------------- tasks
def write_tasks(root: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as pandas writes `DataFrame({"task_index": ...}, index=tasks)`.

    lerobot reads it with `pd.read_parquet` and looks tasks up by the index, so the file carries
    the pandas metadata that restores the task strings as the index (no pandas needed here).
    """
    table = pa.table({
        "task_index": pa.array(range(len(tasks)), pa.int64()),
        "__index_level_0__": pa.array(tasks, pa.string()),
    })
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path = root / TASKS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def read_tasks(root: Path) -> dict[int, str]:
    """task_index -> task string, from the pandas index column (or a plain `task` column)."""
    path = root / TASKS_PATH
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    names = None
    if b"pandas" in meta:
        index_columns = json.loads(meta[b"pandas"]).get("index_columns", [])
        names = next((c for c in index_columns if isinstance(c, str)), None)
    if names is None:
        names = "task" if "task" in table.column_names else None
    if names is None:
        raise StoreError(f"{path} has no task strings (no pandas index and no 'task' column).")
    return dict(zip(table.column("task_index").to_pylist(), table.column(names).to_pylist(), strict=True))


# ---------------------------------------------------------------------------------- stats
def feature_stats(values: np.ndarray, image: bool = False) -> dict[str, np.ndarray]:
    """compute_stats.get_feature_stats for one episode: min/max/mean/std/count/q01..q99.

    Vectors reduce over time (shape (D,), scalars (1,)); images (T, H, W, 3) uint8 reduce to
    per-channel (3, 1, 1) values in [0, 1] as lerobot's `compute_episode_stats` does. Quantiles
    here are exact (lerobot approximates them with histograms).
    """
    if image:
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
        count = values.shape[0]
    else:
        flat = values.reshape(values.shape[0], -1).astype(np.float64)
        count = values.shape[0]
    stats = {
        "min": flat.min(axis=0), "max": flat.max(axis=0), "mean": flat.mean(axis=0),
        "std": flat.std(axis=0), "count": np.array([count]),
    }
    for q, value in zip(QUANTILES, np.quantile(flat, QUANTILES, axis=0), strict=True):
        stats[f"q{round(q * 100):02d}"] = value
    if image:
        stats = {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in stats.items()}
    return stats


def aggregate_stats(per_episode: Iterable[Mapping[str, Mapping[str, np.ndarray]]]) -> dict:
    """compute_stats.aggregate_stats: count-weighted means, pooled std, weighted quantiles."""
    per_episode = list(per_episode)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in dict.fromkeys(k for stats in per_episode for k in stats):
        items = [stats[key] for stats in per_episode if key in stats]
        counts = np.stack([s["count"] for s in items]).astype(np.float64)
        means = np.stack([s["mean"] for s in items])
        weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
        total = counts.sum()
        mean = (means * weights).sum(axis=0) / total
        var = ((np.stack([s["std"] for s in items]) ** 2 + (means - mean) ** 2) * weights).sum(axis=0) / total
        agg = {
            "min": np.min(np.stack([s["min"] for s in items]), axis=0),
            "max": np.max(np.stack([s["max"] for s in items]), axis=0),
            "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)]),
        }
        for q in (k for k in items[0] if k.startswith("q")):
            agg[q] = (np.stack([s[q] for s in items]) * weights).sum(axis=0) / total
        out[key] = agg
    return out


def jsonable_stats(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    return {key: {k: np.asarray(v).tolist() for k, v in item.items()} for key, item in stats.items()}
