"""Run a policy on a robot: chunk scheduling, latency alignment, blending, and a stall watchdog.

One code path serves evaluation in-process and deployment through the inference server:

    result = run_episode(robot, policy_or_client, RolloutConfig(), seed=3)

`policy_or_client` is a `tether.policies.base.Policy` (in-process) or a
`tether.policies.client.PolicyClient` (server). Every tick of the fixed-rate loop:

1. observe the robot; the tick's step index s is its slot in the loop's fixed schedule, so ticks lost to
   overruns still advance s and the alignment below stays right;
2. take in any chunk that has arrived. A chunk computed from the observation of step s0 holds
   the actions for steps s0, s0+1, ...; the rows for steps already past are dropped, never
   executed late;
3. ask for the next chunk when at most `request_threshold` planned actions remain and no
   request is in flight (asynchronously for a server: the current chunk keeps running);
4. send the action for step s (temporal ensemble of all chunks covering s, or the newest chunk
   when switching) through the safety layer, stamped with the time it is meant for (the tick's
   scheduled time), so an action the loop could only send late is refused rather than executed
   late. If no chunk covers s, the tick sends no target (`robot.tick()`): the arm keeps its last
   safe command, the safety layer's watchdog counts a hold once no target has come for
   `stale_after_s`, the stall is reported, and the loop keeps asking; execution resumes with
   the first chunk that arrives.

The policy must run at the robot's rate: a chunk's rows are one policy period apart. A policy
whose fps differs is refused before anything moves, unless `resample=True`, which
time-interpolates every chunk onto the robot's ticks (linear per joint; observations are still
taken at the robot's rate, so a policy with an observation history sees it at that spacing).

Joint conventions: a policy whose spec names the convention it was trained in
(`spec.extra["convention"]`, e.g. "twin") runs on a robot in another convention (a real arm's own
radians) only through that robot's units calibration (`units=`, see tether.robot.convention):
observed states are mapped into the policy's convention and its actions back. Without one the
rollout is refused before anything moves.

Latency (`latency=`, a tether.robot.latency.LatencyOffsets from `tether calibrate latency`):
camera frames are stamped at their exposure time (the measured camera latency taken off), and
each arm is sent, at every tick, the plan for the moment its command will take effect: the
action `lead = command latency` later (interpolated between steps), so the arm is where the
policy meant it to be when it meant it. When the plan does not reach that far the tick holds.

`realtime=True` paces the loop to the wall clock (deployment, latency tests). With
`realtime=False` (lockstep, for batch evaluation on the twin) the loop runs as fast as it can and
waits for every chunk it asks for, so results do not depend on machine speed; it is refused on a
robot whose time is not simulated (a real arm cannot wait for the policy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from tether.core.errors import ConfigError, PolicyError, TetherError
from tether.core.schema import PolicySpec, state_key
from tether.core.telemetry import NullTelemetry, Telemetry
from tether.policies.base import Policy
from tether.robot.control import ControlRow, ControlStep
from tether.robot.episodic import as_episodic, episode_ended
from tether.robot.interfaces import Observation
from tether.robot.runtime import RateLoop, Tick

log = logging.getLogger(__name__)

__all__ = ["EpisodeResult", "RolloutConfig", "Stall", "run_episode"]


@dataclass
class RolloutConfig:
    """How chunks are requested, aligned and blended (all counts in control ticks).

    max_steps: episode length; None uses the robot's `max_steps` (the twin's task length).
    fps: control rate; None uses the robot's.
    realtime: pace to the wall clock (True) or run in lockstep as fast as possible (False).
    blend: "ensemble" (ACT temporal ensembling, weight exp(-m*i), i=0 oldest) or "switch"
        (execute the newest chunk from its first unexpired action).
    request_threshold: ask for the next chunk once at most this many planned actions remain;
        None = every tick for "ensemble", half a chunk for "switch".
    steps: denoising steps per request (diffusion policies), None = the policy's default.
    sampler: diffusion sampler per request (ddim, dpmpp, streaming), None = the policy's default.
    stream_lookahead: the streaming sampler's clean estimates of the next actions appended to
        each reply, per request (for `ensemble`); None = the policy's default.
    request_timeout_s: a request unanswered this long is abandoned and sent again (reconnecting).
    start_timeout_s: how long to wait for the first chunk before giving up (the clock and the
        arm start only once it is there).
    stop_on_success: end the episode once it counts as a success (the twin: success held for
        the task's hold time).
    record_frames: keep every camera frame in the result (for videos).
    resample: run a policy whose fps differs from the robot's by time-interpolating each chunk
        onto the robot's ticks (otherwise such a policy is refused).
    """

    max_steps: int | None = None
    fps: float | None = None
    realtime: bool = True
    blend: Literal["ensemble", "switch"] = "ensemble"
    ensemble_m: float = 0.01
    request_threshold: int | None = None
    steps: int | None = None
    sampler: str | None = None
    stream_lookahead: int | None = None
    request_timeout_s: float = 0.5
    start_timeout_s: float = 10.0
    stop_on_success: bool = True
    record_frames: bool = False
    resample: bool = False

    def sampling_options(self) -> dict[str, Any]:
        """The per-request sampling options that are set (`Policy.predict_chunk`'s keywords and
        the inference request's fields): one mapping, so a new option is one more entry here
        rather than one more parameter through every chunk source."""
        return {k: v for k, v in (("steps", self.steps), ("sampler", self.sampler),
                                  ("lookahead", self.stream_lookahead)) if v is not None}

    def __post_init__(self) -> None:
        if self.blend not in ("ensemble", "switch"):
            raise ConfigError(f"rollout blend must be 'ensemble' or 'switch', got {self.blend!r}")
        if self.request_threshold is not None and self.request_threshold < 0:
            raise ConfigError("rollout request_threshold must be >= 0")
        if not self.request_timeout_s > 0:
            raise ConfigError("rollout request_timeout_s must be positive")


@dataclass
class Stall:
    """A span of ticks without a valid action, during which the arm held position."""

    start_step: int  # first step without an action
    end_step: int | None  # first step with an action again (None: never resumed)
    hold_delay_ms: float  # from the moment the last action ran out to the hold command
    duration_s: float
    reason: str


@dataclass
class EpisodeResult:
    """Everything one episode produced; arrays are per executed tick."""

    seed: int | None
    success: bool | None  # None when the robot has no success check
    length: int  # ticks executed
    max_steps: int
    wall_time_s: float
    first_success_step: int | None
    actions: np.ndarray  # (T, A) float32, commands that reached the arms (after safety)
    targets: np.ndarray  # (T, A) float32, policy actions before safety (NaN while holding)
    joints: np.ndarray  # (T, A) float32, measured positions at each tick's observation
    held: np.ndarray  # (T,) bool, ticks where the watchdog held position
    latency_ms: list[float]  # per chunk: request sent -> reply read by the loop
    inference_ms: list[float]  # per chunk: model time alone
    chunks: int  # chunks received and used
    stale_chunks: int  # chunks that arrived with every action already past
    dropped_actions: int  # rows dropped because their time had passed
    request_errors: dict[str, int]  # timeouts, refused requests, malformed replies
    safety: dict[str, int]  # safety-layer interventions by reason, during this episode
    stalls: int
    stall_events: list[Stall]
    loop: dict[str, float | int]  # RateLoop statistics
    frames: dict[str, list[np.ndarray]] = field(default_factory=dict)
    # (T,) bool: ticks that executed the operator's own target (a takeover, tether.app.takeover)
    intervention: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    takeover: dict[str, Any] = field(default_factory=dict)  # Takeover.summary(): spans, handovers

    def summary(self) -> dict[str, Any]:
        """JSON-friendly scalars (no per-tick arrays)."""
        lat = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {
            "seed": self.seed,
            "success": self.success,
            "length": self.length,
            "wall_time_s": round(self.wall_time_s, 3),
            "chunks": self.chunks,
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 3),
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 3),
            "stale_chunks": self.stale_chunks,
            "dropped_actions": self.dropped_actions,
            "held_ticks": int(self.held.sum()),
            "stalls": self.stalls,
            "max_hold_delay_ms": round(
                max((s.hold_delay_ms for s in self.stall_events), default=0.0), 3
            ),
            "request_errors": dict(self.request_errors),
            "safety": dict(self.safety),
            "loop": {k: round(v, 3) if isinstance(v, float) else v for k, v in self.loop.items()},
            "stall_events": [asdict(s) for s in self.stall_events],
            "intervention_steps": int(self.intervention.sum()),
            "handovers": len(self.takeover.get("handovers", [])),
        }


def run_episode(
    robot,
    source,
    config: RolloutConfig | None = None,
    seed: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    units=None,
    telemetry: Telemetry | None = None,
    takeover=None,
    on_row: Callable[[ControlRow, int], None] | None = None,
    latency=None,
) -> EpisodeResult:
    """Run one episode of `source` (a Policy or a PolicyClient) on `robot`; see the module doc.

    `units`: the robot's units calibration (a UnitsCalibration, or the path where it should be;
    a missing path is only named in the refusal) for a policy trained in another convention.

    The robot is connected if needed; a robot with `reset(seed)` (the twin) is reset first.
    Raises PolicyError before anything moves when the policy does not fit the robot (inputs,
    action size, or rate without `resample`). `on_progress(step, max_steps)` is called every
    tick (the caller rate-limits what it shows). `telemetry` (a live view, --view) is told every
    tick and every chunk received, without the loop waiting on it.

    `takeover` (a tether.app.takeover.Takeover) lets an operator take over with a teleop
    device: it decides each tick's target from the policy's action and the device's, with
    handovers limited in speed; the result's `intervention` flags the ticks the human drove.
    `on_row(row, step)` is called with every tick's ControlRow (the rollout recorder).
    `latency`: the robot's measured latencies (tether.robot.latency.LatencyOffsets) to
    compensate, or None (see the module doc).
    """
    config = config or RolloutConfig()
    chunk_source = as_chunk_source(source, config.sampling_options())
    return _Episode(
        robot, chunk_source, config, seed, on_progress, units, telemetry, takeover, on_row,
        latency,
    ).run()


def resample_chunk(actions: np.ndarray, policy_fps: float, robot_fps: float) -> np.ndarray:
    """A chunk planned at `policy_fps` as the actions for ticks at `robot_fps`.

    Row k of the input is meant for k / policy_fps seconds after row 0, and each row lasts one
    policy period; the output row j is the linear interpolation at j / robot_fps over the
    chunk's span (n / policy_fps seconds, the last row held for its own period).
    """
    actions = np.asarray(actions, dtype=np.float32)
    n = len(actions)
    if n == 0 or abs(policy_fps - robot_fps) < 1e-9:
        return actions
    t_rows = np.arange(n) / policy_fps
    m = max(1, int(round(n * robot_fps / policy_fps)))
    t_ticks = np.arange(m) / robot_fps
    out = np.empty((m, actions.shape[1]), dtype=np.float32)
    for j in range(actions.shape[1]):
        out[:, j] = np.interp(t_ticks, t_rows, actions[:, j])
    return out


# --------------------------------------------------------------------------------------------
# Chunk sources: a Policy in this process, or the inference server through PolicyClient
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    step: int  # step of the observation the chunk was computed from (row 0 is for this step)
    actions: np.ndarray  # (n, A) float32
    latency_ms: float
    inference_ms: float


class ChunkSource:
    """Where chunks come from. `request` must not block for a remote source."""

    spec: PolicySpec
    synchronous: bool

    def check(self, robot) -> None: ...

    def reset(self) -> None: ...

    def request(self, observation: dict[str, np.ndarray], step: int, wait_s: float = 0.0) -> None:
        """Ask for the chunk of `step`; a remote source may wait up to wait_s for a connection."""

    def poll(self, timeout_s: float) -> Chunk | None: ...

    def in_flight_s(self) -> float | None:
        """Age of the outstanding request, or None when nothing is in flight."""
        return None

    def abandon(self) -> None:
        """Forget the outstanding request (it timed out)."""

    def abandon_quietly(self) -> None:
        """End of episode: forget requests in flight without reconnecting."""


class LocalSource(ChunkSource):
    """A Policy called in the control loop's thread (evaluation; no network involved)."""

    synchronous = True

    def __init__(self, policy: Policy, options: Mapping[str, Any] | None = None) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.options = dict(options or {})  # RolloutConfig.sampling_options()
        self._ready: Chunk | None = None

    def check(self, robot) -> None:
        from tether.policies.client import spec_mismatches
        from tether.policies.simple import observation_specs_for

        problems = spec_mismatches(self.spec, observation_specs_for(robot), robot.action_dim)
        if problems:
            raise PolicyError(
                f"the {self.spec.policy_type} policy does not fit robot '{robot.name}':\n  - "
                + "\n  - ".join(problems)
            )

    def reset(self) -> None:
        self.policy.reset()
        self._ready = None

    def request(self, observation: dict[str, np.ndarray], step: int, wait_s: float = 0.0) -> None:
        t0 = time.monotonic()
        names = [a.name for a in self.spec.observation]
        actions = self.policy.predict_chunk({n: observation[n] for n in names}, **self.options)
        latency = (time.monotonic() - t0) * 1e3
        self._ready = Chunk(step, actions, latency, self.policy.last_inference_ms)

    def poll(self, timeout_s: float) -> Chunk | None:
        chunk, self._ready = self._ready, None
        return chunk


class RemoteSource(ChunkSource):
    """The inference server through a PolicyClient; requests are asynchronous."""

    synchronous = False

    def __init__(self, client, options: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.options = dict(options or {})  # RolloutConfig.sampling_options()
        self.spec = client.info().spec

    def check(self, robot) -> None:
        from tether.policies.simple import observation_specs_for

        self.client.info(refresh=True)  # the server may have been restarted with another policy
        self.spec = self.client.check_spec(observation_specs_for(robot), robot.action_dim)

    def reset(self) -> None:
        # A request still in flight from the last episode must not feed this one.
        self.client.discard_pending()
        self.client.reset()

    def request(self, observation: dict[str, np.ndarray], step: int, wait_s: float = 0.0) -> None:
        self.client.send_infer(observation, tag=step, wait_s=wait_s, **self.options)

    def poll(self, timeout_s: float) -> Chunk | None:
        reply = self.client.poll_reply(timeout_s)
        if reply is None:
            return None
        return Chunk(int(reply.tag), reply.actions, reply.round_trip_ms, reply.infer_ms)

    def in_flight_s(self) -> float | None:
        return self.client.oldest_pending_age()

    def abandon(self) -> None:
        self.client.reconnect()

    def abandon_quietly(self) -> None:
        self.client.discard_pending()


def as_chunk_source(source, options: Mapping[str, Any] | None = None) -> ChunkSource:
    """Wrap a Policy or a PolicyClient (anything else is a TypeError); `options` are the
    per-request sampling options (RolloutConfig.sampling_options())."""
    if isinstance(source, ChunkSource):
        return source
    if isinstance(source, Policy):
        return LocalSource(source, options)
    from tether.policies.client import PolicyClient

    if isinstance(source, PolicyClient):
        return RemoteSource(source, options)
    raise TypeError(f"expected a Policy or a PolicyClient, got {type(source).__name__}")


class ConventionSource(ChunkSource):
    """Another source seen through a joint-convention map: states go to the policy's
    convention, action chunks come back in the robot's (see tether.robot.convention)."""

    def __init__(self, inner: ChunkSource, mapping) -> None:
        self.inner = inner
        self.mapping = mapping
        self.synchronous = inner.synchronous

    @property
    def spec(self) -> PolicySpec:  # type: ignore[override]
        return self.inner.spec

    def check(self, robot) -> None:
        self.inner.check(robot)

    def reset(self) -> None:
        self.inner.reset()

    def request(self, observation: dict[str, np.ndarray], step: int, wait_s: float = 0.0) -> None:
        mapped = dict(observation)
        mapped[state_key()] = self.mapping.to_target(observation[state_key()])
        self.inner.request(mapped, step, wait_s)

    def poll(self, timeout_s: float) -> Chunk | None:
        chunk = self.inner.poll(timeout_s)
        if chunk is None or chunk.actions.ndim != 2 or chunk.actions.shape[1] != len(self.mapping.base):
            return chunk  # the episode rejects a malformed chunk itself
        return Chunk(chunk.step, self.mapping.from_target(chunk.actions), chunk.latency_ms,
                     chunk.inference_ms)

    def in_flight_s(self) -> float | None:
        return self.inner.in_flight_s()

    def abandon(self) -> None:
        self.inner.abandon()

    def abandon_quietly(self) -> None:
        self.inner.abandon_quietly()


def adapt_convention(source: ChunkSource, robot, units=None) -> ChunkSource:
    """`source` as it must run on `robot`: unchanged when the policy names no convention or the
    robot's, mapped through the robot's units calibration otherwise; PolicyError if there is
    none (or it leads elsewhere)."""
    from pathlib import Path

    from tether.robot.convention import UnitsCalibration, robot_convention

    wanted = source.spec.extra.get("convention")
    have = robot_convention(robot)
    if not wanted or wanted == have:
        return source
    where = None
    if isinstance(units, (str, Path)):
        where = Path(units)
        units = UnitsCalibration.load(where) if where.is_file() else None
    if units is None or units.convention != wanted:
        found = (f"its units calibration maps to '{units.convention}'" if units is not None
                 else f"it has no units calibration{f' at {where}' if where else ''}")
        raise PolicyError(
            f"the {source.spec.policy_type} policy was trained in the '{wanted}' joint convention "
            f"but robot '{robot.name}' reads and is commanded in '{have}', and {found}; joint "
            "zeros, directions and the gripper range would be wrong. Run `tether calibrate units "
            "--robot <config>` to measure the map, or use a policy trained on this robot."
        )
    return ConventionSource(source, units.compile(robot))


def _raise_unless_retryable(exc: Exception, source: ChunkSource) -> None:
    """Re-raise errors no retry can fix: a request the server rejected (bad steps, shape, spec;
    `retryable` False) or anything an in-process policy raised. Timeouts and `busy` pass."""
    if source.synchronous or getattr(exc, "retryable", True) is False:
        raise exc


# --------------------------------------------------------------------------------------------
# Blending
# --------------------------------------------------------------------------------------------


class _SwitchPlan:
    """Execute the newest chunk; an older chunk only fills steps the newest does not cover."""

    def __init__(self) -> None:
        self._step0 = 0
        self._actions: np.ndarray | None = None

    def reset(self) -> None:
        self._actions = None

    def add_chunk(self, step0: int, actions: np.ndarray) -> None:
        self._step0, self._actions = step0, np.asarray(actions, dtype=np.float32)

    def action_at(self, step: int) -> np.ndarray | None:
        if self._actions is None:
            return None
        k = step - self._step0
        return self._actions[k] if 0 <= k < len(self._actions) else None


def _make_blender(config: RolloutConfig):
    if config.blend == "switch":
        return _SwitchPlan()
    from tether.policies.ensembling import TemporalEnsembler

    return TemporalEnsembler(config.ensemble_m)


# --------------------------------------------------------------------------------------------
# The episode loop
# --------------------------------------------------------------------------------------------


class _Episode:
    def __init__(
        self,
        robot,
        source: ChunkSource,
        config: RolloutConfig,
        seed: int | None,
        on_progress: Callable[[int, int], None] | None = None,
        units=None,
        telemetry: Telemetry | None = None,
        takeover=None,
        on_row: Callable[[ControlRow, int], None] | None = None,
        latency=None,
    ) -> None:
        self.robot = robot
        self.latency = latency if latency else None
        # per action entry, how many ticks early to send it (each arm's command latency)
        self.lead = None if self.latency is None or not self.latency.arms else (
            self.latency.lead_s(robot) * float(config.fps or robot.fps))
        self.takeover = takeover
        self.on_row = on_row
        self.units = units
        self.telemetry = telemetry or NullTelemetry()
        self.source = source
        self.config = config
        self.seed = seed
        self.on_progress = on_progress
        self.fps = float(config.fps or robot.fps)
        self.period = 1.0 / self.fps
        self.episodic = as_episodic(robot)  # None for hardware: no reset, no success check
        max_steps = config.max_steps or (self.episodic.max_steps if self.episodic else None)
        if not max_steps:
            raise ConfigError("rollout needs max_steps (the robot has no task that sets one)")
        self.max_steps = int(max_steps)
        self.policy_fps = self.fps  # set from the policy's spec once it is checked
        self.threshold = 0
        self.blender = _make_blender(config)
        self.newest_end = -1  # first step not covered by any chunk received so far
        self.t_origin = 0.0
        self.records: dict[str, list] = {
            "actions": [], "targets": [], "joints": [], "held": [], "intervention": []
        }
        self.frames: dict[str, list[np.ndarray]] = {}
        self.latency_ms: list[float] = []
        self.inference_ms: list[float] = []
        self.chunks = 0
        self.stale = 0
        self.dropped = 0
        self.errors: dict[str, int] = {}
        self.stalls: list[Stall] = []
        self.stall: Stall | None = None
        self.t_stall = 0.0
        self.last_command: np.ndarray | None = None
        self.success_step: int | None = None
        self.last_error: str | None = None  # since the last valid chunk, for stall reports
        self.arrived: list[Chunk] = []  # chunks received while the loop slept
        self.control = ControlStep(
            robot, read=self._observe, target=self._action_for, t_target=self._meant_for
        )

    def run(self) -> EpisodeResult:
        robot = self.robot
        if not self.config.realtime:
            robot.require_simulated_time("--lockstep (realtime=False)")
        if not robot.is_connected:
            robot.connect()
        self.source.check(robot)
        self.source = adapt_convention(self.source, robot, self.units)
        self._check_rate()
        if self.episodic is not None:
            self.episodic.reset(self.seed if self.seed is not None else 0)
        if self.takeover is not None:  # after the robot's reset: a scripted operator reads the scene
            self.takeover.reset(self.seed)
        self.source.reset()
        self.blender.reset()
        safety_before = dict(robot.safety_counts())
        first = robot.observe()
        self.last_command = first.state.astype(np.float64)
        t0 = time.monotonic()
        self._first_chunk(first.to_arrays())
        loop = RateLoop(self.fps, realtime=self.config.realtime, sleep=self._sleep_listening)
        try:
            # The episode is max_steps slots of the schedule: a slot past them never starts,
            # so every step not executed is a skipped tick and nothing else.
            stats = loop.run(self._tick, duration_s=self.max_steps * loop.period)
        finally:
            self.source.abandon_quietly()
        wall = time.monotonic() - t0
        if self.stall is not None:
            self._end_stall(None)
        safety_after = robot.safety_counts()
        safety = {
            k: v - safety_before.get(k, 0)
            for k, v in safety_after.items()
            if v - safety_before.get(k, 0)
        }
        success = None if self.episodic is None else bool(self.episodic.succeeded)
        a = robot.action_dim
        return EpisodeResult(
            seed=self.seed,
            success=success,
            length=len(self.records["held"]),
            max_steps=self.max_steps,
            wall_time_s=wall,
            first_success_step=self.success_step,
            actions=np.asarray(self.records["actions"], dtype=np.float32).reshape(-1, a),
            targets=np.asarray(self.records["targets"], dtype=np.float32).reshape(-1, a),
            joints=np.asarray(self.records["joints"], dtype=np.float32).reshape(-1, robot.state_dim),
            held=np.asarray(self.records["held"], dtype=bool),
            latency_ms=self.latency_ms,
            inference_ms=self.inference_ms,
            chunks=self.chunks,
            stale_chunks=self.stale,
            dropped_actions=self.dropped,
            request_errors=self.errors,
            safety=safety,
            stalls=len(self.stalls),
            stall_events=self.stalls,
            loop=stats.as_dict(),
            frames=self.frames,
            intervention=np.asarray(self.records["intervention"], dtype=bool),
            takeover=self.takeover.summary() if self.takeover is not None else {},
        )

    def _check_rate(self) -> None:
        """Refuse a policy planned at another rate, or resample it when asked to."""
        spec = self.source.spec
        policy_fps = float(spec.fps)
        if abs(policy_fps - self.fps) > 1e-6 and not self.config.resample:
            raise PolicyError(
                f"the {spec.policy_type} policy runs at {policy_fps:g} fps but robot "
                f"'{self.robot.name}' is controlled at {self.fps:g} fps, so every chunk would "
                f"play {self.fps / policy_fps:.2f}x too fast or slow; run the robot at the "
                f"policy's rate (--set fps={policy_fps:g}), or pass --resample to "
                "time-interpolate each chunk onto the robot's ticks."
            )
        self.policy_fps = policy_fps
        chunk_ticks = max(1, int(round(int(spec.chunk_size) * self.fps / policy_fps)))
        if self.config.request_threshold is not None:
            self.threshold = self.config.request_threshold
        else:
            self.threshold = chunk_ticks if self.config.blend == "ensemble" else chunk_ticks // 2

    def _first_chunk(self, arrays: dict[str, np.ndarray]) -> None:
        """Wait for the chunk of step 0 before the clock starts: starting is not a stall."""
        deadline = time.monotonic() + max(
            self.config.start_timeout_s, self.config.request_timeout_s
        )
        while self.chunks == 0:
            if time.monotonic() > deadline:
                raise TetherError(
                    f"no valid action chunk within {self.config.start_timeout_s:.1f} s of starting "
                    f"(request errors: {self.errors or 'none'}); check that the policy server is "
                    "running and answering (`tether serve ...`)."
                )
            if self.source.in_flight_s() is None:
                try:
                    self.source.request(arrays, 0, wait_s=self.config.request_timeout_s)
                except TetherError as exc:
                    _raise_unless_retryable(exc, self.source)
                    self._error(getattr(exc, "code", type(exc).__name__))
                    time.sleep(0.05)
                    continue
            self._collect(0, self.config.request_timeout_s)

    # --- one control tick ----------------------------------------------------------------------
    def _tick(self, tick: Tick) -> bool:
        if tick.index == 0:
            self.t_origin = tick.t_scheduled
        step = tick.slot  # the loop's schedule never shifts: slots lost to overruns count too
        if step >= self.max_steps:
            return False
        row = self.control(tick)
        observation = row.reading
        self.telemetry.tick(tick, observation, row.target, row.sent, self.robot)
        self.last_command = np.asarray(row.sent, dtype=np.float64)
        target = row.target if row.target is not None else np.full(self.robot.action_dim, np.nan)
        self.records["actions"].append(np.asarray(row.sent, dtype=np.float32))
        self.records["targets"].append(np.asarray(target, dtype=np.float32))
        self.records["joints"].append(observation.state)
        self.records["held"].append(row.held)
        self.records["intervention"].append(self.takeover is not None and self.takeover.intervening)
        if self.on_row is not None:
            self.on_row(row, step)
        if self.on_progress is not None:
            self.on_progress(step, self.max_steps)
        if self._check_success(step) and self.config.stop_on_success:
            return False
        if self.episodic is not None and episode_ended(self.episodic):
            return False  # the env terminated or was truncated (a gymnasium env: GymRobot)
        return step + 1 < self.max_steps

    def _observe(self, tick: Tick) -> Observation:
        observation = self.robot.observe()
        if self.latency is not None:
            observation = self.latency.correct(observation)  # frames stamped at exposure time
        if self.config.record_frames:
            for name, frame in observation.frames.items():
                self.frames.setdefault(name, []).append(frame.image.copy())
        return observation

    def _action_for(self, observation: Observation, tick: Tick) -> np.ndarray | None:
        """Take in arrived chunks, ask for the next one if due, and blend the action for this
        step; None when no chunk covers it (the control step then holds: a stall)."""
        step = tick.slot
        self._collect(step, 0.0)
        self._maybe_request(observation.to_arrays(), step)
        action = self.blender.action_at(step) if self.lead is None else self._led(step)
        if action is None:
            self._stalling(step)
        elif self.stall is not None:
            self._end_stall(step)
        if self.takeover is not None:  # the operator may be driving, or taking over / handing back
            return self.takeover.decide(observation, action, self.last_command)
        return action

    def _led(self, step: int) -> np.ndarray | None:
        """The plan for when this tick's command takes effect: step + lead, per arm, linearly
        interpolated between steps; None (hold) when the plan does not reach that far.

        Steps are asked for in increasing order (the ensembler forgets chunks that have ended)."""
        assert self.lead is not None
        wanted = sorted({step + int(np.floor(x)) + d for x in self.lead for d in (0, 1)})
        rows = {s: self.blender.action_at(s) for s in wanted}
        out = np.empty(self.robot.action_dim, dtype=np.float64)
        for x in np.unique(self.lead):
            k = int(np.floor(x))
            frac = float(x - k)
            cols = self.lead == x
            a, b = rows[step + k], rows[step + k + 1]
            if a is None:
                return None
            out[cols] = a[cols] if b is None else (1.0 - frac) * a[cols] + frac * b[cols]
        return out.astype(np.float32)

    def _meant_for(self, tick: Tick) -> float:
        """When this tick's action is meant to run, on the robot's safety clock.

        In real time that is the tick's scheduled time: the action for step s was planned for
        t_origin + s * period, so a tick that could only send it late (the loop or an observe()
        blocked) has it refused as stale instead of executed late. In lockstep the world waits
        for the policy, so it is meant for now.
        """
        now = self.robot.now()
        if not self.config.realtime:
            return now
        return now - max(0.0, time.monotonic() - tick.t_scheduled)

    def _check_success(self, step: int) -> bool:
        """Record the first successful step; True once the episode counts as a success.

        The episode counts as a success once success has held for the task's hold time
        (`succeeded`); a robot without episodes (hardware) has no success check.
        """
        if self.episodic is None:
            return False
        if self.success_step is None and self.episodic.is_success():
            self.success_step = step
        return bool(self.episodic.succeeded)

    def _maybe_request(self, arrays: dict[str, np.ndarray], step: int) -> None:
        age = self.source.in_flight_s()
        if age is not None:
            if age < self.config.request_timeout_s:
                return
            self._error("timeout")
            log.warning("no chunk within %.0f ms; abandoning the request", age * 1e3)
            self.source.abandon()
        lead = 0 if self.lead is None else int(np.ceil(self.lead.max()))
        remaining = max(0, self.newest_end - step - lead)
        if remaining > self.threshold:
            return
        try:
            # In lockstep the world waits for the server (e.g. while it reconnects); in real
            # time the loop never blocks on it.
            wait_s = 0.0 if self.config.realtime else self.config.request_timeout_s
            self.source.request(arrays, step, wait_s=wait_s)
        except TetherError as exc:
            _raise_unless_retryable(exc, self.source)
            self._error(getattr(exc, "code", type(exc).__name__))
            log.debug("request at step %d failed: %s", step, exc)
            return
        if self.source.synchronous or not self.config.realtime:
            # Lockstep: the simulated world waits for the chunk it asked for.
            self._collect(step, self.config.request_timeout_s)

    def _sleep_listening(self, delay_s: float) -> None:
        """The loop's sleep between ticks: wait for replies meanwhile, so their arrival time
        (and so the measured latency) is exact rather than rounded up to the next tick."""
        deadline = time.monotonic() + delay_s
        while (remaining := deadline - time.monotonic()) > 0:
            if self.source.synchronous or self.source.in_flight_s() is None:
                time.sleep(remaining)
                return
            try:
                chunk = self.source.poll(remaining)
            except TetherError as exc:
                _raise_unless_retryable(exc, self.source)
                self._error(getattr(exc, "code", type(exc).__name__))
                log.warning("invalid chunk: %s", exc)
                continue
            if chunk is not None:
                self.arrived.append(chunk)  # aligned at the next tick, like any other

    def _collect(self, step: int, timeout_s: float) -> None:
        arrived, self.arrived = self.arrived, []
        for chunk in arrived:
            self._accept(chunk, step)
        while True:
            try:
                chunk = self.source.poll(timeout_s)
            except TetherError as exc:  # an error reply or a malformed chunk: not a valid chunk
                _raise_unless_retryable(exc, self.source)
                self._error(getattr(exc, "code", type(exc).__name__))
                log.warning("invalid chunk: %s", exc)
                return
            if chunk is None:
                if timeout_s > 0 and self.source.in_flight_s() is not None:
                    self._error("timeout")
                    self.source.abandon()
                return
            self._accept(chunk, step)
            timeout_s = 0.0

    def _accept(self, chunk: Chunk, step: int) -> None:
        actions = chunk.actions
        if actions.ndim != 2 or actions.shape[1] != self.robot.action_dim:
            self._error("wrong_action_shape")
            return
        if not np.isfinite(actions).all():
            self._error("non_finite")
            return
        actions = resample_chunk(actions, self.policy_fps, self.fps)
        if chunk.step > step:  # computed from an observation we have not taken yet: not ours
            self._error("future_chunk")
            return
        end = chunk.step + len(actions)
        late = step - chunk.step
        self.latency_ms.append(chunk.latency_ms)
        self.inference_ms.append(chunk.inference_ms)
        if end <= step:
            self.stale += 1
            self.dropped += len(actions)
            return
        self.dropped += late
        self.chunks += 1
        self.last_error = None
        start = chunk.step + late
        self.blender.add_chunk(start, actions[late:])
        self.telemetry.chunk(chunk.step, actions)  # the whole prediction, past rows included
        self.newest_end = max(self.newest_end, end)

    def _stalling(self, step: int) -> None:
        """No action for this step: the control step sends no target (the safety layer's
        watchdog holds the last safe command and counts a hold once targets are stale)."""
        if self.stall is None:
            t_out = self.t_origin + step * self.period if self.config.realtime else time.monotonic()
            delay_ms = max(0.0, (time.monotonic() - t_out) * 1e3)
            cause = f"last request error: {self.last_error}" if self.last_error else "no reply yet"
            reason = f"chunk ran out ({cause})"
            self.stall = Stall(step, None, delay_ms, 0.0, reason)
            self.t_stall = time.monotonic()
            log.warning("rollout stalled at step %d (%s): holding position", step, reason)

    def _end_stall(self, step: int | None) -> None:
        assert self.stall is not None
        self.stall.end_step = step
        self.stall.duration_s = time.monotonic() - self.t_stall
        if step is not None:
            log.warning(
                "rollout resumed at step %d after %.0f ms of holding",
                step,
                self.stall.duration_s * 1e3,
            )
        self.stalls.append(self.stall)
        self.stall = None

    def _error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        self.last_error = code
