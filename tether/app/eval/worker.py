"""One evaluation worker: run a list of seeded twin episodes and write each one to disk.

Started by tether.app.eval.runner as `python -m tether.app.eval.worker spec.json`. Every policy source
goes through the same `tether.app.rollout.run_episode` used on hardware: a checkpoint loaded
in this process, a policy server reached over ZMQ, or the twin's scripted expert wrapped as a
one-action-per-chunk policy (the sanity baseline a trained policy should approach).

An episode that raises stops the worker with `EpisodeFailed`, which names the seed and the
original exception's type and message; `main` writes that to the spec's `error_file` so the
parent reports the real cause instead of "a worker failed".
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tether.app.eval.config import EvalConfig
from tether.app.eval.records import EpisodeRecord
from tether.core.errors import ConfigError, TetherError
from tether.core.schema import ArraySpec, PolicySpec, camera_of, is_image_key
from tether.policies.base import Policy

log = logging.getLogger(__name__)


class EpisodeFailed(TetherError):
    """An evaluation episode raised; the message is the original error's, naming the seed."""

    def __init__(self, seed: int | None, error: BaseException) -> None:
        where = f"seed {seed}" if seed is not None else "outside an episode"
        super().__init__(f"{where}: {type(error).__name__}: {error}")
        self.seed = seed
        self.error_type = type(error).__name__
        self.error_message = str(error)

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "type": self.error_type, "message": self.error_message,
                "text": str(self)}  # fmt: skip


class ExpertPolicy(Policy):
    """The twin's scripted expert behind the Policy interface (it reads privileged sim state)."""

    def __init__(self, robot, noise: float = 0.0) -> None:
        super().__init__()
        from tether.robot.twin.expert import ScriptedExpert

        self.expert = ScriptedExpert(robot, noise=noise)
        self.spec = PolicySpec(
            policy_type="scripted",
            observation=(ArraySpec("state", "float32", (int(robot.state_dim),)),),
            action_dim=int(robot.action_dim),
            chunk_size=1,
            fps=float(robot.fps),
        )

    def reset(self) -> None:
        self.expert.reset(None)

    def _predict_chunk(self, observation: dict[str, np.ndarray], **options) -> np.ndarray:
        return self.expert.next_target(None)[None, :]


def run_worker(spec: dict[str, Any]) -> None:
    from tether.robot.factory import make_robot

    config = EvalConfig(**spec["config"])
    out = Path(spec["out"])
    if config.env or config.obs_map:
        robot, source = _gym_target(config)
    elif config.policy == "scripted":
        robot = make_robot(f"twin:{config.task}", config.robot)
        source = ExpertPolicy(robot)
    else:
        source = _policy_source(config)
        robot = make_robot(f"twin:{config.task}", twin_overrides_for(_spec_of(source)) + config.robot)
    try:
        with robot:
            for record in run_episodes(robot, source, spec["seeds"], config, video_dir=out):
                record.save(out / "episodes")
                log.info("seed %d: %s in %d ticks", record.seed,
                         "success" if record.success else "failure", record.length)
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()


def _gym_target(config: EvalConfig):
    """(GymRobot, policy source) for `--env <gymnasium id> --obs-map cfg.yaml`."""
    from tether.app.eval.gym_target import load_obs_map, make_gym_robot, twin_robot_in

    obs_map = load_obs_map(config.obs_map)
    if config.policy == "scripted":
        robot = make_gym_robot(config.env, obs_map, max_steps=config.max_steps)
        return robot, ExpertPolicy(twin_robot_in(robot))
    source = _policy_source(config)
    return make_gym_robot(config.env, obs_map, _spec_of(source), config.max_steps), source


def twin_overrides_for(spec: PolicySpec) -> list[str]:
    """Twin settings that reproduce what the policy was trained on: control rate and cameras.

    A policy trained on a store recorded at 10 Hz with a 120x160 `top` camera must be evaluated
    at 10 Hz with exactly that camera and size: a different rate changes what one action means,
    and a different image makes the spec check refuse the policy before anything moves.
    """
    from tether.robot.config import twin_camera_overrides

    rate = [f"fps={spec.fps:g}"]
    images = [a for a in spec.observation if is_image_key(a.name)]
    if not images:
        return rate + twin_camera_overrides([])
    sizes = {tuple(a.shape[:2]) for a in images}
    if len(sizes) != 1:
        raise ConfigError(f"the policy's cameras differ in size ({sorted(sizes)}); the twin renders "
                          "every camera at one size.")
    (height, width), = sizes
    return rate + twin_camera_overrides([camera_of(a.name) for a in images], width, height)


def _spec_of(source) -> PolicySpec:
    spec = getattr(source, "spec", None)
    return spec if spec is not None else source.info().spec


def run_episodes(robot, source, seeds, config, video_dir: Path | None = None):
    """Yield an EpisodeRecord per seed: the one episode loop behind `tether eval`, the trainer's
    periodic evaluation and the demo (a Policy in-process, or a PolicyClient)."""
    from tether.app.rollout import RolloutConfig, run_episode
    from tether.robot.episodic import as_episodic

    if as_episodic(robot) is None:
        raise ConfigError(
            f"evaluation needs a robot with seeded episodes and a success check (the twin); "
            f"'{getattr(robot, 'name', robot)}' has none. Evaluate on twin:<task>."
        )
    record_video = video_dir is not None and config.videos > 0
    rollout = RolloutConfig(**{"realtime": False, "record_frames": record_video,
                               **config.rollout, "steps": config.steps,
                               "sampler": config.sampler, "max_steps": config.max_steps})
    videos_left = {True: config.videos, False: config.videos}
    on_progress = None
    if config.push:
        from tether.app.eval.perturb import Push, push_hook

        on_progress = push_hook(robot, Push.parse(config.push))
    for seed in seeds:
        if isinstance(source, ExpertPolicy):
            source.expert.reset(seed)
        try:
            result = run_episode(robot, source, rollout, seed=seed, on_progress=on_progress)
        except Exception as exc:  # named with its seed, as itself; KeyboardInterrupt passes
            raise EpisodeFailed(seed, exc) from exc
        success = bool(result.success)
        record = EpisodeRecord(
            seed=seed, success=success, length=result.length, max_steps=result.max_steps,
            wall_time_s=result.wall_time_s, first_success_step=result.first_success_step,
            latency_ms=[float(v) for v in result.latency_ms],
            inference_ms=[float(v) for v in result.inference_ms],
            safety={k: int(v) for k, v in result.safety.items()}, stalls=result.stalls,
            joints=result.joints, actions=result.actions,
            episode_return=getattr(robot, "episode_return", None),  # a gymnasium env's rewards
        )
        if record_video and result.frames and videos_left[success] > 0:
            record.video = _write_video(video_dir, seed, success, result.frames, robot.fps)
            videos_left[success] -= 1
        yield record


def make_twin_evaluator(task: str, episodes: int = 10, seed: int = 100_000):
    """`evaluate(policy) -> success rate` on seeded twin episodes, for the trainer's periodic
    evaluation (`tether.policies.trainer.train(config, evaluate=...)`)."""
    from tether.robot.factory import make_robot

    # Only the rollout settings and seeds are used here; the policy is handed in directly.
    config = EvalConfig(task=task, episodes=episodes, seed=seed, videos=0)

    def evaluate(policy: Policy) -> float:
        robot = make_robot(f"twin:{task}", twin_overrides_for(policy.spec))
        with robot:
            records = list(run_episodes(robot, policy, config.seeds(), config))
        return sum(r.success for r in records) / len(records)

    return evaluate


def _policy_source(config):
    """A Policy loaded in this process, or a client of a running policy server."""
    if config.checkpoint:
        from tether.policies.checkpoint import load_policy

        return load_policy(config.checkpoint)
    if config.server:
        from tether.policies.client import PolicyClient

        client = PolicyClient(config.server)
        client.wait_for_server()  # a server started just before `tether eval` may still be loading
        return client
    raise ConfigError(f"Unknown --policy '{config.policy}'; the built-in one is 'scripted'.")


def _write_video(out: Path, seed: int, success: bool, frames: dict[str, list[np.ndarray]],
                 fps: float) -> str | None:
    from tether.app.eval.video import write_webm

    name = next(iter(frames), None)
    if name is None or not frames[name]:
        return None
    rel = f"videos/seed_{seed:06d}_{'success' if success else 'failure'}_{name}.webm"
    write_webm(frames[name], out / rel, fps)
    return rel


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m tether.app.eval.worker SPEC.json", file=sys.stderr)
        return 2
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    spec = json.loads(Path(argv[0]).read_text())
    try:
        run_worker(spec)
    except Exception as exc:
        failure = exc if isinstance(exc, EpisodeFailed) else EpisodeFailed(None, exc)
        log.exception("evaluation worker failed: %s", failure)
        if spec.get("error_file"):
            Path(spec["error_file"]).write_text(json.dumps(failure.as_dict()))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
