"""A full disk under the recorder: the episode is reported dropped, the store stays readable and
usable, and the recorder's background writer stops cleanly (no stuck episode, no traceback)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import zarr.storage._local as zarr_local

from tether.core.errors import StoreError
from tether.data.store import EpisodeStore
from tether.data.verify import verify_path
from tether.robot.interfaces import CameraSpec, Robot
from tether.robot.memory import MemoryArm, MemoryCamera, default_arm_spec
from tether.robot.targets import TeleopDevice
from tether.teleop.recorder import SAVED, Recorder

FPS = 30.0


class Still(TeleopDevice):
    def reset(self, seed=None) -> None:
        pass

    def next_target(self, observation):
        return None


def make_robot() -> Robot:
    arm = MemoryArm(default_arm_spec("left"))
    return Robot({"left": arm}, {"front": MemoryCamera(CameraSpec("front", 32, 24, FPS))},
                 fps=FPS, name="memory")


@pytest.fixture
def disk(monkeypatch):
    """Fail zarr's real file write with ENOSPC for paths containing `disk["full"]`."""
    state: dict[str, str | None] = {"full": None}
    real_put = zarr_local._put

    def put(file, value, exclusive: bool = False):
        if state["full"] and state["full"] in Path(file).as_posix():
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_put(file, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    return state


@pytest.mark.parametrize("where", ["meta/episode_ends", "data/image.front"])
def test_recorder_reports_dropped_episode_and_keeps_the_store(tmp_path, disk, where):
    path = tmp_path / "rec.zarr"
    robot = make_robot()
    with EpisodeStore.create(path, FPS) as store, robot:
        recorder = Recorder(robot, Still(), store, realtime=True, flush_every=2)
        assert recorder.record_episode(max_steps=6).outcome == SAVED
        disk["full"] = where
        with pytest.raises(StoreError, match="Disk full.*dropped; committed episodes are intact"):
            recorder.record_episode(max_steps=6)
        with EpisodeStore.open(path, "r") as reader:
            assert reader.n_episodes == 1 and not reader.recovery.damaged
        disk["full"] = None  # space freed: the same recorder and store go on
        result = recorder.record_episode(max_steps=6)
        assert result.outcome == SAVED and result.episode == 1
    report = verify_path(path)
    assert report.ok and report.episodes == 2
