"""Run a task's scripted expert for N seeded episodes and measure success and speed.

Shared by `tether twin check`, the slow tests and benchmarks/twin.py, so the success rate in
the issue note, the CLI and CI come from one code path.
"""

from __future__ import annotations

import time
from typing import Any

from tether.robot.config import RobotConfig
from tether.robot.twin.expert import ScriptedExpert
from tether.robot.twin.robot import TwinRobot, make_twin_robot


def run_episode(robot: TwinRobot, expert: ScriptedExpert, seed: int) -> bool:
    """One expert episode; True when the task's success held for its hold time."""
    observation = robot.reset(seed)
    expert.reset(seed)
    while not expert.episode_done:
        robot.act(expert.next_target(observation))
        observation = None  # the expert reads privileged state; skip building observations
    return robot.succeeded


def run_check(
    task: str,
    episodes: int,
    seed: int = 0,
    noise: float = 0.0,
    fps: float = 50.0,
    cameras: list[str] | None = None,
    render_probe_frames: int = 30,
) -> dict[str, Any]:
    """Success rate of the expert plus physics and render speed, as a JSON-ready dict."""
    robot = make_twin_robot(
        RobotConfig(twin_task=task, fps=fps, twin_params={"cameras": list(cameras or [])})
    )
    expert = ScriptedExpert(robot, noise=noise, seed=seed)
    successes, failed, steps = 0, [], 0
    physics0 = robot.sim.steps_total
    with robot:
        t0 = time.perf_counter()
        for i in range(episodes):
            ok = run_episode(robot, expert, seed + i)
            successes += ok
            steps += robot.steps
            if not ok:
                failed.append(seed + i)
        wall = time.perf_counter() - t0
        physics_steps = robot.sim.steps_total - physics0
        renders = sum(cam.renders for cam in robot.cameras.values())
        render_s = sum(cam.render_s for cam in robot.cameras.values())
    if not robot.cameras:
        renders, render_s = _render_probe(task, fps, render_probe_frames)
    return {
        "task": task,
        "episodes": episodes,
        "successes": successes,
        "success_rate": successes / episodes,
        "failed_seeds": failed,
        "noise": noise,
        "fps": fps,
        "mean_episode_steps": steps / episodes,
        "sim_steps_per_s": physics_steps / wall,
        "control_steps_per_s": steps / wall,
        "realtime_factor": physics_steps * robot.sim.timestep / wall,
        "render_fps": renders / render_s if render_s > 0 else 0.0,
        "render_cameras": list(robot.cameras) or ["top"],
        "wall_s": wall,
        "safety_counts": robot.safety_counts(),
    }


def _render_probe(task: str, fps: float, frames: int) -> tuple[int, float]:
    """Render the task's default camera for a few ticks (checks run physics-only otherwise)."""
    robot = make_twin_robot(RobotConfig(twin_task=task, fps=fps))
    with robot:
        for _ in range(frames):
            robot.act(robot.home)
        cams = list(robot.cameras.values())
        return sum(c.renders for c in cams), sum(c.render_s for c in cams)
