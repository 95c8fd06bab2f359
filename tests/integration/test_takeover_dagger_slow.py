"""One round of takeover corrections on the twin, end to end through the CLI (slow).

Runs benchmarks/takeover_dagger.py: scripted lift demos, an mlp `tiny` policy trained on them
(deliberately under-trained), rollouts on new seeds where the scripted operator takes over
when the cube drifts or after 3 s without success (`tether rollout --takeover scripted
--record`), then the same training (steps, seed) on demos + corrections, all steps and
HG-DAgger style (policy steps dropped). Every policy is evaluated on the same held-out seeds.

What holds: the operator takes over, the corrections are recorded with their flags, the
handovers stay within their speed limit. What does not hold yet at these sizes: the success
rate rising beyond the evaluation's noise (measured numbers in docs/rollout.md, "Takeover");
that check is an expected failure until a recipe shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mujoco")

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--demos", "8", "--corrections", "16", "--steps", "2000", "--eval", "30", "--seeds", "0"]


@pytest.fixture(scope="module")
def dagger_round(tmp_path_factory):
    out = tmp_path_factory.mktemp("dagger")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "takeover_dagger.py"), *ARGS, "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=3500,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)["runs"]["0"]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_operator_corrects_and_the_corrections_are_recorded(dagger_round):
    rollouts = dagger_round["rollouts"]
    assert rollouts["took_over"] >= rollouts["episodes"] // 2 and rollouts["intervention_steps"] > 0
    assert rollouts["success_with_takeover"] >= rollouts["episodes"] * 3 // 4
    assert rollouts["handover_peak_speed_max"] <= 0.25 + 1e-4


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.xfail(reason="one round of 16 corrections does not yet raise the success rate beyond "
                          "the noise of 30 evaluation episodes (docs/rollout.md, Takeover)",
                   strict=False)
def test_one_round_of_corrections_beats_the_under_trained_policy(dagger_round):
    base = dagger_round["base"]["success_rate"]
    corrected = max(dagger_round["all"]["success_rate"], dagger_round["hg-dagger"]["success_rate"])
    assert corrected >= base + 0.15, dagger_round
