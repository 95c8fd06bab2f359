"""`tether export|import --format diffusion_policy`: ReplayBuffer zarr (format 2) both ways.

In-process checks of what a zarr 2.x reader sees: the raw `.zarray` JSON and chunk files decoded
with plain numcodecs (no zarr, nothing registered), plus round trips and a UMI-style `.zarr.zip`
with JPEG-XL images written here. diffusion_policy's own ReplayBuffer in a zarr<3 venv is the
slow check (tests/data/test_replay_buffer_real_slow.py).
"""

from __future__ import annotations

import json
import warnings

import numcodecs
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from tether.cli import build_app
from tether.core.errors import ConfigError, StoreError
from tether.data.layout import timing_key
from tether.data.replay_buffer import export_store, import_dataset
from tether.data.store import EpisodeStore
from tether.data.synthetic import camera_frames

LENGTHS = [7, 5]
FPS = 15.0
# JPEG q90 re-encoding already-JPEG frames (the source store is JPEG); ~42 dB on these frames.
MIN_PSNR_DB = 35.0


def make_store(path, lengths=LENGTHS):
    """A small store with a camera, state, action, one timing stream and episode metadata."""
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, fps=FPS, robot_config={"name": "so100"}, attrs={"lab": "x"},
                             image_codec="jpeg") as st:
        for i, n in enumerate(lengths):
            st.add_episode(
                {
                    "image.top": camera_frames(n, 24, 32, seed=i),
                    "state": rng.normal(size=(n, 6)).astype(np.float32),
                    "state.left": rng.normal(size=(n, 3)).astype(np.float32),
                    "action": rng.normal(size=(n, 6)).astype(np.float32),
                    "timestamp": np.arange(n) / FPS,
                    timing_key("top", "t_host"): np.arange(n) / FPS + 100.0,
                    timing_key("top", "index"): np.arange(n, dtype=np.int64),
                },
                {"task": "pick the cube", "success": i == 0, "operator": "ann"},
            )
    return path


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_same_store(src, back, image_exact: bool):
    with EpisodeStore.open(src) as a, EpisodeStore.open(back) as b:
        assert b.keys == a.keys and b.fps == a.fps
        assert list(b.episode_lengths) == list(a.episode_lengths)
        assert b.attrs["robot_config"] == a.attrs["robot_config"] and b.attrs["lab"] == "x"
        worst = float("inf")
        for e in range(a.n_episodes):
            assert b.episode_metadata(e) == a.episode_metadata(e)
            x, y = a.get_episode(e), b.get_episode(e)
            for key in a.keys:
                if key.startswith("image."):
                    worst = min(worst, psnr(x[key], y[key]))
                else:
                    assert y[key].dtype == x[key].dtype, key
                    np.testing.assert_array_equal(y[key], x[key], err_msg=key)
        if image_exact:
            assert worst == float("inf")
        else:
            assert worst >= MIN_PSNR_DB
        return worst


def test_export_is_a_zarr2_replay_buffer_a_plain_reader_decodes(tmp_path):
    src = make_store(tmp_path / "src.zarr")
    report = export_store(src, tmp_path / "rb.zarr")
    rb = tmp_path / "rb.zarr"
    assert report.n_episodes == 2 and report.n_steps == 12 and report.fps == FPS
    assert report.keys["data/camera_top"] == "image.top" and report.keys["data/robot_joint"] == "state"
    assert report.keys["data/robot_joint_left"] == "state.left"
    assert report.keys["data/timestamp"] == "timestamp"
    assert report.keys["data/timing_top_t_host"] == "timing/top/t_host"
    assert any("fps" in line for line in report.not_carried)
    assert json.loads((rb / ".zgroup").read_text())["zarr_format"] == 2
    ends_meta = json.loads((rb / "meta/episode_ends/.zarray").read_text())
    assert ends_meta["dtype"] == "<i8" and ends_meta["compressor"] is None
    np.testing.assert_array_equal(
        np.frombuffer((rb / "meta/episode_ends/0").read_bytes(), "<i8"), np.cumsum(LENGTHS)
    )
    with EpisodeStore.open(src) as st:
        frames = st.read_steps(0, st.n_steps, ["image.top", "state"])
    for name, key in [("camera_top", "image.top"), ("robot_joint", "state")]:
        meta = json.loads((rb / "data" / name / ".zarray").read_text())
        assert meta["zarr_format"] == 2 and meta["shape"][0] == 12
        assert meta["chunks"][1:] == meta["shape"][1:]  # chunked in time only (ReplayBuffer)
        assert meta["compressor"]["id"] == "blosc"
        codec = numcodecs.get_codec(meta["compressor"])  # plain numcodecs, nothing registered
        chunk0 = ".".join(["0"] * len(meta["shape"]))
        raw = np.frombuffer(codec.decode((rb / "data" / name / chunk0).read_bytes()), meta["dtype"])
        expect = frames[key][: meta["chunks"][0]]
        np.testing.assert_array_equal(raw.reshape(expect.shape), expect)  # images lossless
    assert json.loads((rb / "data/camera_top/.zarray").read_text())["compressor"]["cname"] == "zstd"


@pytest.mark.parametrize("suffix", [".zarr", ".zarr.zip"])
def test_round_trip_exact_and_jpeg_within_psnr(tmp_path, suffix):
    src = make_store(tmp_path / "src.zarr")
    rb = tmp_path / f"rb{suffix}"
    export_store(src, rb)
    report = import_dataset(rb, tmp_path / "exact.zarr", image_codec="zstd")
    assert report.not_carried == [] and report.fps == FPS
    assert_same_store(src, tmp_path / "exact.zarr", image_exact=True)
    if suffix == ".zarr":  # images re-encoded as JPEG, within the stated PSNR
        report = import_dataset(rb, tmp_path / "jpeg.zarr", image_codec="jpeg")
        assert any("re-encoded as jpeg q90" in note for note in report.notes)
        assert_same_store(src, tmp_path / "jpeg.zarr", image_exact=False)


def test_import_umi_zip_with_jpegxl_images(tmp_path):
    """A UMI-style `.zarr.zip`: JPEG-XL frames (imagecodecs' registered codec), UMI key names."""
    from imagecodecs.numcodecs import Jpegxl, register_codecs

    register_codecs(verbose=False)
    n, rng = 9, np.random.default_rng(1)
    frames = camera_frames(n, 24, 32, seed=3)
    pose = rng.normal(size=(n, 3)).astype(np.float32)
    path = tmp_path / "umi.zarr.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zip_store = zarr.storage.ZipStore(str(path), mode="w")
        root = zarr.open_group(store=zip_store, mode="w", zarr_format=2)
        root.create_array("data/camera0_rgb", data=frames, chunks=(1, 24, 32, 3),
                          compressors=Jpegxl(lossless=True, effort=1))
        root.create_array("data/robot0_eef_pos", data=pose, chunks=(n, 3))
        root.create_array("data/robot0_demo_start_pose", data=np.zeros((n, 6)), chunks=(n, 6))
        root.create_array("meta/episode_ends", data=np.array([4, 9], np.int64), compressors=None)
        zip_store.close()
    with pytest.raises(ConfigError, match="--fps"):
        import_dataset(path, tmp_path / "nofps.zarr")
    report = import_dataset(path, tmp_path / "umi.zarr", fps=10, image_codec="zstd",
                            rename={"robot0_eef_pos": "state", "robot0_demo_start_pose": ""})
    assert report.n_episodes == 2 and report.fps == 10
    assert any("robot0_demo_start_pose" in line for line in report.not_carried)
    with EpisodeStore.open(tmp_path / "umi.zarr") as st:
        assert st.keys == ["image.camera0_rgb", "state"] and list(st.episode_lengths) == [4, 5]
        np.testing.assert_array_equal(st.read_steps(0, n, ["image.camera0_rgb"])["image.camera0_rgb"], frames)
        np.testing.assert_array_equal(st.get_episode(1)["state"], pose[4:])
        assert st.episode_metadata(1)["source_episode"] == 1


def test_cli_export_import_inspect_and_errors(tmp_path):
    src = make_store(tmp_path / "src.zarr", lengths=[4, 3])
    app, runner = build_app(), CliRunner()
    out = runner.invoke(app, ["export", str(src), "--format", "diffusion_policy",
                              "--out", str(tmp_path / "rb.zarr")])
    assert out.exit_code == 0, out.output
    assert "not carried" in out.output and "data/camera_top" in out.output
    again = runner.invoke(app, ["export", str(src), "-f", "diffusion_policy", "-o", str(tmp_path / "rb.zarr")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    out = runner.invoke(app, ["import", str(tmp_path / "rb.zarr"), "--format", "diffusion_policy",
                              "--out", str(tmp_path / "back.zarr"), "--option", "image_codec=zstd", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["n_steps"] == 7
    inspect = runner.invoke(app, ["inspect", str(tmp_path / "back.zarr"), "--json"])
    assert inspect.exit_code == 0 and json.loads(inspect.output)["episodes"] == 2
    unknown = runner.invoke(app, ["export", str(src), "--format", "hdf5", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "Known formats" in unknown.output and "diffusion_policy" in unknown.output
    typo = runner.invoke(app, ["export", str(src), "-f", "diffusion_policy", "-o", str(tmp_path / "y"),
                               "--option", "image_codek=jpeg"])
    assert typo.exit_code == 2 and "image_codec" in typo.output
    bad = runner.invoke(app, ["import", str(tmp_path / "rb.zarr"), "-f", "diffusion_policy", "-o",
                              str(tmp_path / "b2.zarr"), "--option", "rename=a:b"])
    assert bad.exit_code == 2 and "rename must map" in bad.output
    with pytest.raises(StoreError, match="not a ReplayBuffer-layout"):
        import_dataset(src / "data", tmp_path / "z.zarr", fps=10)
