"""The quality metrics on arrays whose faults we built (tether.data.quality, pure numpy), the
episode-list files, and `tether data quality` on a synthetic store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app
from tether.core.errors import ConfigError
from tether.data.quality import (
    QualityConfig,
    Reference,
    episode_quality,
    read_episode_list,
    smoothness,
    store_quality,
    write_episode_list,
)
from tether.data.store import EpisodeStore

FPS = 10.0


def take(seed: int, *, jitter: float = 0.0, pause_s: float = 0.0, chatter: bool = False,
         other: bool = False) -> dict[str, np.ndarray]:
    """A smooth 4 s reach (3 joints + gripper that closes once), optionally spoiled."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, 40)
    s = t * t * (3 - 2 * t)
    goal = np.array([0.8, -0.5, 0.3]) + rng.uniform(-0.05, 0.05, 3)
    if other:
        goal = goal * np.array([-1.0, 1.0, -1.0])  # another way to the same place
    arm = s[:, None] * goal
    grip = np.where(t < 0.6, 1.0, 0.0)[:, None]
    action = np.concatenate([arm, grip], axis=1)
    if pause_s:
        stop = int(pause_s * FPS)
        action = np.concatenate([action[:15], np.repeat(action[15:16], stop, 0), action[15:]])
    if jitter:
        action[:, :3] += rng.normal(0.0, jitter, action[:, :3].shape)
    if chatter:
        action[5:20:2, 3] = 0.3
    state = np.concatenate([action[:1], action[:-1]])  # the arm follows one tick behind
    return {"state": state.astype(np.float32), "action": action.astype(np.float32)}


def test_a_smooth_take_scores_high_and_is_not_flagged():
    ep = take(0)
    q = smoothness(ep["action"], ep["state"], FPS, gripper_dims=[3])
    assert q["flags"] == [] and q["score"] > 0.8
    assert q["metrics"]["gripper_reversals"] == 0 and q["metrics"]["longest_pause_s"] < 0.5


@pytest.mark.parametrize("fault, flag", [
    ({"jitter": 0.05}, "jerky"), ({"pause_s": 2.0}, "pauses"), ({"chatter": True}, "gripper_chatter")])
def test_each_fault_is_flagged_with_a_reason(fault, flag):
    ep = take(1, **fault)
    q = smoothness(ep["action"], ep["state"], FPS, gripper_dims=[3])
    assert q["flags"] == [flag]
    assert len(q["reasons"]) == 1 and q["score"] < 0.5
    smooth = smoothness(take(1)["action"], take(1)["state"], FPS, gripper_dims=[3])["score"]
    assert q["score"] < smooth


def test_pauses_at_the_start_and_the_final_hold_are_normal():
    ep = take(2)
    hold = np.repeat(ep["action"][-1:], 30, 0)
    wait = np.repeat(ep["action"][:1], 30, 0)
    action = np.concatenate([wait, ep["action"], hold])
    state = np.concatenate([action[:1], action[:-1]])
    assert smoothness(action, state, FPS, [3])["flags"] == []


def test_consistency_and_coverage_against_other_takes():
    takes = [take(s) for s in range(8)]
    ref = Reference(4, 4)
    for e, ep in enumerate(takes):
        ref.add(e, ep["state"], ep["action"])
    usual = episode_quality(takes[0]["state"], takes[0]["action"], FPS, ref, episode=0, gripper_dims=[3])
    assert usual["flags"] == [] and usual["consistency"] > 0.5 and usual["coverage"] < 0.5
    odd = take(99, other=True)
    novel = episode_quality(odd["state"], odd["action"], FPS, ref, gripper_dims=[3])
    assert novel["coverage"] > usual["coverage"]  # new states are coverage, not a fault
    assert 0.0 <= novel["score"] <= 1.0
    first = episode_quality(takes[0]["state"], takes[0]["action"], FPS, None, gripper_dims=[3])
    assert first["coverage"] == 1.0 and first["consistency"] is None  # nothing to compare with


def test_compatibility_enters_the_score_and_its_flags():
    ep = take(3)
    compat = {"score": 0.1, "metrics": {"action_error": 2.0}, "flags": ["low_compatibility"],
              "reasons": ["low compatibility with the base policy"]}
    q = episode_quality(ep["state"], ep["action"], FPS, None, gripper_dims=[3], compatibility=compat)
    assert q["compatibility"] == 0.1 and "low_compatibility" in q["flags"]
    assert q["metrics"]["compatibility_action_error"] == 2.0
    assert q["score"] < episode_quality(ep["state"], ep["action"], FPS, None, gripper_dims=[3])["score"]


def test_episode_lists_round_trip_and_refuse_garbage(tmp_path):
    path = write_episode_list(tmp_path / "keep.txt", [3, 0, 7], "kept by a test")
    assert path.read_text().startswith("# kept by a test")
    assert read_episode_list(path) == [0, 3, 7]
    (tmp_path / "bad.txt").write_text("1\ntwo\n")
    with pytest.raises(ConfigError, match="bad.txt:2: 'two'"):
        read_episode_list(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="names no episodes"):
        read_episode_list(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        read_episode_list(tmp_path / "missing.txt")


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "mix.zarr"
    faults = [{}, {}, {"jitter": 0.05}, {}, {}, {"pause_s": 2.0}, {}, {}, {}, {}]
    with EpisodeStore.create(path, FPS) as store:
        for seed, fault in enumerate(faults):
            store.add_episode(take(seed, **fault), {"operator": "bad" if fault else "good"})
    return path


def test_store_quality_ranks_the_spoiled_takes_last(store_path):
    with EpisodeStore.open(store_path) as store:
        reports = store_quality(store, gripper_dims=[3], config=QualityConfig())
    flagged = [e for e, q in enumerate(reports) if q["flags"]]
    assert flagged == [2, 5]
    order = sorted(range(len(reports)), key=lambda e: reports[e]["score"])
    assert set(order[:2]) == {2, 5}


def test_cli_ranks_writes_the_keep_list_and_saves(store_path, tmp_path):
    keep = tmp_path / "keep.txt"
    result = CliRunner().invoke(build_app(), ["data", "quality", str(store_path), "--keep-out",
                                              str(keep), "--save", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["episodes"]) == 10 and report["kept"] == read_episode_list(keep)
    assert 2 not in report["kept"] and 5 not in report["kept"]
    with EpisodeStore.open(store_path) as store:
        saved = store.episode_metadata(2)["quality"]
        assert saved["flags"] and 0.0 <= saved["score"] <= 1.0
        assert store.episode_metadata(2)["operator"] == "bad"  # the rest of the metadata is kept
    table = CliRunner().invoke(build_app(), ["data", "quality", str(store_path)])
    assert table.exit_code == 0 and "flagged" in table.output and "episode 2:" in table.output
