"""What one evaluation is: task, episodes, seeds, policy source, workers, report folder.

Its own module because both sides read it: the parent (runner.py) builds it from the command
line, and each worker process (worker.py) rebuilds it from its spec file. Neither imports the
other for it, so runner -> worker is the only import between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tether.core.errors import ConfigError

BACKENDS = ("local", "ray")


@dataclass
class EvalConfig:
    task: str = "lift"
    episodes: int = 20
    workers: int = 1  # 0 runs in this process (handy for debugging)
    seed: int = 100_000  # first seed; held-out from data collection, which starts at 0
    checkpoint: str | None = None  # evaluate a checkpoint in-process
    server: str | None = None  # or through a running inference server (tcp://host:port)
    policy: str | None = None  # or "scripted": the twin's scripted expert (a sanity baseline)
    out: str = "reports/eval"
    videos: int = 2  # successes and failures to keep as video, per worker
    max_steps: int | None = None  # default: the task's episode length
    steps: int | None = None  # diffusion: denoising steps per chunk
    sampler: str | None = None  # diffusion: ddim | dpmpp | streaming (None: the policy's default)
    push: str | None = None  # "STEP:METERS": push the object mid-episode (tether.app.eval.perturb)
    rollout: dict[str, Any] = field(default_factory=dict)  # RolloutConfig overrides
    robot: list[str] = field(default_factory=list)  # overrides for the twin robot config
    env: str | None = None  # a gymnasium env id instead of the twin task (tether.app.eval.gym_target)
    obs_map: str | None = None  # the env's obs-map file (observation keys -> cameras/state, actions)
    timeout_s: float = 3600.0
    backend: str = "local"  # local (worker processes) | ray (one Ray task per episode)
    address: str | None = None  # ray: a cluster address (auto, host:6379, ray://...); None starts one

    def policy_source(self) -> dict[str, str]:
        chosen = {k: v for k, v in (("checkpoint", self.checkpoint), ("server", self.server),
                                    ("policy", self.policy)) if v}
        if len(chosen) != 1:
            raise ConfigError(
                "Choose exactly one policy source: --checkpoint runs/x, --server tcp://127.0.0.1:5555 "
                f"or --policy scripted (got {', '.join(chosen) or 'none'})."
            )
        return chosen

    def check_backend(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got '{self.backend}'")
        if self.address and self.backend != "ray":
            raise ConfigError("--address names a Ray cluster; add --backend ray")

    def seeds(self) -> list[int]:
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be at least 1, got {self.episodes}")
        return [self.seed + i for i in range(self.episodes)]
