"""The quality score on the twin: scripted lift takes mixed with takes by a deliberately worse
operator (tether.app.quality_mix: jitter, pauses, gripper chatter). The score must flag the bad
takes (precision and recall printed and asserted), `tether record` must score every take as it
is saved, and a base policy must add compatibility. The training comparison (filtered vs mixed
set, twin success) is benchmarks/quality_filter.py and the slow test at the end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app

pytest.importorskip("mujoco")


def cli(*args: str):
    result = CliRunner().invoke(build_app(), [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    from tether.app.quality_mix import mix_plan, record_mix

    plan = mix_plan(10, 6, ("jitter", "pause", "chatter"), seed=3)
    return record_mix(tmp_path_factory.mktemp("quality") / "mix.zarr", plan, fps=10.0, seed=0)


def test_the_score_flags_the_imperfect_takes(mix):
    from tether.app.quality import keep_episodes, rank_store
    from tether.app.quality_mix import detection
    from tether.data.store import EpisodeStore

    with EpisodeStore.open(mix.path) as store:
        reports = rank_store(store)
    found = detection(mix.truth, [bool(q["flags"]) for q in reports])
    print(json.dumps(found))
    assert found["precision"] >= 0.8 and found["recall"] >= 0.8, found
    for style, counts in found["per_style"].items():
        assert counts["flagged"] >= 1, (style, found)
    scores = np.array([q["score"] for q in reports])
    bad = np.array([t != "scripted" for t in mix.truth])
    assert scores[bad].mean() < scores[~bad].mean() - 0.2  # and the score ranks them low
    keep = keep_episodes(reports)
    assert sum(bad[keep]) <= 1 and len(keep) >= 8


def test_record_scores_each_take_and_train_reads_the_kept_list(tmp_path):
    out = tmp_path / "rec.zarr"
    result = cli("record", "--robot", "twin:lift", "--episodes", "6", "--fps", "10", "--out", out,
                 "--set", "twin_params.cameras=[]")
    assert result.output.count("quality ") >= 6, result.output
    from tether.data.store import EpisodeStore

    with EpisodeStore.open(out) as store:
        qualities = [store.episode_metadata(e)["quality"] for e in range(store.n_episodes)]
    assert all(0.0 <= q["score"] <= 1.0 and "smoothness" in q and "coverage" in q for q in qualities)
    assert qualities[0]["coverage"] == 1.0 and qualities[0]["reference_episodes"] == 0
    assert qualities[5]["reference_episodes"] == 5 and qualities[5]["consistency"] is not None
    keep = tmp_path / "keep.txt"
    cli("data", "quality", out, "--keep-out", keep)
    dry = cli("train", "--dataset", out, "--policy", "mlp", "--episodes-from", keep, "--dry-run")
    config = json.loads(dry.stdout)
    from tether.data.quality import read_episode_list

    assert config["episodes"] == read_episode_list(keep)


def test_a_base_policy_adds_compatibility(mix, tmp_path):
    """A small state-only MLP trained on the scripted takes: the takes by the worse operator
    agree with it less (compatibility), and `--base-policy` reports it per episode."""
    pytest.importorskip("torch")
    from tether.data.quality import write_episode_list

    good = [e for e, t in enumerate(mix.truth) if t == "scripted"]
    keep = write_episode_list(tmp_path / "good.txt", good)
    run = tmp_path / "base"
    cli("train", "--dataset", mix.path, "--policy", "mlp", "--preset", "tiny", "--steps", "150",
        "--episodes-from", keep, "--out", run, "--no-progress", "--threads", "1",
        "--set", "model.hidden_dim=64", "--set", "batch_size=32")
    result = cli("data", "quality", mix.path, "--base-policy", run, "--json")
    episodes = json.loads(result.stdout)["episodes"]
    compat = np.array([q["compatibility"] for q in episodes])
    bad = np.array([t != "scripted" for t in mix.truth])
    print(json.dumps({"compatibility_scripted": float(compat[~bad].mean()),
                      "compatibility_imperfect": float(compat[bad].mean())}))
    assert np.all((compat >= 0) & (compat <= 1))
    assert compat[bad].mean() < compat[~bad].mean()
    assert all(q["metrics"]["compatibility_steps"] > 0 for q in episodes)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_benchmark_flags_the_noisy_styles_at_full_size(tmp_path):
    """benchmarks/quality_filter.py without training: 60 scripted + 40 imperfect takes with a
    camera. Every jitter, pause and chatter take is flagged and no scripted take is."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "quality_filter.py"), "--out",
                          str(tmp_path), "--skip-train"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result["detection"]))
    found = result["detection"]
    assert found["precision"] >= 0.95, found
    for style in ("jitter", "pause", "chatter"):
        assert found["per_style"][style]["flagged"] == found["per_style"][style]["takes"], found
