"""LeRobotDataset v3.0 export and import, in-process with pyarrow and PyAV (no lerobot needed).

The layout and field names checked here are lerobot 0.4.4's (datasets/utils.py,
lerobot_dataset.py); tests/data/test_lerobot_real_slow.py loads the same export with lerobot.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("av")
import pyarrow.parquet as pq  # noqa: E402

from tether.core.errors import ConfigError, StoreError  # noqa: E402
from tether.data.lerobot import export_store, import_dataset  # noqa: E402
from tether.data.store import EpisodeStore  # noqa: E402
from tether.data.synthetic import camera_frames  # noqa: E402

FPS = 10
LENGTHS = (12, 7, 9)
TASKS = ("pick the cube", "push the cube", "pick the cube")
MIN_PSNR_DB = 29.0  # measured 29.8-32.3 dB: h264 at lerobot's crf 30, gop 2, yuv420p, on noisy 64x48 frames


def make_store(path, lengths=LENGTHS, cameras=("top", "wrist")):
    """A small store shaped like a recording: state/action, two cameras, task and outcome."""
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(path, FPS)
    for ep, n in enumerate(lengths):
        block = {
            "state": rng.normal(size=(n, 6)).astype(np.float32),
            "action": rng.normal(size=(n, 6)).astype(np.float32),
            "timestamp": 100.0 + np.arange(n) / FPS + rng.normal(0, 1e-3, n),
        }
        for i, cam in enumerate(cameras):
            block[f"image.{cam}"] = camera_frames(n, 48, 64, seed=10 * ep + i)
        store.add_episode(block, {"task": TASKS[ep], "success": ep != 1, "operator": "ada", "seed": ep})
    store.close()
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    store = make_store(root / "data.zarr")
    report = export_store(store, root / "ds", repo_id="tether/test")
    return store, root / "ds", report


def test_export_writes_the_v30_layout(exported):
    _, ds, report = exported
    info = json.loads((ds / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == FPS and info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS)
    assert info["total_tasks"] == 2 and info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["chunks_size"] == 1000 and info["data_files_size_in_mb"] == 100
    feats = info["features"]
    assert feats["observation.state"]["dtype"] == "float32" and feats["observation.state"]["shape"] == [6]
    assert feats["action"]["shape"] == [6] and len(feats["action"]["names"]) == 6
    cam = feats["observation.images.top"]
    assert cam["dtype"] == "video" and cam["shape"] == [48, 64, 3]
    assert cam["names"] == ["height", "width", "channels"]
    assert cam["info"]["video.codec"] == "h264" and cam["info"]["video.fps"] == FPS
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[name]["shape"] == [1]
    assert (ds / "data/chunk-000/file-000.parquet").is_file()
    assert (ds / "meta/episodes/chunk-000/file-000.parquet").is_file()
    for cam in ("top", "wrist"):
        assert (ds / f"videos/observation.images.{cam}/chunk-000/file-000.mp4").is_file()

    frames = pq.read_table(ds / "data/chunk-000/file-000.parquet")
    assert frames.column_names == ["observation.state", "action", "timestamp", "frame_index",
                                   "episode_index", "index", "task_index"]
    assert frames.num_rows == sum(LENGTHS)
    np.testing.assert_array_equal(frames.column("index").to_numpy(), np.arange(sum(LENGTHS)))
    ts = frames.column("timestamp").to_numpy()[: LENGTHS[0]]
    np.testing.assert_allclose(ts, np.arange(LENGTHS[0]) / FPS, atol=1e-6)

    eps = pq.read_table(ds / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == list(LENGTHS)
    assert [e["tasks"] for e in eps] == [[t] for t in TASKS]
    assert eps[1]["dataset_from_index"] == LENGTHS[0] and eps[1]["dataset_to_index"] == sum(LENGTHS[:2])
    key = "videos/observation.images.top/"
    assert eps[0][key + "from_timestamp"] == 0.0
    assert eps[1][key + "from_timestamp"] == pytest.approx(LENGTHS[0] / FPS)
    assert eps[2][key + "to_timestamp"] == pytest.approx(sum(LENGTHS) / FPS)
    assert len(eps[0]["stats/observation.images.top/mean"]) == 3  # (3, 1, 1)

    stats = json.loads((ds / "meta/stats.json").read_text())
    assert set(stats["observation.state"]) >= {"min", "max", "mean", "std", "count", "q01", "q99"}
    assert stats["observation.state"]["count"] == [sum(LENGTHS)]
    assert np.asarray(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)

    tasks = pq.read_table(ds / "meta/tasks.parquet")
    pandas_meta = json.loads(tasks.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["__index_level_0__"]  # pd.read_parquet -> task index
    assert tasks.column("__index_level_0__").to_pylist() == ["pick the cube", "push the cube"]
    assert any("timestamp" in line for line in report.not_carried)


def test_round_trip_keeps_episodes_states_actions_and_tasks(exported, tmp_path):
    store_path, ds, _ = exported
    report = import_dataset(ds, tmp_path / "back.zarr")
    assert report.n_episodes == 3 and report.n_steps == sum(LENGTHS)
    with EpisodeStore.open(store_path) as a, EpisodeStore.open(tmp_path / "back.zarr") as b:
        assert b.fps == FPS and list(b.episode_lengths) == list(LENGTHS)
        assert set(b.data_keys) == {"state", "action", "image.top", "image.wrist", "timestamp"}
        worst = np.inf
        for ep in range(3):
            ea, eb = a.get_episode(ep), b.get_episode(ep)
            np.testing.assert_array_equal(ea["state"], eb["state"])
            np.testing.assert_array_equal(ea["action"], eb["action"])
            np.testing.assert_allclose(eb["timestamp"], np.arange(LENGTHS[ep]) / FPS, atol=1e-6)
            for cam in ("image.top", "image.wrist"):
                worst = min(worst, psnr(ea[cam], eb[cam]))
            meta = b.episode_metadata(ep)
            assert meta["task"] == TASKS[ep] and meta["success"] == (ep != 1)
            assert meta["operator"] == "ada" and meta["source_episode"] == ep
        assert worst >= MIN_PSNR_DB, worst


def test_import_reads_lerobot_written_metadata_without_tether_column(exported, tmp_path):
    """A dataset lerobot wrote has no tether column: the task comes from the tasks table."""
    _, ds, _ = exported
    import shutil

    copy = tmp_path / "plain"
    shutil.copytree(ds, copy)
    path = copy / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop(["tether/metadata", "tasks"]), path)
    import_dataset(copy, tmp_path / "b.zarr")
    with EpisodeStore.open(tmp_path / "b.zarr") as b:
        assert [b.episode_metadata(i)["task"] for i in range(3)] == list(TASKS)


def test_errors_name_the_fix(exported, tmp_path):
    store_path, ds, _ = exported
    with pytest.raises(StoreError, match="already exists"):
        export_store(store_path, ds)
    with pytest.raises(ConfigError, match="does not take"):
        export_store(store_path, tmp_path / "x", vcodc="h264")
    with pytest.raises(StoreError, match="not a LeRobotDataset"):
        import_dataset(tmp_path, tmp_path / "y.zarr")
    with pytest.raises(StoreError, match="contradicts"):
        import_dataset(ds, tmp_path / "z.zarr", fps=30)
    old = tmp_path / "old"
    (old / "meta").mkdir(parents=True)
    (old / "meta/info.json").write_text(json.dumps({"codebase_version": "v2.1"}))
    with pytest.raises(StoreError, match="convert_dataset_v21_to_v30"):
        import_dataset(old, tmp_path / "w.zarr")


def test_cli_export_import_and_inspect(exported, tmp_path):
    """`tether export/import --format lerobot` end to end; `tether inspect` reads the import."""
    from typer.testing import CliRunner

    from tether.cli import build_app

    store_path, _, _ = exported
    runner, app = CliRunner(), build_app()
    result = runner.invoke(app, ["export", str(store_path), "--format", "lerobot", "--out",
                                 str(tmp_path / "ds"), "--vcodec", "h264", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n_episodes"] == 3 and report["keys"]["observation.images.top"] == "image.top"
    result = runner.invoke(app, ["import", str(tmp_path / "ds"), "--format", "lerobot", "--out",
                                 str(tmp_path / "back.zarr")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "back.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(store_path), "--format", "lerobot", "--out",
                                 str(tmp_path / "ds2"), "--vcodec", "vp9"])
    assert result.exit_code == 2 and "vp9" in result.output


def test_import_reads_image_features_embedded_as_png(exported, tmp_path):
    """Datasets made with use_videos=False keep frames as PNG bytes in the frame table."""
    import imagecodecs

    store_path, ds, _ = exported
    import shutil

    copy = tmp_path / "png"
    shutil.copytree(ds, copy)
    info = json.loads((copy / "meta/info.json").read_text())
    info["features"]["observation.images.top"]["dtype"] = "image"
    info["features"]["observation.images.top"].pop("info")
    del info["features"]["observation.images.wrist"]
    (copy / "meta/info.json").write_text(json.dumps(info))
    with EpisodeStore.open(store_path) as store:
        frames = store.read_steps(0, store.n_steps, ["image.top"])["image.top"]
    path = copy / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    images = pa.array([{"bytes": imagecodecs.png_encode(f), "path": None} for f in frames],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(table.append_column("observation.images.top", images), path)
    import_dataset(copy, tmp_path / "b.zarr", image_codec="zstd")  # lossless
    with EpisodeStore.open(tmp_path / "b.zarr") as b:
        assert b.image_keys == ["image.top"]
        np.testing.assert_array_equal(b.read_steps(0, b.n_steps, ["image.top"])["image.top"], frames)
