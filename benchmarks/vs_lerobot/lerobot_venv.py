"""The LeRobot 0.4.4 venv the benchmark measures against, built once beside tether's.

LeRobot pins torch<2.11; this registry's newest torch for it is 2.14.1 (with torchvision 0.29.1,
a CUDA build: ~6 GB). So: a fresh venv, that torch, `pip install --no-deps lerobot==0.4.4`, then
the runtime packages its policies, datasets and training step import, by hand (pip warns about
the torch pin; everything measured here works). Video goes through torchcodec 0.17.0, which
needs Debian's ffmpeg libraries. The recipe is the one `make lerobot-check` uses
(tests/data/test_lerobot_real_slow.py) plus what the policies and the training step need
(diffusers for the noise schedulers, accelerate for the training step).

The venv is at $TETHER_LEROBOT_VENV, default ~/.cache/tether/venvs/lerobot-0.4.4. A stamp
file holding the recipe marks it complete; a venv made by an older recipe is topped up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: pip install steps (arguments after `pip install -q`), in order.
RECIPE: list[list[str]] = [
    ["torch==2.14.1", "torchvision==0.29.1", "torchcodec==0.17.0"],
    ["--no-deps", "lerobot==0.4.4"],
    ["datasets>=4.0,<5", "huggingface-hub>=0.34.2,<0.36", "pandas", "pyarrow", "av>=15,<16",
     "packaging<26", "pillow", "draccus==0.10.0", "einops>=0.8,<0.9", "jsonlines", "termcolor",
     "deepdiff<9", "accelerate>=1.10,<2", "imageio", "numpy<2.3", "diffusers>=0.27.2,<0.36",
     "gymnasium>=1.1.1,<2", "opencv-python-headless>=4.9,<4.13", "pyserial>=3.5,<4",
     "setuptools>=71,<81", "torch==2.14.1", "torchvision==0.29.1"],
]
#: What the benchmark imports in that venv; all must import for it to count as ready.
PROBE = ("import lerobot, torchcodec, lerobot.datasets.lerobot_dataset, "
         "lerobot.policies.act.modeling_act, lerobot.policies.diffusion.modeling_diffusion, "
         "lerobot.scripts.lerobot_train")
STAMP = ".tether-bench-recipe"


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "tether" / "venvs" / "lerobot-0.4.4"
    return Path(os.environ.get("TETHER_LEROBOT_VENV", default))


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _recipe_digest() -> str:
    return hashlib.sha1(json.dumps([RECIPE, PROBE]).encode()).hexdigest()


def ensure(venv: Path | None = None, log=print) -> Path:
    """The venv's python, building or topping up the venv first when its stamp is stale.

    Raises RuntimeError naming the failing step (and the fix) when pip or the probe fails."""
    venv = venv_dir() if venv is None else venv
    python = python_of(venv)
    stamp = venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text().strip() == _recipe_digest():
        return python
    if shutil.which("ffmpeg") is None:
        log("warning: Debian ffmpeg is not installed; torchcodec needs its libraries "
            "(apt-get install ffmpeg; `make bench-lerobot` does it)")
    if not python.exists():
        log(f"building the LeRobot 0.4.4 venv in {venv} (a few minutes, ~6 GB)")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       timeout=300)
    else:
        log(f"topping up the LeRobot venv in {venv}")
    for step in RECIPE:
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *step],
                              capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise RuntimeError(f"pip install {' '.join(step)} failed in {venv}:\n"
                               f"{done.stderr[-3000:]}\nFix the registry access, or remove {venv} "
                               "and run again")
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=600,
                           env=side_env())
    if probe.returncode:
        raise RuntimeError(f"LeRobot does not import in {venv}:\n{probe.stderr[-3000:]}\n"
                           f"Remove {venv} and run again to rebuild it")
    stamp.write_text(_recipe_digest() + "\n")
    return python


def side_env(threads: int = 2) -> dict[str, str]:
    """Environment of a measuring process: offline hubs, fixed thread counts, no warnings."""
    venv = venv_dir()
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(venv / "hf_home"), "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"}
