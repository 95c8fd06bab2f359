"""Small non-learned policies: references for the server, the rollout loop and evaluation.

They implement the same `Policy` interface as ACT and diffusion, so the transport, the chunk
scheduling and the safety path can be tested and benchmarked with known answers:

- IdentityPolicy: repeats the observed state for the whole chunk (a "hold here" policy, and
  the transport benchmark's zero-cost model).
- ConstantPolicy: always the same action.
- WaypointPolicy: moves from the observed state towards a goal pose at a bounded joint speed;
  a rollout with it must end at the goal, which makes tracking testable end to end.
- SlowPolicy: wraps another policy and adds a fixed inference delay (latency injection).

`observation_specs_for(robot)` builds the ArraySpecs a robot's observations will have, so a
simple policy can be served for any robot.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from tether.core.errors import PolicyError
from tether.core.schema import ArraySpec, PolicySpec
from tether.policies.base import Policy

__all__ = [
    "ConstantPolicy",
    "IdentityPolicy",
    "SlowPolicy",
    "WaypointPolicy",
    "make_simple_policy",
    "observation_specs_for",
]


def observation_specs_for(robot) -> tuple[ArraySpec, ...]:
    """ArraySpecs of `robot.observe().to_arrays()`: state plus one uint8 image per camera."""
    specs = [ArraySpec("state", "float32", (int(robot.state_dim),))]
    for name, camera in robot.cameras.items():  # keyed like Observation.to_arrays()
        cam = camera.spec
        specs.append(ArraySpec(f"image.{name}", "uint8", (int(cam.height), int(cam.width), 3)))
    return tuple(specs)


class _StatePolicy(Policy):
    """Shared constructor: a spec built from observation ArraySpecs and an action size."""

    policy_type = "simple"

    def __init__(
        self,
        observation: Sequence[ArraySpec],
        action_dim: int,
        chunk_size: int = 50,
        fps: float = 30.0,
    ) -> None:
        super().__init__()
        if chunk_size < 1:
            raise PolicyError(f"chunk_size must be >= 1, got {chunk_size}")
        self.spec = PolicySpec(
            policy_type=self.policy_type,
            observation=tuple(observation),
            action_dim=int(action_dim),
            chunk_size=int(chunk_size),
            fps=float(fps),
            normalizer_hash="none",
        )

    def reset(self) -> None:
        pass

    def _state(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(observation["state"], dtype=np.float32)
        if state.shape != (self.spec.action_dim,):
            raise PolicyError(
                f"{type(self).__name__} needs a state of shape ({self.spec.action_dim},), "
                f"got {state.shape}"
            )
        return state


class IdentityPolicy(_StatePolicy):
    """Every action of the chunk equals the observed state."""

    policy_type = "identity"

    def _predict_chunk(self, observation: dict[str, np.ndarray], **options) -> np.ndarray:
        return np.broadcast_to(
            self._state(observation), (self.spec.chunk_size, self.spec.action_dim)
        )


class ConstantPolicy(_StatePolicy):
    """Every action is `action`, whatever the observation."""

    policy_type = "constant"

    def __init__(self, observation: Sequence[ArraySpec], action: np.ndarray, **kwargs) -> None:
        action = np.asarray(action, dtype=np.float32)
        super().__init__(observation, action_dim=action.shape[0], **kwargs)
        self.action = action

    def _predict_chunk(self, observation: dict[str, np.ndarray], **options) -> np.ndarray:
        return np.broadcast_to(self.action, (self.spec.chunk_size, self.spec.action_dim))


class WaypointPolicy(_StatePolicy):
    """Straight-line joint motion from the observed state to `goal` at `speed` rad/s at most."""

    policy_type = "waypoint"

    def __init__(
        self, observation: Sequence[ArraySpec], goal: np.ndarray, speed: float = 0.5, **kwargs
    ) -> None:
        goal = np.asarray(goal, dtype=np.float32)
        super().__init__(observation, action_dim=goal.shape[0], **kwargs)
        if not speed > 0:
            raise PolicyError(f"WaypointPolicy speed must be positive, got {speed}")
        self.goal = goal
        self.speed = float(speed)

    def _predict_chunk(self, observation: dict[str, np.ndarray], **options) -> np.ndarray:
        state = self._state(observation)
        step = self.speed / self.spec.fps
        k = np.arange(1, self.spec.chunk_size + 1, dtype=np.float32)[:, None]
        delta = self.goal - state
        return state + np.clip(delta, -step * k, step * k)


class SlowPolicy(Policy):
    """`inner` with `delay_s` of extra inference time (sleeps, so other threads keep running)."""

    def __init__(self, inner: Policy, delay_s: float) -> None:
        super().__init__()
        self.inner = inner
        self.delay_s = float(delay_s)
        self.spec = inner.spec

    def reset(self) -> None:
        self.inner.reset()

    def fork(self) -> Policy:
        inner = self.inner.fork()
        return self if inner is self.inner else SlowPolicy(inner, self.delay_s)

    def _predict_chunk(self, observation: dict[str, np.ndarray], **options) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.inner.predict_chunk(observation, **options)


SIMPLE_POLICIES = ("identity", "hold", "waypoint")


def make_simple_policy(name: str, robot, chunk_size: int = 50, delay_s: float = 0.0) -> Policy:
    """A simple policy by name for `robot`: identity|hold (same thing) or waypoint (to home)."""
    observation = observation_specs_for(robot)
    fps = float(robot.fps)
    if name in ("identity", "hold"):
        policy: Policy = IdentityPolicy(observation, robot.action_dim, chunk_size, fps)
    elif name == "waypoint":
        policy = WaypointPolicy(observation, robot.home, chunk_size=chunk_size, fps=fps)
    else:
        raise PolicyError(
            f"unknown simple policy '{name}'; choose one of {', '.join(SIMPLE_POLICIES)}"
        )
    return SlowPolicy(policy, delay_s) if delay_s > 0 else policy
