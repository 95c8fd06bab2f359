"""Array names and specs: the one place that builds, parses and validates them.

Robot, recorder, store, dataset, policies and the wire protocol all exchange named arrays. The
names are built here and nowhere else, so a camera called `wrist_t` cannot be mistaken for a
time array and no module retypes a prefix:

    image.<camera>    uint8 (H, W, 3) RGB frames of one camera
    state             float32 (D,) all arms' joint positions, robot order (what policies read)
    state.<arm>       float32 (d,) one arm's joint positions
    action            float32 (D,) the commanded target, robot order

Timing is not a data array and never shares the data namespace: each stream has a `Timing`
record (`t_host`, `t_device`, `index`) that stores keep in a separate group (see data/layout).
Device and arm names are validated once (`validate_name`) when a robot config is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from tether.core.errors import ConfigError

STATE = "state"
ACTION = "action"
IMAGE = "image"
SEPARATOR = "."

#: What a stream's timing record holds. `t_host` is the host's monotonic clock (the only time
#: sync, skew and latency compare), `t_device` the device's own stamp, `index` its frame counter.
TIMING_FIELDS = ("t_host", "t_device", "index")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_RESERVED_SUFFIXES = ("_t", "_t_host", "_t_device", "_index")
_RESERVED_NAMES = frozenset({STATE, ACTION, IMAGE, "timestamp", "timing", "meta", "data"})


class Kind(StrEnum):
    IMAGE = IMAGE
    STATE = STATE
    ACTION = ACTION


@dataclass(frozen=True)
class Key:
    """A parsed array name: its kind and, for per-device arrays, the device's name."""

    kind: Kind
    device: str | None = None

    def __str__(self) -> str:
        if self.device is None:
            return self.kind.value
        return f"{self.kind.value}{SEPARATOR}{self.device}"

    @property
    def is_image(self) -> bool:
        return self.kind is Kind.IMAGE


def validate_name(name: str, what: str = "device") -> str:
    """`name` if it can name a camera or arm inside array keys, else ConfigError saying why.

    Names become key suffixes (`image.<name>`) and folder names in stores, so they must be plain
    identifiers: no dots or slashes, and none of the suffixes older stores used for timing.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{what} name {name!r} is not allowed: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter (no dots, slashes or spaces)."
        )
    if name in _RESERVED_NAMES:
        raise ConfigError(f"{what} name {name!r} is reserved; choose another name.")
    for suffix in _RESERVED_SUFFIXES:
        if name.endswith(suffix):
            raise ConfigError(
                f"{what} name {name!r} ends in {suffix!r}, which would read as a timing array "
                "in stores laid out like diffusion_policy's; choose another name."
            )
    return name


def image_key(camera: str) -> str:
    """`image.<camera>`: the key of one camera's frames everywhere (observations, stores, wire)."""
    return str(Key(Kind.IMAGE, validate_name(camera, "camera")))


def state_key(arm: str | None = None) -> str:
    """`state` (all arms, robot order) or `state.<arm>` (one arm)."""
    if arm is None:
        return STATE
    return str(Key(Kind.STATE, validate_name(arm, "arm")))


def parse_key(key: str) -> Key:
    """The `Key` behind an array name, or ConfigError naming the accepted forms."""
    kind_text, sep, device = key.partition(SEPARATOR)
    try:
        kind = Kind(kind_text)
    except ValueError:
        kind = None
    if kind is None or (kind is Kind.IMAGE and not sep) or (kind is Kind.ACTION and sep):
        raise ConfigError(
            f"array name {key!r} is not one of 'image.<camera>', 'state', 'state.<arm>', 'action'."
        )
    if not sep:
        return Key(kind)
    return Key(kind, validate_name(device, "camera" if kind is Kind.IMAGE else "arm"))


def is_image_key(key: str) -> bool:
    """True for `image.<camera>` names (without raising on other or malformed names)."""
    return key.startswith(IMAGE + SEPARATOR)


def camera_of(key: str) -> str:
    """The camera name in `image.<camera>` (ConfigError for any other name)."""
    parsed = parse_key(key)
    if not parsed.is_image:
        raise ConfigError(f"array name {key!r} is not a camera's ('image.<camera>').")
    assert parsed.device is not None
    return parsed.device


@dataclass(frozen=True)
class ArraySpec:
    """One named array's dtype and shape (per sample, without the time axis)."""

    name: str
    dtype: str  # numpy dtype name, e.g. "uint8", "float32"
    shape: tuple[int, ...]

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> ArraySpec:
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(int(s) for s in data["shape"]),
        )


@dataclass(frozen=True)
class PolicySpec:
    """What a policy needs and gives; the server's `info` reply carries exactly this."""

    policy_type: str  # a registered family ("act", "diffusion", ...) or "scripted", ...
    observation: tuple[ArraySpec, ...]
    action_dim: int
    chunk_size: int  # actions per predict_chunk call
    fps: float
    normalizer_hash: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def cameras(self) -> tuple[str, ...]:
        """Camera names the policy reads, in spec order."""
        return tuple(camera_of(a.name) for a in self.observation if is_image_key(a.name))

    def as_dict(self) -> dict:
        return {
            "policy_type": self.policy_type,
            "observation": [a.as_dict() for a in self.observation],
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "fps": self.fps,
            "normalizer_hash": self.normalizer_hash,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PolicySpec:
        return cls(
            policy_type=str(data["policy_type"]),
            observation=tuple(ArraySpec.from_dict(a) for a in data["observation"]),
            action_dim=int(data["action_dim"]),
            chunk_size=int(data["chunk_size"]),
            fps=float(data["fps"]),
            normalizer_hash=str(data.get("normalizer_hash", "")),
            extra=dict(data.get("extra", {})),
        )
