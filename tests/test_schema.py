"""Array names: built, parsed and validated in one place (tether.core.schema)."""

from __future__ import annotations

import pytest

from tether.core.config import from_dict
from tether.core.errors import ConfigError
from tether.core.schema import (
    ArraySpec,
    Key,
    Kind,
    PolicySpec,
    camera_of,
    image_key,
    is_image_key,
    parse_key,
    state_key,
    validate_name,
)
from tether.robot.config import RobotConfig


@pytest.mark.parametrize("key, parsed", [
    ("image.top", Key(Kind.IMAGE, "top")),
    ("image.left_wrist", Key(Kind.IMAGE, "left_wrist")),
    ("state", Key(Kind.STATE)),
    ("state.left", Key(Kind.STATE, "left")),
    ("action", Key(Kind.ACTION)),
])
def test_keys_round_trip_through_parse(key, parsed):
    assert parse_key(key) == parsed
    assert str(parsed) == key


def test_builders_give_the_documented_names():
    assert image_key("top") == "image.top"
    assert state_key() == "state"
    assert state_key("right") == "state.right"
    assert camera_of("image.angle") == "angle"
    assert is_image_key("image.top") and not is_image_key("state")


@pytest.mark.parametrize("name", [
    "wrist_t", "top_t_host", "cam_index", "cam_t_device",  # read as timing arrays by older stores
    "a.b", "a/b", "", " top", "1cam", "image", "state", "action", "timestamp", "x" * 65,
])
def test_names_that_would_break_keys_are_refused_with_the_reason(name):
    with pytest.raises(ConfigError, match="name"):
        validate_name(name, "camera")
    with pytest.raises(ConfigError):
        image_key(name)


@pytest.mark.parametrize("key", ["image", "image.", "action.left", "pose", "image.a.b", "state.x_t"])
def test_malformed_keys_are_refused_naming_the_accepted_forms(key):
    with pytest.raises(ConfigError):
        parse_key(key)


def test_a_robot_config_with_a_bad_camera_name_fails_on_load():
    data = {"name": "r", "arms": [{"name": "main", "driver": "memory"}],
            "cameras": [{"name": "wrist_t", "driver": "memory"}]}
    with pytest.raises(ConfigError, match="wrist_t"):
        from_dict(RobotConfig, data)


def test_policy_spec_round_trips_and_names_its_cameras():
    spec = PolicySpec(
        policy_type="act",
        observation=(ArraySpec("state", "float32", (6,)), ArraySpec("image.top", "uint8", (96, 96, 3)),
                     ArraySpec("image.wrist", "uint8", (96, 96, 3))),
        action_dim=6, chunk_size=10, fps=10.0, extra={"k": 1},
    )
    assert PolicySpec.from_dict(spec.as_dict()) == spec
    assert spec.cameras == ("top", "wrist")
