"""Record real episodes from the MuJoCo twin with its scripted expert, through the CLI too."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import build_app
from tether.core.errors import DeviceError
from tether.data.dataset import EpisodeDataset
from tether.data.store import EpisodeStore
from tether.robot.factory import make_robot
from tether.robot.targets import TeleopDevice
from tether.robot.twin.expert import ScriptedExpert
from tether.robot.twin.robot import TWIN_MAX_VELOCITY
from tether.teleop.factory import make_teleop
from tether.teleop.recorder import SAVED, Recorder


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("twin") / "lift.zarr"
    robot = make_robot("twin:lift", ["twin_params.width=160", "twin_params.height=120"])
    expert = make_teleop("scripted", robot)
    with EpisodeStore.create(path, robot.fps) as store, robot:
        results = Recorder(robot, expert, store, realtime=False, task="lift").run(2, max_steps=300)
    return path, results


def test_twin_episodes_are_recorded_with_sync_stats(twin_store):
    path, results = twin_store
    assert [r.outcome for r in results] == [SAVED, SAVED]
    with EpisodeStore.open(path) as store:
        assert store.n_episodes == 2
        for e in range(2):
            meta = store.episode_metadata(e)
            assert meta["success"] is True and meta["task"] == "lift" and meta["seed"] == e
            sync = meta["stats"]["sync"]
            assert sync["skew_p99_ms"] <= 500.0 / store.fps  # within half a frame period
            assert sync["cameras"]["top"]["dropped"] == 0
            assert sync["cameras"]["top"]["duplicated"] == 0
            ep = store.get_episode(e)
            n = len(ep["state"])
            assert 30 < n <= 300
            np.testing.assert_allclose(ep["timestamp"], np.arange(n) / store.fps)
            # simulated capture times: every stream sampled at the tick's simulated time
            timing = store.timing(e)
            np.testing.assert_allclose(timing["image.top"]["t_host"], timing["state.arm"]["t_host"],
                                       atol=1e-9)
            assert np.all(np.diff(timing["image.top"]["t_host"]) > 0)
            np.testing.assert_array_equal(np.diff(timing["image.top"]["index"]), 1)
            assert ep["image.top"].shape == (n, 120, 160, 3) and ep["image.top"].std() > 5
            # the safety layer's velocity limit, per simulated second
            assert np.all(np.abs(np.diff(ep["action"], axis=0)) <= TWIN_MAX_VELOCITY / store.fps + 1e-6)
        first, second = store.get_episode(0)["state"], store.get_episode(1)["state"]
        assert len(first) != len(second) or not np.allclose(first, second)  # different seeds


def test_twin_store_feeds_the_training_dataset(twin_store):
    path, _ = twin_store
    ds = EpisodeDataset(path, obs_horizon=2, action_horizon=8)
    item = ds[0]
    assert item["image.top"].shape == (2, 3, 120, 160)
    assert item["obs_is_pad"].tolist() == [True, False]
    assert item["action"].shape == (8, 6)


class _FlakyExpert(TeleopDevice):
    """The scripted expert behind a device that gives no target every 4th tick and fails its
    read every 7th (holds), noting the simulated time of every observation it is shown."""

    def __init__(self, robot) -> None:
        self.inner = ScriptedExpert(robot)
        self.times: list[float] = []

    def reset(self, seed: int | None = None) -> None:
        self.inner.reset(seed)
        self.times.clear()

    @property
    def episode_done(self) -> bool:
        return self.inner.episode_done

    def next_target(self, observation):
        self.times.append(observation.joints["arm"].t_device)
        n = len(self.times)
        if n % 7 == 0:
            raise DeviceError("the bus timed out")
        return None if n % 4 == 0 else self.inner.next_target(observation)


def test_lockstep_recording_writes_one_control_period_per_row_holds_included(tmp_path):
    """Every recorded row is exactly one control period of the twin's simulated time, rows
    where the device gave no target or failed included: no tick advances the twin twice."""
    robot = make_robot("twin:lift", ["twin_params.width=64", "twin_params.height=48"])
    device = _FlakyExpert(robot)
    steps = 40
    with EpisodeStore.create(tmp_path / "holds.zarr", robot.fps) as store, robot:
        result = Recorder(robot, device, store, realtime=False).record_episode(max_steps=steps)
        assert result.outcome == SAVED and result.steps == steps
        assert robot.steps == steps and robot.sim_time == pytest.approx(steps / robot.fps, abs=1e-9)
        assert store.n_episodes == 1 and store.n_steps == steps  # one row per tick
        assert result.stats["device_errors"] == steps // 7
    assert len(device.times) == steps  # one observation per row
    np.testing.assert_allclose(np.diff(device.times), 1.0 / robot.fps, rtol=0, atol=1e-9)


def test_record_and_inspect_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.zarr"
    result = runner.invoke(build_app(), [
        "record", "--robot", "twin:lift", "--teleop", "scripted", "--episodes", "1", "--out",
        str(out), "--episode-time", "4", "--set", "twin_params.width=96",
        "--set", "twin_params.height=72", "--task", "lift the cube",
    ])
    assert result.exit_code == 0, result.output
    assert "twin_task: lift" in (out / "robot_config.yaml").read_text()
    result = runner.invoke(build_app(), ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["episodes"] == 1 and summary["fps"] == 30.0
    assert summary["per_episode"][0]["task"] == "lift the cube"
    assert summary["per_episode"][0]["dropped"] == {"top": 0}
    with EpisodeStore.open(out) as store:
        assert store.attrs["robot_config"]["twin_task"] == "lift"
        assert store.meta_attrs["stats"]["n_steps"] == store.n_steps  # stats saved at the end
    image = next(s for s in summary["streams"] if s["key"] == "image.top")
    assert image["codec"] == "h264" and image["raw_bytes"] > 3 * image["disk_bytes"]  # the default
    again = runner.invoke(build_app(), ["record", "--out", str(out), "--episodes", "1"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_offline_recording_waits_for_a_slow_disk_instead_of_queueing(tmp_path, monkeypatch):
    """Offline (scripted demos, nobody at the arm) the loop runs as fast as the twin steps; a
    disk slower than that used to fill the writer's queue and warn "the disk is falling behind"
    as if an operator's take were at risk. Now the loop waits: nothing queued past 2 s of ticks,
    no warning, every tick stored."""
    import time

    from tether.data import writer as writer_module

    append = writer_module.EpisodeWriter.append

    def slow_append(self, step):  # a disk that takes 15 ms per tick
        time.sleep(0.015)
        return append(self, step)

    monkeypatch.setattr(writer_module.EpisodeWriter, "append", slow_append)
    robot = make_robot("twin:lift", ["twin_params.width=64", "twin_params.height=48"])
    expert = make_teleop("scripted", robot)
    with EpisodeStore.create(tmp_path / "slow.zarr", robot.fps) as store, robot:
        recorder = Recorder(robot, expert, store, realtime=False, task="lift")
        (result,) = recorder.run(1, max_steps=120)
        assert result.outcome == SAVED
        meta = store.episode_metadata(0)
        assert meta["stats"]["writer"]["max_backlog"] <= 2 * robot.fps
        assert not [w for w in recorder.warnings if "falling behind" in w], recorder.warnings
        assert len(store.get_episode(0, ["action"])["action"]) == result.steps


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the point
def test_offline_recording_stops_with_an_error_when_the_writer_thread_dies(tmp_path, monkeypatch):
    """The bounded offline queue must not wait forever on a writer that died of something the
    writer does not expect (not a StoreError or OSError): the take ends with a StoreError naming
    it, and the store keeps no half episode."""
    from tether.core.errors import StoreError
    from tether.data import writer as writer_module

    def broken_append(self, step):
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(writer_module.EpisodeWriter, "append", broken_append)
    robot = make_robot("twin:lift", ["twin_params.width=64", "twin_params.height=48"])
    expert = make_teleop("scripted", robot)
    with EpisodeStore.create(tmp_path / "broken.zarr", robot.fps) as store, robot:
        recorder = Recorder(robot, expert, store, realtime=False, task="lift")
        with pytest.raises(StoreError, match="writer thread stopped"):
            recorder.record_episode(max_steps=300)
        assert store.n_episodes == 0
