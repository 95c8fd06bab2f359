"""`tether record` with a hardware config: the config's teleop section drives the session.

The SO-101 + leader config records through emulated Feetech buses (the real SDK on a pty) and a
video-file camera, with only ports and camera sources changed: the path a lab takes with real
hardware, minus the hardware.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml
from typer.testing import CliRunner

from tether.cli import build_app
from tether.core.config import load_mapping
from tether.data.store import EpisodeStore
from tether.robot.emulators import FeetechBusEmulator

ROOT = Path(__file__).resolve().parents[2]


def test_record_so101_leader_config_on_emulated_buses(tmp_path, check_tick_accounting):
    video = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()

    data = load_mapping(ROOT / "configs" / "so101_leader.yaml")
    follower = {m["id"]: m.get("model", "sts3215") for m in data["arms"][0]["params"]["motors"]}
    leader_params = data["teleop"]["params"]["leaders"][0]["params"]
    leader = {m["id"]: m.get("model", "sts3215") for m in leader_params["motors"]}
    with FeetechBusEmulator(follower) as follower_bus, FeetechBusEmulator(leader) as leader_bus:
        data["arms"][0]["params"].update(port=follower_bus.port, packet_timeout_ms=400.0)
        leader_params.update(port=leader_bus.port, packet_timeout_ms=400.0)
        for cam in data["cameras"]:
            cam.update(width=64, height=48, params={"source": str(video)})
        config_path = tmp_path / "so101.yaml"
        config_path.write_text(yaml.safe_dump(data))
        out = tmp_path / "so101.zarr"
        result = CliRunner().invoke(build_app(), [
            "record", "--robot", str(config_path), "--episodes", "1", "--episode-time", "1.0",
            "--no-keyboard", "--out", str(out),
        ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    store = EpisodeStore.open(out)
    assert store.n_episodes == 1
    episode = store.get_episode(0)
    assert episode["state"].shape[1] == episode["action"].shape[1] == 6
    loop = store.episode_metadata(0)["stats"]["loop"]
    assert episode["state"].shape[0] == loop["ticks"] >= 1  # every executed tick was recorded
    assert loop["target_hz"] == 30 and loop["duration_s"] >= 0.95  # the 1 s episode, paced
    check_tick_accounting(loop)  # ticks a loaded host lost are counted as skipped, not missing
    assert any(k.startswith("image.") for k in episode)


def test_record_without_any_teleop_device_names_the_fix(tmp_path):
    config = tmp_path / "memory.yaml"
    config.write_text("name: bench\narms:\n  - {name: a, driver: memory}\n")
    result = CliRunner().invoke(build_app(), ["record", "--robot", str(config), "--out",
                                              str(tmp_path / "x.zarr"), "--no-keyboard"])
    assert result.exit_code == 2
    assert "No teleop device" in result.output and "teleop.device" in result.output
