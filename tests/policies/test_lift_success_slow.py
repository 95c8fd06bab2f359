"""Slow: ACT with the `cpu` preset, trained on 100 scripted twin demos at 10 Hz (the `tether demo`
recipe: 120x160 camera, 2200 steps), lifts the cube in >= 80% of 50 seeded held-out episodes,
evaluated through the policy server and the rollout client."""

import json

import pytest


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_act_cpu_recipe_reaches_80_percent_on_lift(tmp_path):
    from tether.app.eval.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=str(tmp_path / "demo"), eval_episodes=50))
    print(json.dumps({k: result[k] for k in ("success_rate", "success_ci95", "train_time_s",
                                             "timings_s")}))
    assert result["eval_episodes"] == 50
    assert result["success_rate"] >= 0.8, result
