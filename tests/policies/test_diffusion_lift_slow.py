"""Slow: Diffusion Policy with the `diffusion_lift` recipe of benchmarks/learning.py (100 scripted
lift demos at 10 Hz, the `tiny` U-Net 32/64/128 with a width-16 ResNet-18 at 48x64, sample
prediction, batch 64, 4000 steps, 10 DDIM steps, whole 8-action chunks executed) lifts the cube
in >= 80% of 50 held-out episodes. The snapshot is chosen on other seeds (200000..) than the
ones reported (100000..). Measured 2026-12-03 on a quiet 2-core machine: 94% (47/50, 95% CI
84-98%) after 19 min of training (docs/policies.md, Learning results)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
def test_diffusion_recipe_reaches_80_percent_on_lift(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--recipes",
                    "diffusion_lift", "--out", str(tmp_path), "--snapshots", "4",
                    "--snapshot-episodes", "20", "--episodes", "50"], check=True)
    result = json.loads((tmp_path / "learning.json").read_text())["recipes"]["diffusion_lift"]
    print(json.dumps({k: result[k] for k in ("success_rate", "success_ci95", "train_s", "chosen")}))
    assert result["eval_episodes"] == 50
    assert result["success_rate"] >= 0.8, result
