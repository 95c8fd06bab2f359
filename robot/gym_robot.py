"""GymRobot: any gymnasium env behind the Robot + EpisodicRobot API, so a policy is evaluated on it
through the same rollout client (tether.app.rollout) and report as on the twin. Layer: robot.

The env is handed in already made (`gymnasium.make(...)` is the app layer's job, see
tether.app.eval.gym_target), so this module imports neither gymnasium nor MuJoCo: it only calls
`reset/step/render` and reads the spaces' public attributes.

What the policy sees and sends is set by an `ObsMap` (the `--obs-map` file):

- `state`: observation entries concatenated into the policy's `state` vector (float32). An
  entry is a key path into the observation (`obs` is a non-dict observation itself; nested
  dicts use `/`, e.g. `robot/qpos`), optionally with `index: [i, j, ...]` to pick elements;
- `cameras`: policy camera name -> `render` (the env's `render()` output) or an observation key
  path holding an HxWx3 uint8 image; optional `size: [h, w]` resizes (nearest neighbour);
- `action`: the policy's action vector becomes env.step's action: reshaped to a Box space and
  clipped to its bounds (every clip counted as a safety intervention `clipped`), or rounded and
  clipped for Discrete / MultiDiscrete spaces. A policy of the wrong size is refused before
  anything moves (the rollout's spec check names both sizes);
- `success`: an episode succeeds when `info["is_success"]` or `info["success"]` (or the keys
  listed) is true on its last step, when any step's reward reaches `reward_at_least`, or when
  the episode's return at its end reaches `return_at_least`.

An episode ends when the env says terminated or truncated (`episode_ended`), or after
`max_steps` (default: the env's own `max_episode_steps`). Time is simulated: one `act()` is one
`env.step()`, one control period at `fps`, so evaluation runs in lockstep and repeats exactly
under the same seeds (`reset(seed)` passes the seed to `env.reset(seed=...)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tether.core.errors import ConfigError, DeviceClosedError
from tether.core.schema import validate_name
from tether.robot.interfaces import CameraSpec, Frame, JointState, Observation

RENDER = "render"  # a camera source: the env's render() output instead of an observation key
WHOLE = "obs"  # a key path: the observation itself (an env whose observation is not a dict)
DEFAULT_INFO_KEYS = ("is_success", "success")
_STATE_STREAM = "env"  # the one "arm" of the Observation: the mapped state vector


@dataclass(frozen=True)
class StateEntry:
    key: str
    index: tuple[int, ...] | None = None


@dataclass(frozen=True)
class CameraEntry:
    key: str  # RENDER or an observation key path
    size: tuple[int, int] | None = None  # (height, width) to resize to


@dataclass
class ObsMap:
    """How a gymnasium env's observations, actions and outcomes map onto a tether policy."""

    env: str | None = None  # gymnasium id (the command line's --env wins)
    make_kwargs: dict[str, Any] = field(default_factory=dict)  # extra gymnasium.make arguments
    fps: float | None = None  # control rate; default: the policy's, else the env's render_fps
    max_steps: int | None = None  # default: the env's max_episode_steps
    state: list[StateEntry] = field(default_factory=list)
    cameras: dict[str, CameraEntry] = field(default_factory=dict)
    clip_actions: bool = True
    info_keys: tuple[str, ...] = DEFAULT_INFO_KEYS
    reward_at_least: float | None = None
    return_at_least: float | None = None

    @property
    def uses_render(self) -> bool:
        return any(c.key == RENDER for c in self.cameras.values())

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "the obs-map") -> ObsMap:
        """Parse an obs-map file's mapping; every error names the key and how to write it."""
        known = {"env", "make_kwargs", "fps", "max_steps", "state", "cameras", "action", "success"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; the keys are {sorted(known)}.")
        state = data.get("state", [])
        if isinstance(state, str):
            state = [state]
        if not isinstance(state, list):
            raise ConfigError(f"{source}: 'state' must be a list of observation keys, e.g. [obs].")
        cameras = data.get("cameras") or {}
        if not isinstance(cameras, Mapping):
            raise ConfigError(f"{source}: 'cameras' must map camera names to 'render' or an "
                              "observation key, e.g. {top: render}.")
        action = data.get("action") or {}
        success = data.get("success") or {}
        if not isinstance(action, Mapping) or not isinstance(success, Mapping):
            raise ConfigError(f"{source}: 'action' and 'success' must be mappings.")
        bad = sorted(set(action) - {"clip"}) + sorted(set(success) - {"info_keys", "reward_at_least",
                                                                        "return_at_least"})
        if bad:
            raise ConfigError(f"{source}: unknown action/success setting(s) {bad}; action takes "
                              "'clip', success takes 'info_keys', 'reward_at_least', 'return_at_least'.")
        kwargs = data.get("make_kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{source}: 'make_kwargs' must be a mapping of gymnasium.make arguments.")
        return cls(
            env=data.get("env"),
            make_kwargs=dict(kwargs),
            fps=None if data.get("fps") is None else float(data["fps"]),
            max_steps=None if data.get("max_steps") is None else int(data["max_steps"]),
            state=[_state_entry(e, source) for e in state],
            cameras={validate_name(str(n), "camera"): _camera_entry(e, n, source)
                     for n, e in cameras.items()},
            clip_actions=bool(action.get("clip", True)),
            info_keys=tuple(success.get("info_keys", DEFAULT_INFO_KEYS)),
            reward_at_least=_optional_float(success.get("reward_at_least")),
            return_at_least=_optional_float(success.get("return_at_least")),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _state_entry(entry: Any, source: str) -> StateEntry:
    if isinstance(entry, str):
        return StateEntry(entry)
    if isinstance(entry, Mapping) and "key" in entry and set(entry) <= {"key", "index"}:
        index = entry.get("index")
        return StateEntry(str(entry["key"]), None if index is None else tuple(int(i) for i in index))
    raise ConfigError(f"{source}: state entry {entry!r} must be a key or {{key: ..., index: [...]}}.")


def _camera_entry(entry: Any, name: str, source: str) -> CameraEntry:
    if isinstance(entry, str):
        return CameraEntry(entry)
    if isinstance(entry, Mapping) and "key" in entry and set(entry) <= {"key", "size"}:
        size = entry.get("size")
        if size is not None and (len(size) != 2 or min(int(s) for s in size) < 1):
            raise ConfigError(f"{source}: camera '{name}' size must be [height, width], got {size}.")
        return CameraEntry(str(entry["key"]), None if size is None else (int(size[0]), int(size[1])))
    raise ConfigError(f"{source}: camera '{name}' must be 'render', an observation key, or "
                      "{key: ..., size: [height, width]}.")


class _EnvCamera:
    """A policy camera fed from the env; `spec` sizes it for the policy's spec check."""

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.frame: Frame | None = None

    def read(self) -> Frame:
        if self.frame is None:
            raise DeviceClosedError(f"camera '{self.spec.name}' has no frame yet; reset the env first.")
        return self.frame


class GymRobot:
    """A gymnasium env as a Robot with seeded episodes (see the module doc)."""

    simulated_time = True

    def __init__(self, env, obs_map: ObsMap, fps: float | None = None, max_steps: int | None = None,
                 name: str | None = None) -> None:
        self.env = env
        self.map = obs_map
        spec = getattr(env, "spec", None)
        self.name = name or f"gym:{getattr(spec, 'id', None) or type(env).__name__}"
        render_fps = (getattr(env, "metadata", None) or {}).get("render_fps")
        chosen = obs_map.fps or fps or render_fps
        if not chosen:
            raise ConfigError(f"{self.name}: no control rate; set 'fps' in the obs-map.")
        self.fps = float(chosen)
        limit = obs_map.max_steps or max_steps or getattr(spec, "max_episode_steps", None)
        if not limit:
            raise ConfigError(f"{self.name}: the env sets no episode length; set 'max_steps' in "
                              "the obs-map.")
        self._max_steps = int(limit)
        self._action = _ActionMap(env.action_space, self.name, obs_map.clip_actions)
        self.counts: dict[str, int] = {}
        self._connected = False
        self._steps = 0
        self._obs: Any = None
        self._return = 0.0
        self._reward = 0.0
        self._step_success = False
        self._info_ok = False  # the info success flag of the latest step
        self._latched = False
        self._ended = False
        self._last: np.ndarray = self._action.neutral()
        # Probe one reset so the policy's spec check knows the state size and every camera's
        # image size before the first episode (render() sizes are only known from a frame).
        obs, _ = env.reset(seed=0)
        self._obs = obs
        self.state_dim = int(self._state().shape[0])
        self.cameras: dict[str, _EnvCamera] = {}
        for cam, image in self._images().items():
            self.cameras[cam] = _EnvCamera(CameraSpec(cam, int(image.shape[1]), int(image.shape[0]),
                                                      self.fps))

    # --- Robot ---------------------------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return self._action.dim

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def close(self) -> None:
        if self._connected or self.env is not None:
            self.env.close()
        self._connected = False

    def __enter__(self) -> GymRobot:
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def now(self) -> float:
        """Simulated seconds: one env step is one control period."""
        return self._steps / self.fps

    def require_simulated_time(self, mode: str) -> None:
        """An env's time is simulated: every unpaced mode is allowed."""

    def safety_counts(self) -> dict[str, int]:
        return dict(self.counts)

    def observe(self) -> Observation:
        self._require_connected()
        t = self.now()
        state = self._state().astype(np.float64)
        frames = {}
        for cam, image in self._images().items():
            spec = self.cameras[cam].spec
            if image.shape != (spec.height, spec.width, 3):
                raise ConfigError(f"{self.name}: camera '{cam}' gave an image of shape {image.shape} "
                                  f"after giving ({spec.height}, {spec.width}, 3); set its size in "
                                  "the obs-map ({key: ..., size: [h, w]}).")
            frame = Frame(image=image, t_device=t, t_host=t, index=self._steps)
            self.cameras[cam].frame = frame
            frames[cam] = frame
        return Observation(t_host=t, joints={_STATE_STREAM: JointState(state, t_host=t)}, frames=frames)

    def act(self, action: np.ndarray, t_target: float | None = None) -> np.ndarray:
        """Step the env with the policy's action (clipped to the action space); returns what
        env.step received, as a vector."""
        self._require_connected()
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise ConfigError(
                f"{self.name} takes an action of {self.action_dim} values "
                f"({self._action.describe()}); the policy sent shape {action.shape}. Evaluate a "
                "policy trained for this env's action space."
            )
        if not np.all(np.isfinite(action)):
            self._count("nonfinite")
            return self.tick()
        sent, clipped = self._action.fit(action)
        if clipped:
            self._count("clipped")
        return self._step(sent)

    def tick(self) -> np.ndarray:
        """No new action this tick: the env still advances one period with the last action."""
        self._require_connected()
        return self._step(self._last)

    def _step(self, vector: np.ndarray) -> np.ndarray:
        self._last = vector
        if self._ended:  # the env's episode is over: nothing more may be stepped
            return vector
        obs, reward, terminated, truncated, info = self.env.step(self._action.to_env(vector))
        self._obs = obs
        self._steps += 1
        self._reward = float(reward)
        self._return += self._reward
        self._ended = bool(terminated or truncated)
        self._info_ok = self._info_success(info)
        reward_ok = self.map.reward_at_least is not None and self._reward >= self.map.reward_at_least
        self._latched = self._latched or reward_ok
        self._step_success = self._info_ok or reward_ok
        return vector

    # --- EpisodicRobot -------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        self.connect()
        obs, _ = self.env.reset(seed=int(seed))
        self._obs = obs
        self._steps = 0
        self._return = self._reward = 0.0
        self._step_success = self._latched = self._ended = self._info_ok = False
        self._last = self._action.neutral()
        return self.observe()

    def is_success(self) -> bool:
        """This step's signal: the info flag, or a reward reaching `reward_at_least`."""
        return self._step_success or self._return_success()

    @property
    def succeeded(self) -> bool:
        """The episode's outcome: a reward that reached `reward_at_least` (latches), or, once
        the episode is over, the last step's info flag (gymnasium's convention: an env that
        only passes through its goal has not solved it) or a return reaching `return_at_least`."""
        return self._latched or (self._over() and self._info_ok) or self._return_success()

    @property
    def max_steps(self) -> int:
        return self._max_steps

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def episode_ended(self) -> bool:
        """The env said terminated or truncated: the rollout stops here."""
        return self._ended

    @property
    def episode_return(self) -> float:
        return self._return

    # --- helpers -------------------------------------------------------------------------------
    def _over(self) -> bool:
        return self._ended or self._steps >= self._max_steps

    def _return_success(self) -> bool:
        return self._over() and self.map.return_at_least is not None and self._return >= self.map.return_at_least

    def _info_success(self, info: Mapping[str, Any]) -> bool:
        return any(bool(np.all(info[k])) for k in self.map.info_keys if k in info)

    def _require_connected(self) -> None:
        if not self._connected:
            raise DeviceClosedError(f"Robot '{self.name}' is not connected; call connect() first.")

    def _count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def _state(self) -> np.ndarray:
        parts = []
        for entry in self.map.state:
            value = np.asarray(self._lookup(entry.key), dtype=np.float64).reshape(-1)
            if entry.index is not None:
                try:
                    value = value[list(entry.index)]
                except IndexError as exc:
                    raise ConfigError(f"{self.name}: state entry '{entry.key}' has {value.size} "
                                      f"values; index {list(entry.index)} is out of range.") from exc
            parts.append(value)
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def _images(self) -> dict[str, np.ndarray]:
        images = {}
        rendered = None
        for cam, entry in self.map.cameras.items():
            if entry.key == RENDER:
                if rendered is None:
                    rendered = self.env.render()
                    if rendered is None:
                        raise ConfigError(f"{self.name}: render() returned nothing for camera '{cam}'; "
                                          "make the env with render_mode='rgb_array' (make_kwargs).")
                image = rendered
            else:
                image = self._lookup(entry.key)
            images[cam] = _as_image(np.asarray(image), cam, entry.size, self.name)
        return images

    def _lookup(self, path: str) -> Any:
        if path == WHOLE:
            return self._obs
        value = self._obs
        for part in path.split("/"):
            if not isinstance(value, Mapping) or part not in value:
                have = sorted(value) if isinstance(value, Mapping) else f"a {type(value).__name__}"
                raise ConfigError(f"{self.name}: observation has no key '{path}' (at '{part}': "
                                  f"has {have}); use 'obs' for a non-dict observation.")
            value = value[part]
        return value


def _as_image(image: np.ndarray, cam: str, size: tuple[int, int] | None, who: str) -> np.ndarray:
    """An RGB uint8 HxWx3 frame, resized (nearest neighbour) when the obs-map asks for a size."""
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.transpose(image, (1, 2, 0))  # CHW (some pixel wrappers) -> HWC
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ConfigError(f"{who}: camera '{cam}' is not an image (shape {image.shape}); map it to "
                          "an HxWx3 observation or to 'render'.")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype != np.uint8:
        scale = 255.0 if image.size and float(np.nanmax(image)) <= 1.0 else 1.0
        image = np.clip(np.asarray(image, np.float64) * scale, 0, 255).astype(np.uint8)
    if size is not None and image.shape[:2] != size:
        rows = (np.arange(size[0]) * image.shape[0] // size[0])
        cols = (np.arange(size[1]) * image.shape[1] // size[1])
        image = image[rows][:, cols]
    return np.ascontiguousarray(image)


class _ActionMap:
    """The policy's flat action vector <-> the env's action space (Box, Discrete, MultiDiscrete)."""

    def __init__(self, space, who: str, clip: bool) -> None:
        self.kind = type(space).__name__
        self.clip = clip
        if self.kind == "Box":
            self.shape = tuple(space.shape)
            self.low = np.broadcast_to(np.asarray(space.low, np.float64), self.shape).reshape(-1)
            self.high = np.broadcast_to(np.asarray(space.high, np.float64), self.shape).reshape(-1)
            self.dtype = space.dtype
            self.dim = int(np.prod(self.shape)) if self.shape else 1
        elif self.kind == "Discrete":
            self.low = np.array([float(space.start)])
            self.high = np.array([float(space.start + space.n - 1)])
            self.dim = 1
        elif self.kind == "MultiDiscrete":
            nvec = np.asarray(space.nvec).reshape(-1)
            start = np.broadcast_to(np.asarray(getattr(space, "start", 0)), np.asarray(space.nvec).shape)
            self.shape = tuple(np.asarray(space.nvec).shape)
            self.low = np.asarray(start, np.float64).reshape(-1)
            self.high = self.low + nvec - 1
            self.dim = int(nvec.size)
        else:
            raise ConfigError(f"{who}: action space {space} is not supported; tether maps a policy's "
                              "action vector onto Box, Discrete or MultiDiscrete spaces only.")

    def describe(self) -> str:
        return f"{self.kind} {self.low.tolist()}..{self.high.tolist()}"

    def neutral(self) -> np.ndarray:
        """What a hold sends before any action: zero clipped into the space."""
        return np.clip(np.zeros(self.dim), self.low, self.high)

    def fit(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """The action as the env can take it, and whether it had to be clipped."""
        if self.kind != "Box":
            action = np.round(action)
        inside = np.clip(action, self.low, self.high)
        clipped = bool(np.any(inside != action))
        if clipped and not self.clip and self.kind == "Box":
            return action, False
        return inside, clipped

    def to_env(self, vector: np.ndarray):
        if self.kind == "Box":
            return np.asarray(vector, dtype=self.dtype).reshape(self.shape)
        if self.kind == "Discrete":
            return int(vector[0])
        return np.asarray(vector, dtype=np.int64).reshape(self.shape)
