"""Excitation trajectories for system identification: commands that make the twin's parameters
identifiable, kept inside the robot's joint and velocity limits (calibration layer).

A joint's gain, armature, damping and friction show up in how it follows commands at different
frequencies: friction and damping at low speed and low frequency, gain and armature near the
servo's bandwidth, latency as a phase lag that grows with frequency. So every excited joint gets
a multisine (the default) or a chirp that spans `f_min`..`f_max` Hz (the baseline the ASID paper
starts from). Joints get *disjoint* frequency grids (joint j uses every J-th line), so their
responses are not correlated and coupling between them cannot be mistaken for a joint's own
parameter. Each harmonic gets the same velocity amplitude (amplitude ~ 1/f), which is what a
velocity limit allows; the sum is scaled so the peak position stays within `amplitude` rad of
the centre pose and inside the joint limits, and the peak speed below `velocity_fraction` of the
arm's safety limit. The trajectory starts and ends at rest at the centre pose (cosine ramps).

The trajectory is a plain (T, D) array of full robot actions. `ExcitationDevice` plays it as a
TeleopDevice, so the recorder drives it through the safety layer (`tether calibrate excite`),
like any teleop; nothing reaches an arm without passing the safety filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tether.core.errors import ConfigError
from tether.robot.interfaces import Observation, Robot
from tether.robot.targets import TeleopDevice

__all__ = [
    "ExcitationConfig",
    "ExcitationDevice",
    "JointLimits",
    "excitation_trajectory",
    "limits_from_robot",
]

KINDS = ("multisine", "chirp")


@dataclass
class ExcitationConfig:
    """What to excite and how hard.

    joints: `arm.joint` or bare joint names to excite (default: every joint but grippers).
    duration_s: length of the excitation, without the `hold_s` rests at both ends.
    amplitude: largest excursion from the centre pose, rad (also kept inside joint limits).
    velocity_fraction: peak speed as a fraction of the safety layer's max_velocity.
    f_min, f_max: frequency band, Hz (f_max is capped at a fifth of the control rate).
    harmonics: sine lines per joint (multisine).
    """

    kind: str = "multisine"
    joints: list[str] | None = None
    duration_s: float = 12.0
    hold_s: float = 0.5
    ramp_s: float = 1.0
    amplitude: float = 0.4
    velocity_fraction: float = 0.5
    f_min: float = 0.2
    f_max: float = 3.0
    harmonics: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Excitation kind '{self.kind}' is not one of {', '.join(KINDS)}.")
        for label in ("duration_s", "amplitude", "velocity_fraction", "f_min", "f_max"):
            if not float(getattr(self, label)) > 0:
                raise ConfigError(f"Excitation {label} must be positive, got {getattr(self, label)!r}.")
        if self.f_max <= self.f_min:
            raise ConfigError(f"Excitation f_max ({self.f_max} Hz) must exceed f_min ({self.f_min} Hz).")
        if self.velocity_fraction > 1:
            raise ConfigError("Excitation velocity_fraction must be <= 1 (a fraction of the safety limit).")
        if self.hold_s < 0 or self.ramp_s < 0 or 2 * self.ramp_s > self.duration_s:
            raise ConfigError("Excitation hold_s and ramp_s must be >= 0 and the ramps fit in duration_s.")
        if int(self.harmonics) < 1:
            raise ConfigError("Excitation harmonics must be at least 1.")


@dataclass
class JointLimits:
    """The robot's full action vector: names (`arm.joint`), limits, speed limit, centre pose."""

    names: list[str]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    center: np.ndarray
    grippers: list[int] = field(default_factory=list)  # indices never excited by default

    def select(self, joints: list[str] | None) -> list[int]:
        """Indices of the joints to excite (`arm.joint` or a bare name that is unique)."""
        if not joints:
            return [i for i in range(len(self.names)) if i not in self.grippers]
        out = []
        for joint in joints:
            hits = [i for i, n in enumerate(self.names) if n == joint or n.split(".", 1)[1] == joint]
            if len(hits) != 1:
                raise ConfigError(
                    f"Joint '{joint}' {'is ambiguous' if hits else 'is unknown'}; joints: "
                    f"{', '.join(self.names)} (use arm.joint)."
                )
            out.append(hits[0])
        return sorted(set(out))


def limits_from_robot(robot: Robot) -> JointLimits:
    """The limits the safety layer enforces (margins included) and the home pose as centre."""
    names, lower, upper, vmax, center, grippers = [], [], [], [], [], []
    for arm_name, safe in robot.arms.items():
        spec, flt = safe.spec, safe.filter
        if spec.gripper_index is not None:
            grippers.append(len(names) + int(spec.gripper_index))
        names += [f"{arm_name}.{j}" for j in spec.joint_names]
        lower.append(flt.lower)
        upper.append(flt.upper)
        vmax.append(np.broadcast_to(flt.max_velocity, (spec.dof,)))
        center.append(np.clip(spec.home, flt.lower, flt.upper))
    return JointLimits(names, np.concatenate(lower), np.concatenate(upper), np.concatenate(vmax),
                       np.concatenate(center), grippers)


def excitation_trajectory(config: ExcitationConfig, limits: JointLimits, fps: float) -> np.ndarray:
    """The (T, D) target trajectory at `fps`: rest, excitation, rest (see the module doc)."""
    if not fps > 0:
        raise ConfigError(f"Control rate must be positive, got {fps}.")
    chosen = limits.select(config.joints)
    rng = np.random.default_rng(config.seed)
    f_max = min(config.f_max, fps / 5.0)
    n_hold, n_move = int(round(config.hold_s * fps)), int(round(config.duration_s * fps))
    t = np.arange(n_move) / fps
    window = _ramps(t, config.duration_s, config.ramp_s)
    traj = np.tile(limits.center, (2 * n_hold + n_move, 1))
    for slot, index in enumerate(chosen):
        if config.kind == "multisine":
            shape = _multisine(t, slot, len(chosen), config.f_min, f_max, int(config.harmonics), rng)
        else:
            shape = _chirp(t, config.f_min, f_max, config.duration_s, rng)
        shape = shape * window
        room = min(limits.center[index] - limits.lower[index], limits.upper[index] - limits.center[index])
        amplitude = min(config.amplitude, 0.95 * room)
        if amplitude <= 0:
            raise ConfigError(f"Joint {limits.names[index]}: its centre pose sits on a limit; nothing to excite.")
        speed = np.max(np.abs(np.gradient(shape, 1.0 / fps)))
        peak = np.max(np.abs(shape))
        scale = min(amplitude / peak, config.velocity_fraction * float(limits.max_velocity[index]) / speed)
        traj[n_hold:n_hold + n_move, index] = limits.center[index] + scale * shape
    return np.clip(traj, limits.lower, limits.upper)


class ExcitationDevice(TeleopDevice):
    """Plays an excitation trajectory as targets, one row per tick; done at its end.

    `reset(seed)` makes a new trajectory from `seed` (another episode, other phases), so a
    recording of several episodes holds independent trajectories (fit on some, check on one).
    """

    def __init__(self, config: ExcitationConfig, limits: JointLimits, fps: float) -> None:
        self.config, self.limits, self.fps = config, limits, float(fps)
        self.trajectory = excitation_trajectory(config, limits, fps)
        self._step = 0

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.config = ExcitationConfig(**{**self.config.__dict__, "seed": int(seed)})
            self.trajectory = excitation_trajectory(self.config, self.limits, self.fps)
        self._step = 0

    def next_target(self, observation: Observation) -> np.ndarray | None:
        if self._step >= len(self.trajectory):
            return None
        row = self.trajectory[self._step]
        self._step += 1
        return row.copy()

    @property
    def episode_done(self) -> bool:
        return self._step >= len(self.trajectory)

    @property
    def steps(self) -> int:
        return len(self.trajectory)

    def metadata(self) -> dict[str, Any]:
        """What was played (for the episode metadata of the recording)."""
        excited = [self.limits.names[i] for i in self.limits.select(self.config.joints)]
        return {"excitation": {**self.config.__dict__, "joints": excited}}


def _ramps(t: np.ndarray, duration: float, ramp: float) -> np.ndarray:
    """1 in the middle, cosine ramps from and to 0 over `ramp` seconds at both ends."""
    if ramp <= 0:
        return np.ones_like(t)
    up = np.clip(t / ramp, 0.0, 1.0)
    down = np.clip((duration - t) / ramp, 0.0, 1.0)
    return 0.5 * (1 - np.cos(np.pi * np.minimum(up, down)))


def _multisine(t: np.ndarray, slot: int, n_joints: int, f_min: float, f_max: float, harmonics: int,
               rng: np.random.Generator) -> np.ndarray:
    """Equal-velocity sine lines on a log grid; joint `slot` takes every n_joints-th line."""
    grid = np.geomspace(f_min, f_max, harmonics * n_joints)
    freqs = grid[slot::n_joints]
    phases = rng.uniform(0.0, 2 * np.pi, len(freqs))
    return sum(np.sin(2 * np.pi * f * t + p) / (2 * np.pi * f) for f, p in zip(freqs, phases, strict=True))


def _chirp(t: np.ndarray, f_min: float, f_max: float, duration: float,
           rng: np.random.Generator) -> np.ndarray:
    """A log chirp from f_min to f_max with amplitude ~ 1/f (constant velocity amplitude)."""
    k = np.log(f_max / f_min) / duration
    freq = f_min * np.exp(k * t)
    phase = 2 * np.pi * f_min * (np.exp(k * t) - 1) / k + rng.uniform(0.0, 2 * np.pi)
    return np.sin(phase) / (2 * np.pi * freq)
