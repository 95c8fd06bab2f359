"""Regression: `tether demo` records and evaluates at the speed its recipe was tuned at.

Commit 1c48fe4 turned the safety layer's per-tick step limit (0.05 per tick: 0.5 rad/s at the
demo's 10 Hz) into a per-second limit, 3 rad/s on the twin. The scripted expert still succeeded
every time, so no fast test noticed, but its lift demonstrations changed: ~35 decisions with
steps of up to 0.24 per action instead of ~46 smooth ones of at most 0.05, and the demo's ACT
recipe fell from ~90% to ~50% success. These checks look at that cause directly, in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from tether.app.eval.config import EvalConfig
from tether.app.eval.demo import DemoConfig, collect
from tether.app.eval.records import EpisodeRecord
from tether.app.eval.runner import evaluate
from tether.core.errors import ConfigError
from tether.data.store import EpisodeStore


def _recipe(tmp_path, **changes) -> DemoConfig:
    return DemoConfig(out=str(tmp_path / "demo"), **changes)


def test_demo_records_at_the_recipe_speed(tmp_path):
    config = _recipe(tmp_path, demos=3)
    dataset = tmp_path / "data.zarr"
    stats = collect(config, dataset, Console(quiet=True))
    assert stats["success_rate"] == 1.0

    assert config.max_velocity is not None, "the recipe sets the twin's speed explicitly"
    step = config.max_velocity / config.fps  # the most one recorded action may move, per joint
    with EpisodeStore.open(dataset) as store:
        for episode in range(store.n_episodes):
            actions = store.get_episode(episode, ["action"])["action"]
            moved = np.abs(np.diff(actions, axis=0)).max()
            assert moved <= step + 1e-5, (episode, moved)
            # The recipe's ~46 decisions per episode (3 rad/s gives 35 on every seed).
            assert 40 <= len(actions) <= 60, (episode, len(actions))
            # The recorded action is the command the arms executed: the limit binds in the record.
            rate_limited = store.episode_metadata(episode)["stats"]["safety"].get("rate_limited", 0)
            assert rate_limited > 0, store.episode_metadata(episode)["stats"]["safety"]


def test_demo_evaluates_on_a_twin_at_the_recording_speed(tmp_path):
    config = _recipe(tmp_path)
    assert config.speed_overrides(), "the recipe sets the twin's speed explicitly"
    assert set(config.speed_overrides()) <= set(config.record_overrides())
    assert config.eval_config("tcp://127.0.0.1:5555").robot == config.speed_overrides()

    # The evaluation twin (built by the eval worker from EvalConfig.robot) applies the limit:
    # the scripted expert evaluated there moves at most max_velocity / fps per tick.
    out = tmp_path / "report"
    evaluate(EvalConfig(task="lift", policy="scripted", episodes=1, workers=0, seed=100_000,
                        out=str(out), videos=0,
                        robot=[f"fps={config.fps:g}", "twin_params.cameras=[]",
                               *config.eval_config("tcp://127.0.0.1:5555").robot]),
             show_progress=False)
    (record_json,) = sorted((out / "episodes").glob("*.json"))
    actions = EpisodeRecord.load(record_json).actions
    assert np.abs(np.diff(actions, axis=0)).max() <= config.max_velocity / config.fps + 1e-5


def test_demo_records_the_cameras_and_per_joint_speeds_it_is_given(tmp_path):
    """`DemoConfig.cameras` picks the twin's views (the learning benchmark records transfer_cube
    through the narrow `workspace` camera); a name the task lacks is refused by the twin.

    A list `max_velocity` limits each joint on its own, as the benchmark's transfer_cube recipe
    does: joints at 1 rad/s, the gripper at 10/s so the recorded close is the expert's own rather
    than a ramp trailing the fingers (a single number would hold the gripper to 1/s as well)."""
    config = _recipe(tmp_path, task="transfer_cube", demos=1, max_velocity=[1.0] * 6 + [10.0],
                     cameras=["workspace"], camera_height=48, camera_width=64)
    assert config.speed_overrides() == ["safety.max_velocity=[1,1,1,1,1,1,10]"]
    dataset = tmp_path / "transfer.zarr"
    collect(config, dataset, Console(quiet=True))
    with EpisodeStore.open(dataset) as store:
        assert [k for k in store.keys if k.startswith("image.")] == ["image.workspace"]
        assert store.get_episode(0, ["image.workspace"])["image.workspace"].shape[1:] == (48, 64, 3)
        moved = np.abs(np.diff(store.get_episode(0, ["action"])["action"], axis=0)).max(axis=0)
    grippers = [6, 13]  # each ViperX: 6 joints, then its gripper
    joints = np.delete(moved, grippers)
    assert joints.max() <= 1.0 / config.fps + 1e-5, joints
    assert moved[grippers].max() > 1.5 / config.fps, moved[grippers]  # faster than the joints may go
    lift = _recipe(tmp_path, task="lift", demos=1, cameras=["workspace"])
    with pytest.raises(ConfigError, match="Task 'lift' has no camera 'workspace'"):
        collect(lift, tmp_path / "lift.zarr", Console(quiet=True))


def test_demo_records_and_evaluates_under_one_object_yaw_distribution(tmp_path):
    """`yaw_randomization` (the ACT paper's position-only distribution at 0) shapes the data, so
    the recording twin and the evaluation twin must both get it; the default full range adds
    nothing to the overrides."""
    from tether.robot.factory import make_robot

    assert _recipe(tmp_path).task_overrides() == _recipe(tmp_path).speed_overrides()
    config = _recipe(tmp_path, task="transfer_cube", yaw_randomization=0.0,
                     max_velocity=[1.0] * 6 + [10.0])
    assert "twin_params.yaw_randomization=0" in config.task_overrides()
    assert set(config.task_overrides()) <= set(config.record_overrides())
    assert config.eval_config("tcp://127.0.0.1:5555").robot == config.task_overrides()
    for overrides in (config.record_overrides(), config.eval_config("tcp://127.0.0.1:5555").robot):
        robot = make_robot("twin:transfer_cube", [*overrides, "twin_params.cameras=[]"])
        robot.reset(5)
        np.testing.assert_allclose(robot.privileged_state()["cube_quat"], [1, 0, 0, 0], atol=1e-9)
