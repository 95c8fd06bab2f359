"""Slow: Diffusion Policy with the `diffusion_lift` recipe of benchmarks/learning.py (50 scripted
lift demos at 10 Hz, U-Net 64/128/256, width-16 ResNet-18 at 60x80, sample prediction, 1600
steps, 10 DDIM steps, whole 8-action chunks executed) lifts the cube in >= 80% of 50 held-out
episodes. The snapshot is chosen on other seeds (200000..) than the ones reported (100000..)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
@pytest.mark.xfail(strict=False, reason="measured 2026-12-03: 68% (34/50, 95% CI 54-79%) with "
                   "1600 steps; the loss was still falling (docs/policies.md, Learning results)")
def test_diffusion_recipe_reaches_80_percent_on_lift(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--recipes",
                    "diffusion_lift", "--out", str(tmp_path), "--snapshots", "4",
                    "--snapshot-episodes", "20", "--episodes", "50"], check=True)
    result = json.loads((tmp_path / "learning.json").read_text())["recipes"]["diffusion_lift"]
    print(json.dumps({k: result[k] for k in ("success_rate", "success_ci95", "train_s", "chosen")}))
    assert result["eval_episodes"] == 50
    assert result["success_rate"] >= 0.8, result
