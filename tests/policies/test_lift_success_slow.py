"""Slow: the `cpu` ACT preset, trained on 100 scripted twin demos, lifts the cube in >= 80% of 50
seeded held-out episodes (the same pipeline as `benchmarks/policies.py --lift`)."""

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_act_cpu_preset_reaches_80_percent_on_lift(tmp_path):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "policies.py"
    spec = importlib.util.spec_from_file_location("tether_policies_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.bench_lift(episodes=100, steps=5000, threads=1, workdir=str(tmp_path))
    print(result)
    assert result["eval_episodes"] == 50
    assert result["success_rate"] >= 0.8, result
