"""Slow: diffusion_policy's own ReplayBuffer (zarr 2.x, its own venv) loads our exports.

Recipe (built once, cached in ~/.cache/tether/venvs/dp-zarr2, rebuilt when RECIPE changes):
`python -m venv` + `pip install 'zarr<3' numcodecs numpy`, nothing from tether. The loader is
diffusion_policy/common/replay_buffer.py at commit DP_COMMIT (MIT licence, so the one file is
copied into this test's tmp dir at test time, never into the repository). It is taken from
$TETHER_DIFFUSION_POLICY_SRC (that file, or a clone / git dir of the repository), else
downloaded from GitHub at DP_COMMIT; without either the test skips and says how to provide it.

Checked: `ReplayBuffer.copy_from_path` (numpy backend and a zarr MemoryStore copy, which copies
our chunks and compressors as they are) on a directory export, and UMI's way of opening a
`.zarr.zip` (`copy_from_store(zarr.ZipStore(...), store=zarr.MemoryStore())`); episodes, lengths,
every state/action/timing value and every image pixel must equal what tether reads.
Run: make test-replay-buffer-real
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tether.data.layout import timing_key
from tether.data.replay_buffer import export_store
from tether.data.store import EpisodeStore
from tether.data.synthetic import camera_frames

pytestmark = pytest.mark.slow

DP_COMMIT = "5ba07ac6661db573af695b419a7947ecb704690f"
DP_FILE = "diffusion_policy/common/replay_buffer.py"
RECIPE = ["zarr<3", "numcodecs", "numpy"]
VENV = Path(os.environ.get("TETHER_DP_VENV", Path.home() / ".cache/tether/venvs/dp-zarr2"))

READER = r'''
import json, sys
import numpy as np, zarr
from replay_buffer import ReplayBuffer

path, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "zip":  # as UMI's train workspace opens its dataset.zarr.zip
    with zarr.ZipStore(path, mode="r") as zip_store:
        rb = ReplayBuffer.copy_from_store(src_store=zip_store, store=zarr.MemoryStore())
elif mode == "memory":
    rb = ReplayBuffer.copy_from_path(path, store=zarr.MemoryStore())
else:
    rb = ReplayBuffer.copy_from_path(path)
arrays = {key: np.asarray(rb[key][:]) for key in rb.keys()}
np.savez(out + ".npz", **arrays)
info = {"n_episodes": int(rb.n_episodes), "n_steps": int(rb.n_steps),
        "episode_lengths": [int(x) for x in rb.episode_lengths],
        "episode_ends_dtype": str(np.asarray(rb.episode_ends[:]).dtype),
        "backend": rb.backend, "chunk_size": rb.chunk_size,
        "zarr": zarr.__version__}
json.dump(info, open(out + ".json", "w"))
'''


def _dp_source(dest: Path) -> Path:
    """Copy replay_buffer.py (and the MIT licence notice) into `dest`, or skip."""
    given = os.environ.get("TETHER_DIFFUSION_POLICY_SRC")
    text = None
    if given and Path(given).is_file():
        text = Path(given).read_text()
    elif given:
        git_dir = Path(given)
        text = subprocess.run(
            ["git", f"--git-dir={git_dir / '.git' if (git_dir / '.git').exists() else git_dir}",
             "show", f"{DP_COMMIT}:{DP_FILE}"],
            check=True, capture_output=True, text=True,
        ).stdout
    else:
        url = f"https://raw.githubusercontent.com/real-stanford/diffusion_policy/{DP_COMMIT}/{DP_FILE}"
        try:
            text = urllib.request.urlopen(url, timeout=20).read().decode()
        except OSError as exc:
            pytest.skip(f"cannot download {url} ({exc}); set TETHER_DIFFUSION_POLICY_SRC to the "
                        "file or a clone of github.com/real-stanford/diffusion_policy")
    target = dest / "replay_buffer.py"
    target.write_text(text)
    (dest / "LICENSE-diffusion_policy").write_text(
        "replay_buffer.py: MIT License, Copyright (c) 2023 Columbia Artificial Intelligence and "
        "Robotics Lab (github.com/real-stanford/diffusion_policy)\n"
    )
    return target


def _venv() -> Path:
    python = VENV / "bin/python"
    stamp = VENV / "tether-recipe.json"
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == RECIPE:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *RECIPE], check=True, timeout=600)
    stamp.write_text(json.dumps(RECIPE))
    return python


def _make_store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, fps=10.0) as st:
        for i, n in enumerate([40, 25, 33]):
            st.add_episode(
                {
                    "image.top": camera_frames(n, 96, 128, seed=i),
                    "image.wrist": camera_frames(n, 48, 64, seed=10 + i),
                    "state": rng.normal(size=(n, 6)).astype(np.float32),
                    "action": rng.normal(size=(n, 6)).astype(np.float32),
                    timing_key("top", "t_host"): np.arange(n) / 10.0 + 1e9,
                },
                {"task": "stack", "success": True},
            )
    return path


def test_diffusion_policy_replay_buffer_loads_our_export(tmp_path):
    source = _dp_source(tmp_path)
    python = _venv()
    (tmp_path / "reader.py").write_text(READER)
    store = _make_store(tmp_path / "src.zarr")
    export_store(store, tmp_path / "rb.zarr")
    export_store(store, tmp_path / "rb.zarr.zip")
    with EpisodeStore.open(store) as st:
        expect = st.read_steps(0, st.n_steps)
        lengths = [int(x) for x in st.episode_lengths]
    names = {"camera_top": "image.top", "camera_wrist": "image.wrist", "robot_joint": "state",
             "action": "action", "timing_top_t_host": timing_key("top", "t_host")}
    for path, mode in [("rb.zarr", "numpy"), ("rb.zarr", "memory"), ("rb.zarr.zip", "zip")]:
        out = tmp_path / f"read-{mode}"
        subprocess.run([str(python), str(tmp_path / "reader.py"), str(tmp_path / path), str(out), mode],
                       check=True, cwd=source.parent, timeout=300)
        info = json.loads(Path(f"{out}.json").read_text())
        assert info["zarr"].startswith("2.")
        assert info["n_episodes"] == 3 and info["episode_lengths"] == lengths
        assert info["episode_ends_dtype"] == "int64"
        with np.load(f"{out}.npz", allow_pickle=False) as got:
            assert sorted(got.files) == sorted(names)
            for name, key in names.items():
                assert got[name].dtype == expect[key].dtype, name
                np.testing.assert_array_equal(got[name], expect[key], err_msg=f"{mode}: {name}")
