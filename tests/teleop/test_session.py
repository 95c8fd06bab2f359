"""Session conveniences of `tether record` (docs/recording.md, "Session"): take back the last
take (r during the reset countdown), resume into an existing store (--append), a task per take
(--tasks cycling), the operator's name, the reset countdown, and the terminal bell."""

from __future__ import annotations

import os
import threading

import pytest
from typer.testing import CliRunner

os.environ.setdefault("MUJOCO_GL", "egl")

from tether.cli import build_app  # noqa: E402
from tether.data.store import EpisodeStore  # noqa: E402
from tether.robot.factory import make_robot  # noqa: E402
from tether.robot.twin.expert import ScriptedExpert  # noqa: E402
from tether.teleop.recorder import SAVED, Recorder  # noqa: E402

runner = CliRunner()
TWIN = ["--robot", "twin:lift", "--set", "fps=10", "--set", "twin_params.cameras=[]"]


def _cli(*args: str):
    result = runner.invoke(build_app(), list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_r_in_the_countdown_takes_the_last_take_back_and_records_it_again(tmp_path):
    robot = make_robot("twin:lift", ["fps=10", "twin_params.cameras=[]"])
    with robot, EpisodeStore.create(tmp_path / "s.zarr", 10.0) as store:
        recorder = Recorder(robot, ScriptedExpert(robot), store, realtime=False)
        countdowns = []

        def status(s):  # the operator presses r during the first reset countdown only
            if s.get("phase") == "reset" and not countdowns:
                countdowns.append(s)
                threading.Thread(target=recorder.rerecord).start()

        recorder.on_status = status
        results = recorder.run(2, max_steps=15, reset_time_s=5.0, seed=7, tasks=["red", "blue"])
        assert [r.outcome for r in results] == [SAVED] * 3  # take 1, take 1 again, take 2
        assert store.n_episodes == 2
        metas = [store.episode_metadata(e) for e in range(2)]
        assert [m["seed"] for m in metas] == [7, 9]  # the retaken episode kept its seed
        assert [m["task"] for m in metas] == ["red", "blue"]
        assert countdowns and countdowns[0]["remaining_s"] > 4.0  # r ended the countdown early


def test_cli_tasks_operator_resume_and_bell(tmp_path):
    out = tmp_path / "d.zarr"
    first = _cli("record", *TWIN, "--teleop", "scripted", "--episodes", "2", "--episode-time", "0.8",
                 "--tasks", "pick red,pick blue", "--operator", "ana", "--out", str(out), "--bell")
    assert first.stderr.count("\a") == 4  # start and stop of each take
    quiet = _cli("record", *TWIN, "--teleop", "scripted", "--episodes", "1", "--episode-time", "0.8",
                 "--tasks", "pick red,pick blue", "--operator", "ben", "--out", str(out),
                 "--append", "--no-bell")
    assert "\a" not in quiet.stderr
    with EpisodeStore.open(out) as store:
        metas = [store.episode_metadata(e) for e in range(store.n_episodes)]
    assert [m["task"] for m in metas] == ["pick red", "pick blue", "pick red"]
    assert [m["operator"] for m in metas] == ["ana", "ana", "ben"]
    assert [m["seed"] for m in metas] == [0, 1, 2]  # resumed after the store's last seed


def test_bad_tasks_are_refused(tmp_path):
    result = runner.invoke(build_app(), ["record", *TWIN, "--teleop", "scripted", "--tasks", " , ",
                                         "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code != 0 and "--tasks" in result.output
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("flag", ["--bell", "--no-bell"])
def test_bell_option_in_help(flag):
    assert flag in runner.invoke(build_app(), ["record", "--help"]).output
