"""Twin benchmark: physics steps/s per scene and render frames/s per camera and resolution.

Prints one JSON object. Baselines measured in the same run: MuJoCo's default render settings
(shadows, reflections, 4x multisampling) for the top camera, against the twin's settings.

    .venv/bin/python benchmarks/twin.py                      # ~30 s on 2 cores
    .venv/bin/python benchmarks/twin.py --success-episodes 100   # also the experts' success rates
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from tether.robot.config import RobotConfig  # noqa: E402
from tether.robot.twin import make_twin_robot  # noqa: E402
from tether.robot.twin.check import run_check  # noqa: E402
from tether.robot.twin.tasks import make_task  # noqa: E402

SCENES = {"so101": "lift", "aloha": "transfer_cube", "so101_insertion": "insertion"}
RESOLUTIONS = {"240x320": (240, 320), "480x640": (480, 640)}


def physics_rate(task: str, seconds: float) -> dict[str, float]:
    robot = make_twin_robot(RobotConfig(twin_task=task, fps=50, twin_params={"cameras": []}))
    with robot:
        robot.reset(0)
        n0, t0 = robot.sim.steps_total, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            robot.act(robot.home)
        wall = time.perf_counter() - t0
        steps = robot.sim.steps_total - n0
    return {
        "steps_per_s": steps / wall,
        "realtime_factor": steps * robot.sim.timestep / wall,
        "timestep_ms": robot.sim.timestep * 1e3,
    }


def render_rates(task: str, frames: int) -> dict[str, dict[str, float]]:
    """Render-only fps of each camera, and step+render 'sets/s' of all cameras together."""
    out: dict[str, dict[str, float]] = {}
    cameras = list(make_task(task).cameras)
    for label, (h, w) in RESOLUTIONS.items():
        robot = make_twin_robot(
            RobotConfig(
                twin_task=task, fps=50, twin_params={"cameras": cameras, "width": w, "height": h}
            )
        )
        with robot:
            robot.reset(0)
            for cam in robot.cameras.values():
                cam.renders, cam.render_s = 0, 0.0
            t0 = time.perf_counter()
            for _ in range(frames):
                robot.act(robot.home)
                robot.observe()
            wall = time.perf_counter() - t0
            res = {name: cam.renders / cam.render_s for name, cam in robot.cameras.items()}
            res["all_cameras_step_and_render_sets_per_s"] = frames / wall
        out[label] = res
    return out


def default_settings_baseline(task: str, frames: int) -> dict[str, float]:
    """The top camera at 240x320 with MuJoCo's defaults vs the twin's settings."""
    robot = make_twin_robot(RobotConfig(twin_task=task, fps=50, twin_params={"cameras": []}))
    model, data = robot.sim.model, robot.sim.data
    rates = {}
    for label, offsamples, flags in (("default", 4, True), ("twin", 0, False)):
        model.vis.quality.offsamples = offsamples
        model.vis.quality.shadowsize = 4096 if flags else 0
        renderer = mujoco.Renderer(model, 240, 320)
        try:
            t0 = time.perf_counter()
            for _ in range(frames):
                renderer.update_scene(data, camera="top")
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = flags
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = flags
                renderer.render()
            rates[label] = frames / (time.perf_counter() - t0)
        finally:
            renderer.close()
    # Same scene either way; the key light does not cast shadows, so the gap is mostly the
    # 4x multisampling and the reflection pass.
    return {
        "default_settings_fps": rates["default"],
        "twin_settings_fps": rates["twin"],
        "speedup": rates["twin"] / rates["default"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--physics-seconds", type=float, default=2.0)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--success-episodes", type=int, default=0)
    args = parser.parse_args()
    result: dict[str, object] = {
        "benchmark": "twin",
        "mujoco": mujoco.__version__,
        "gl": os.environ.get("MUJOCO_GL"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "physics": {scene: physics_rate(task, args.physics_seconds) for scene, task in SCENES.items()},
        "render_fps": {
            scene: render_rates(task, args.frames) for scene, task in SCENES.items()
            if scene != "so101_insertion"
        },
        "render_baseline_top_240x320": {
            scene: default_settings_baseline(task, args.frames)
            for scene, task in SCENES.items()
            if scene != "so101_insertion"
        },
    }
    if args.success_episodes:
        result["experts"] = {
            task: {
                k: v
                for k, v in run_check(task, args.success_episodes, render_probe_frames=1).items()
                if k in ("episodes", "success_rate", "failed_seeds", "control_steps_per_s",
                         "mean_episode_steps")
            }
            for task in ("lift", "insertion", "transfer_cube")
        }
    print(json.dumps(result, default=lambda x: float(np.asarray(x))))


if __name__ == "__main__":
    main()
