"""Slow: ACT with the `act_transfer_cube` recipe of benchmarks/learning.py (50 scripted demos of
the bimanual ALOHA-layout transfer at 10 Hz, the narrow 96x128 `workspace` camera fed at 72x96,
`cpu` preset, 4000 steps, temporal ensembling with m = 0.01 as in the ACT paper, the paper's
position-only cube placement) hands the cube over in >= 80% of 50 held-out episodes (the paper's
90% is the benchmark's target). Measured 2026-12-03: 98% (49/50, 95% CI 90-99.6%), 31 min."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_act_recipe_reaches_80_percent_on_transfer_cube(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--recipes",
                    "act_transfer_cube", "--out", str(tmp_path), "--snapshots", "4",
                    "--snapshot-episodes", "20", "--episodes", "50"], check=True)
    result = json.loads((tmp_path / "learning.json").read_text())["recipes"]["act_transfer_cube"]
    print(json.dumps({k: result[k] for k in ("success_rate", "success_ci95", "train_s", "chosen")}))
    assert result["eval_episodes"] == 50
    assert result["success_rate"] >= 0.8, result
