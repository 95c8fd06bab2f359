"""LeRobotDataset v3.0 both ways, checked by lerobot 0.4.4 itself in its own venv (slow).

lerobot pins torch<2.11 and many heavy packages; it is installed `--no-deps` into a separate
venv beside the CPU torch this machine has, with only the runtime packages its dataset code
imports (RECIPE). `make lerobot-check` runs this file; the venv is built once at
$TETHER_LEROBOT_VENV (default ~/.cache/tether/venvs/lerobot-0.4.4).

1. our export, loaded with `LeRobotDataset(repo_id, root=DIR)`: every frame's state/action
   exactly, every camera frame within codec tolerance of the store's;
2. a dataset written by lerobot's own `LeRobotDataset.create` + `add_frame` + `save_episode`,
   read by `tether import`: the same values back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from tether.data.lerobot import export_store, import_dataset  # noqa: E402
from tether.data.store import EpisodeStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_lerobot_format import FPS, LENGTHS, TASKS, make_store, psnr  # noqa: E402

pytestmark = pytest.mark.slow

VENV = Path(os.environ.get("TETHER_LEROBOT_VENV",
                          Path.home() / ".cache/tether/venvs/lerobot-0.4.4"))
#: pip install steps into the lerobot venv (each a list of arguments after `pip install -q`).
#: lerobot 0.4.4 asks for torch<2.11 / torchvision<0.26; the PyPI torchvision wheels only load
#: beside the torch they were built with, and torchvision >= 0.24 has no video reader, so
#: frames decode through torchcodec (which needs Debian's ffmpeg libraries: `make
#: lerobot-check` installs them).
RECIPE = [
    ["torch==2.14.1", "torchvision==0.29.1", "torchcodec==0.17.0"],
    ["--no-deps", "lerobot==0.4.4"],
    ["datasets>=4.0,<5", "huggingface-hub>=0.34.2,<0.36", "pandas", "pyarrow", "av>=15,<16",
     "packaging<26", "pillow", "draccus==0.10.0", "einops", "jsonlines", "termcolor",
     "deepdiff<9", "accelerate>=1.10,<2",
     "imageio", "numpy<2.3"],
]
MIN_PSNR_DB = 29.0


def lerobot_python() -> Path:
    """The lerobot venv's python, building the venv on first use (bounded in time)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        for step in RECIPE:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *step], check=True, timeout=1500)
    probe = subprocess.run([str(python), "-c", "import lerobot.datasets.lerobot_dataset"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode:
        pytest.fail(f"lerobot does not import in {VENV}:\n{probe.stderr[-3000:]}")
    return python


def run_lerobot(script: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(VENV / "hf_home")}
    result = subprocess.run([str(lerobot_python()), "-c", textwrap.dedent(script), *args],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


READ = """
    import sys, json, numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    root, out = sys.argv[1], sys.argv[2]
    ds = LeRobotDataset("tether/test", root=root)  # lerobot's default decoder (torchcodec)
    items = [ds[i] for i in range(len(ds))]
    arrays = {k: np.stack([it[k].numpy() for it in items]) for k in items[0]
              if hasattr(items[0][k], "numpy")}
    np.savez(out, **arrays)
    print(json.dumps({"backend": ds.video_backend, "fps": ds.fps, "episodes": ds.num_episodes, "frames": ds.num_frames,
                      "tasks": [it["task"] for it in items], "camera_keys": ds.meta.camera_keys}))
"""


def test_lerobot_loads_our_export(tmp_path):
    store_path = make_store(tmp_path / "data.zarr")
    export_store(store_path, tmp_path / "ds", repo_id="tether/test")
    summary = json.loads(run_lerobot(READ, str(tmp_path / "ds"), str(tmp_path / "x.npz")))
    print("lerobot video backend:", summary["backend"])
    assert summary["fps"] == FPS and summary["episodes"] == 3 and summary["frames"] == sum(LENGTHS)
    got = np.load(tmp_path / "x.npz")
    with EpisodeStore.open(store_path) as store:
        ours = store.read_steps(0, store.n_steps)
    np.testing.assert_array_equal(got["observation.state"], ours["state"])
    np.testing.assert_array_equal(got["action"], ours["action"])
    np.testing.assert_array_equal(got["episode_index"], np.repeat(np.arange(3), LENGTHS))
    expected_tasks = [t for t, n in zip(TASKS, LENGTHS) for _ in range(n)]
    assert summary["tasks"] == expected_tasks
    for cam in ("top", "wrist"):
        frames = np.round(got[f"observation.images.{cam}"] * 255).astype(np.uint8)  # (N, 3, H, W)
        value = psnr(frames.transpose(0, 2, 3, 1), ours[f"image.{cam}"])
        print(f"lerobot-decoded {cam}: PSNR {value:.2f} dB")
        assert value >= MIN_PSNR_DB


WRITE = """
    import sys, numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    root, out = sys.argv[1], sys.argv[2]
    features = {
        "observation.state": {"dtype": "float32", "shape": (4,), "names": ["a", "b", "c", "d"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["a", "b", "c", "d"]},
        "observation.images.front": {"dtype": "video", "shape": (48, 64, 3),
                                     "names": ["height", "width", "channels"]},
    }
    ds = LeRobotDataset.create("lab/written", fps=15, features=features, root=root,
                               use_videos=True, vcodec="h264")
    rng = np.random.default_rng(1)
    truth = {"state": [], "action": [], "image": []}
    for ep, n in enumerate((8, 5)):
        for i in range(n):
            s, a = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
            img = np.clip(np.linspace(0, 255, 64)[None, :, None] + 20 * ep + 3 * i
                          + rng.normal(0, 2, (48, 64, 3)), 0, 255).astype(np.uint8)
            ds.add_frame({"observation.state": s, "action": a, "observation.images.front": img,
                          "task": f"task {ep}"})
            truth["state"].append(s); truth["action"].append(a); truth["image"].append(img)
        ds.save_episode()
    ds.finalize()
    np.savez(out, **{k: np.stack(v) for k, v in truth.items()})
"""


def test_tether_imports_a_dataset_lerobot_wrote(tmp_path):
    run_lerobot(WRITE, str(tmp_path / "written"), str(tmp_path / "truth.npz"))
    truth = np.load(tmp_path / "truth.npz")
    report = import_dataset(tmp_path / "written", tmp_path / "in.zarr")
    assert report.n_episodes == 2 and report.n_steps == 13
    with EpisodeStore.open(tmp_path / "in.zarr") as store:
        assert store.fps == 15 and list(store.episode_lengths) == [8, 5]
        steps = store.read_steps(0, store.n_steps)
        np.testing.assert_array_equal(steps["state"], truth["state"])
        np.testing.assert_array_equal(steps["action"], truth["action"])
        value = psnr(steps["image.front"], truth["image"])
        print(f"lerobot-written video imported: PSNR {value:.2f} dB")
        assert value >= MIN_PSNR_DB
        assert [store.episode_metadata(i)["task"] for i in range(2)] == ["task 0", "task 1"]


WRITE_FROM_NPZ = """
    import sys, numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    src, root = sys.argv[1], sys.argv[2]
    data = np.load(src)
    cams = [k[len("image."):] for k in data.files if k.startswith("image.")]
    d = data["state"].shape[1]
    features = {
        "observation.state": {"dtype": "float32", "shape": (d,), "names": [f"j{i}" for i in range(d)]},
        "action": {"dtype": "float32", "shape": (d,), "names": [f"j{i}" for i in range(d)]},
    }
    for cam in cams:
        features[f"observation.images.{cam}"] = {"dtype": "video", "shape": data["image." + cam].shape[1:],
                                                "names": ["height", "width", "channels"]}
    ds = LeRobotDataset.create("lab/lift", fps=10, features=features, root=root, use_videos=True,
                               vcodec="h264")
    start = 0
    for end in data["ends"]:
        for t in range(start, end):
            frame = {"observation.state": data["state"][t], "action": data["action"][t], "task": "lift"}
            frame.update({f"observation.images.{c}": data["image." + c][t] for c in cams})
            ds.add_frame(frame)
        ds.save_episode()
        start = end
    ds.finalize()
"""


def test_train_and_evaluate_on_a_dataset_lerobot_wrote(tmp_path):
    """Twin demos written by lerobot's writer -> tether import -> tiny training -> twin eval."""
    env = {**os.environ, "MUJOCO_GL": "egl"}

    def tether(*args: str, timeout: float = 600) -> str:
        proc = subprocess.run([sys.executable, "-m", "tether.cli", *args], capture_output=True,
                              text=True, timeout=timeout, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    tether("record", "--robot", "twin:lift", "--teleop", "scripted", "--episodes", "4", "--out",
           str(tmp_path / "demos.zarr"), "--seed", "100", "--set", "twin_params.width=80",
           "--set", "twin_params.height=60", "--set", "fps=10")
    with EpisodeStore.open(tmp_path / "demos.zarr") as store:
        steps = store.read_steps(0, store.n_steps, ["state", "action", *store.image_keys])
        np.savez(tmp_path / "demos.npz", ends=store.episode_ends, **steps)
    run_lerobot(WRITE_FROM_NPZ, str(tmp_path / "demos.npz"), str(tmp_path / "lift_lerobot"))
    tether("import", str(tmp_path / "lift_lerobot"), "--format", "lerobot", "--out",
           str(tmp_path / "lift.zarr"))
    with EpisodeStore.open(tmp_path / "lift.zarr") as store:
        np.testing.assert_array_equal(store.read_steps(0, store.n_steps, ["state"])["state"],
                                      steps["state"])
    tether("train", "--dataset", str(tmp_path / "lift.zarr"), "--preset", "tiny", "--steps", "30",
           "--out", str(tmp_path / "run"), "--no-progress")
    out = tether("eval", "--task", "lift", "--checkpoint", str(tmp_path / "run"), "--episodes", "2",
                 "--workers", "0", "--videos", "0", "--out", str(tmp_path / "report"), "--json")
    summary = json.loads(out[out.index("{"):])
    print("twin eval of a policy trained on a lerobot-written dataset:", summary)
    assert summary["episodes"] == 2 and 0.0 <= summary["success_rate"] <= 1.0
