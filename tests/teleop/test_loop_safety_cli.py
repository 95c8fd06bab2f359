"""Control-loop safety through `tether teleop` / `tether record` on the twin: the stale-target
watchdog, the e-stop key, real time for people, and what `record` leaves on disk."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from tether.cli import build_app
from tether.data.store import EpisodeStore
from tether.robot.factory import make_robot
from tether.robot.targets import TeleopDevice
from tether.teleop.recorder import Recorder
from tether.teleop.recorder_keys import HELP, KeyboardControls, legend
from tether.teleop.recorder_view import PlainProgress

SMALL = ["--set", "twin_params.width=64", "--set", "twin_params.height=48"]
STALE_AFTER_S = 0.25  # SafetyConfig's default
runner = CliRunner()


def _tether(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, stdout and stderr piped (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "MUJOCO_GL": "egl", "COLUMNS": "200"},
    )


def _max_ticks_before_watchdog(fps: float) -> int:
    """Ticks without a target that may pass before the watchdog holds: stale_after_s, plus one
    tick (the twin's safety clock advances one period per tick)."""
    return math.floor(STALE_AFTER_S * fps) + 1


# --- the key legend ---------------------------------------------------------------------------


def test_the_key_legend_renders_its_brackets():
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(legend())
    text = out.getvalue()
    assert "[s]ave" in text and "[d]iscard" in text and "[r]e-record" in text
    assert "[q]uit" in text and "[e] E-STOP" in text and "[x] release" in text
    assert text.strip() == HELP


# --- the watchdog -----------------------------------------------------------------------------


@pytest.fixture
def leader_bus():
    pytest.importorskip("scservo_sdk")
    from tether.robot.emulators import FeetechBusEmulator

    with FeetechBusEmulator(list(range(1, 7))) as bus:
        yield bus


def _twin_with_leader(tmp_path, bus) -> str:
    """twin:lift without cameras, driven by a leader arm on an emulated Feetech bus."""
    spec = next(iter(make_robot("twin:lift", ["twin_params.cameras=[]"]).raw_arms.values())).spec
    motors = [{"name": n, "id": i + 1} for i, n in enumerate(spec.joint_names)]
    config = {
        "name": "twin-with-leader",
        "twin_task": "lift",
        "twin_params": {"cameras": []},
        "teleop": {"device": "leader", "params": {"leaders": [{
            "follower": spec.name, "driver": "feetech",
            "params": {"port": bus.port, "torque": False, "motors": motors,
                       "packet_timeout_ms": 50.0},
        }]}},
    }  # fmt: skip
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _unplug_later(bus, after_packets: int = 40) -> threading.Thread:
    """Once the leader has been read a while, every reply of its bus is garbage."""

    def unplug() -> None:
        deadline = time.monotonic() + 30
        while sum(bus.counts.values()) < after_packets and time.monotonic() < deadline:
            time.sleep(0.01)
        bus.corrupt_replies = 10**9

    thread = threading.Thread(target=unplug, daemon=True)
    thread.start()
    return thread


def test_teleop_holds_within_stale_after_s_when_the_leader_stops_answering(tmp_path, leader_bus):
    config = _twin_with_leader(tmp_path, leader_bus)
    cutter = _unplug_later(leader_bus)
    result = runner.invoke(build_app(), ["teleop", "--robot", config, "--duration", "3",
                                         "--json", "--no-keyboard"])  # fmt: skip
    cutter.join()
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["device_errors"] > 0 and report["holds"] >= report["device_errors"]
    watchdog = report["safety"].get("watchdog_hold", 0)
    assert watchdog > 0, report
    # every tick without a target after the first stale_after_s (+1 tick) was a watchdog hold
    assert report["holds"] - watchdog <= _max_ticks_before_watchdog(30.0), report


def test_record_holds_within_stale_after_s_when_the_leader_stops_answering(tmp_path, leader_bus):
    config = _twin_with_leader(tmp_path, leader_bus)
    out = tmp_path / "leader.zarr"
    cutter = _unplug_later(leader_bus)
    result = runner.invoke(build_app(), ["record", "--robot", config, "--out", str(out),
                                         "--episode-time", "2.5", "--no-keyboard"])  # fmt: skip
    cutter.join()
    assert result.exit_code == 0, result.output + repr(result.exception)
    with EpisodeStore.open(out) as store:
        meta = store.episode_metadata(0)
        actions = store.get_episode(0)["action"]
    assert meta["realtime"] is True  # a person's device: real time, on the twin too
    errors, watchdog = meta["stats"]["device_errors"], meta["stats"]["safety"]["watchdog_hold"]
    assert errors > 0 and watchdog > 0, meta["stats"]
    # The twin runs on wall-clock time here: one more tick of slack for the loop's start jitter.
    assert errors - watchdog <= _max_ticks_before_watchdog(store.fps) + 1, meta["stats"]
    np.testing.assert_array_equal(actions[-errors:], np.repeat(actions[-errors:][:1], errors, 0))


class _GoesSilent(TeleopDevice):
    """A new target every tick (a slow wave on every joint), none after `silent_after` calls.

    The wave depends on the call count only, never on the observation, so two ticks never ask
    for the same target (a sampler that returned a stale state twice would)."""

    def __init__(self, robot, silent_after: int) -> None:
        self.home, self.silent_after, self.calls = robot.home, silent_after, 0

    def next_target(self, observation):
        self.calls += 1
        if self.calls > self.silent_after:
            return None
        return self.home + 0.2 * np.sin(0.1 * self.calls)


def test_recorder_holds_and_records_the_hold_when_the_device_goes_silent(tmp_path):
    robot = make_robot("twin:lift", ["twin_params.cameras=[]"])
    device = _GoesSilent(robot, silent_after=10)
    with EpisodeStore.create(tmp_path / "s.zarr", robot.fps) as store, robot:
        Recorder(robot, device, store, realtime=False).record_episode(max_steps=40)
        actions = store.get_episode(0)["action"]
        safety = store.episode_metadata(0)["stats"]["safety"]
    silent = 40 - 10
    assert 0 < safety["watchdog_hold"] <= silent
    assert silent - safety["watchdog_hold"] <= _max_ticks_before_watchdog(robot.fps)
    np.testing.assert_array_equal(actions[10:], np.repeat(actions[9:10], silent, axis=0))


# --- real time for people, fast only for scripts on simulated robots --------------------------


def test_keyboard_teleop_records_in_real_time_on_the_twin(tmp_path):
    out = tmp_path / "k.zarr"
    result = _tether("record", "--robot", "twin:lift", "--teleop", "keyboard", "--out", str(out),
                     "--episode-time", "1", "--no-keyboard", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    with EpisodeStore.open(out) as store:
        meta = store.episode_metadata(0)
    assert meta["realtime"] is True
    # the loop ran for the wall-clock second it was asked to (fast mode takes a fraction of it;
    # the last period may be cut short when the loop ends)
    assert meta["stats"]["loop"]["duration_s"] >= 1.0 - 1.0 / meta["fps"]


def test_fast_mode_is_refused_for_people_and_for_real_time_robots(tmp_path):
    out = tmp_path / "f.zarr"
    result = runner.invoke(build_app(), ["record", "--teleop", "keyboard", "--fast", "--out",
                                         str(out)])  # fmt: skip
    assert result.exit_code == 2 and "only --teleop scripted" in result.output
    config = tmp_path / "memory.yaml"
    config.write_text(yaml.safe_dump({"name": "mem", "arms": [{"name": "main", "driver": "memory"}]}))
    result = runner.invoke(build_app(), ["record", "--robot", str(config), "--teleop", "scripted",
                                         "--fast", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2 and "--fast" in result.output and "real time" in result.output
    assert not out.exists()


# --- the e-stop key ---------------------------------------------------------------------------


def test_record_e_key_latches_the_estop_through_the_cli(tmp_path):
    out = tmp_path / "e.zarr"
    result = _tether("record", "--robot", "twin:lift", "--teleop", "scripted", "--fast",
                     "--keyboard", "--episode-time", "2", "--out", str(out), *SMALL,
                     stdin=b"e")  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "[s]ave" in err and "[e] E-STOP" in err and "E-STOP latched" in err
    with EpisodeStore.open(out) as store:
        actions = store.get_episode(0)["action"]
        held = store.episode_metadata(0)["stats"]["safety"]["estop_hold"]
    first = len(actions) - held  # latched until the end: every tick from the key on held
    assert 0 < held <= len(actions)
    np.testing.assert_array_equal(actions[first:], np.repeat(actions[max(first - 1, 0)][None],
                                                             held, axis=0))  # fmt: skip


def test_estop_key_latches_until_x_releases_it(tmp_path):
    robot = make_robot("twin:lift", ["twin_params.cameras=[]"])
    device = _GoesSilent(robot, silent_after=10**9)  # always moving
    read_fd, write_fd = os.pipe()

    def count(reason: str) -> int:
        return robot.safety_counts().get(reason, 0)

    def operator(recorder: Recorder) -> None:
        deadline = time.monotonic() + 30
        while recorder.status.get("steps", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(write_fd, b"e")
        while count("estop_hold") < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(write_fd, b"x")
        while recorder.estopped and time.monotonic() < deadline:
            time.sleep(0.01)
        released_at = recorder.status.get("steps", 0)
        while recorder.status.get("steps", 0) < released_at + 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        recorder.save()

    with EpisodeStore.create(tmp_path / "x.zarr", robot.fps) as store, robot:
        recorder = Recorder(robot, device, store, realtime=True)
        keys = KeyboardControls(recorder, fd=read_fd, robot=robot)
        keys.start()
        typist = threading.Thread(target=operator, args=(recorder,))
        typist.start()
        recorder.record_episode(duration_s=30)
        typist.join()
        keys.stop()
        actions = store.get_episode(0)["action"]
        held = store.episode_metadata(0)["stats"]["safety"]["estop_hold"]
    os.close(write_fd)
    os.close(read_fd)
    assert keys.actions == ["estop", "release"] and held >= 5
    moved = np.any(np.diff(actions, axis=0) != 0, axis=1)
    # one contiguous block of held ticks, with motion before it and after it
    still = np.flatnonzero(~moved)
    assert still.size >= held - 1 and np.all(np.diff(still) == 1), (still, held, moved)
    assert moved[: still[0]].any() and moved[still[-1] + 1 :].any(), (still, held, moved)


def test_teleop_e_key_latches_the_estop_through_the_cli():
    result = _tether("teleop", "--robot", "twin:lift", "--device", "scripted", "--duration", "1.5",
                     "--keyboard", "--json", "--set", "twin_params.cameras=[]",
                     stdin=b"e")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert "E-STOP latched" in result.stderr.decode()
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    # pressed before the loop started: (nearly) every tick held, none released
    assert report["safety"]["estop_hold"] >= report["loop"]["ticks"] // 2 > 0


# --- what record leaves on disk ---------------------------------------------------------------


def test_append_continues_the_seeds_instead_of_repeating_them(tmp_path):
    out = tmp_path / "a.zarr"
    args = ["record", "--robot", "twin:lift", "--teleop", "scripted", "--episode-time", "0.5",
            "--out", str(out), *SMALL]  # fmt: skip
    first = runner.invoke(build_app(), [*args, "--episodes", "2"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(build_app(), [*args, "--episodes", "1"])
    assert again.exit_code == 2
    assert "--append" in again.output and "--overwrite" in again.output
    assert "EpisodeStore" not in again.output
    more = runner.invoke(build_app(), [*args, "--episodes", "1", "--append"])
    assert more.exit_code == 0, more.output
    with EpisodeStore.open(out) as store:
        assert [store.episode_metadata(e)["seed"] for e in range(3)] == [0, 1, 2]
        assert not np.array_equal(store.get_episode(2)["state"], store.get_episode(0)["state"])


def test_a_robot_that_cannot_connect_leaves_no_store(tmp_path):
    out = tmp_path / "hw.zarr"
    config = tmp_path / "hw.yaml"
    config.write_text(yaml.safe_dump({
        "name": "hw",
        "arms": [{"name": "main", "driver": "feetech",
                  "params": {"port": str(tmp_path / "no-such-port"),
                             "motors": [{"name": "a", "id": 1}, {"name": "b", "id": 2}]}}],
        "teleop": {"device": "leader", "params": {"leaders": [
            {"follower": "main", "driver": "memory", "params": {"dof": 2}}]}},
    }))  # fmt: skip
    result = runner.invoke(build_app(), ["record", "--robot", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert not out.exists()
    retry = runner.invoke(build_app(), ["record", "--robot", str(config), "--out", str(out)])
    assert "already exists" not in retry.output


# --- progress when the output is not a terminal -----------------------------------------------


def test_record_prints_plain_progress_lines_when_piped(tmp_path):
    out = tmp_path / "p.zarr"
    result = _tether("record", "--robot", "twin:lift", "--teleop", "scripted", "--episodes", "2",
                     "--episode-time", "0.5", "--out", str(out), *SMALL)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "episode 0: saved" in err and "episode 1: saved" in err
    assert "\x1b[" not in err  # plain text, no terminal control codes


def test_plain_progress_is_rate_limited():
    now = [0.0]
    lines: list[str] = []
    progress = PlainProgress(3, write=lines.append, interval_s=5.0, clock=lambda: now[0])
    status = {"phase": "recording", "episode": "1/3", "elapsed_s": 0.0, "steps": 0, "fps": 30.0,
              "skew_ms": 0.0, "dropped": 0, "stalled": [], "backlog": 0}  # fmt: skip
    for i in range(100):  # 10 s of status updates every 0.1 s
        now[0] = i * 0.1
        progress.update({**status, "elapsed_s": now[0], "steps": 3 * i})
    assert 2 <= len(lines) <= 3 and all(line.startswith("recording episode 1/3") for line in lines)
    progress.update({**status, "estop": True})  # an e-stop is shown at once
    assert "E-STOP" in lines[-1]


@pytest.mark.parametrize("command", ["record", "teleop", "rollout"])
def test_every_control_command_documents_the_estop_keys(command):
    result = runner.invoke(build_app(), [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "e E-STOP" in text and "x release" in text


def test_keyboard_teleop_reads_the_estop_keys_on_its_own_terminal():
    from tether.teleop.keyboard import KeyboardParams, KeyboardTeleop, TerminalKeys

    robot = make_robot("twin:lift", ["twin_params.cameras=[]"])
    master, slave = os.openpty()
    try:
        teleop = KeyboardTeleop(robot, KeyboardParams(), keys=TerminalKeys(fd=slave))
        with robot, teleop:
            robot.reset(seed=0)
            os.write(master, b"e")
            robot.act(teleop.next_target(robot.observe()))
            assert all(arm.filter.estopped for arm in robot.arms.values())
            assert robot.safety_counts().get("estop_hold", 0) == 1
            os.write(master, b"x")
            teleop.next_target(robot.observe())
            assert not any(arm.filter.estopped for arm in robot.arms.values())
    finally:
        os.close(master)
        os.close(slave)
