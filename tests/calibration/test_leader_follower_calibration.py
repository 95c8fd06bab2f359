"""Leader/follower calibration file: mapping numbers, offsets from poses, file round trip, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tether.calibration.leader_follower import offsets_from_poses
from tether.core.errors import ConfigError
from tether.robot.interfaces import ArmSpec
from tether.robot.joint_map import (
    ArmPairCalibration,
    GripperMapping,
    JointMap,
    JointMapping,
    LeaderFollowerCalibration,
    default_pair,
)


def spec(name, joints, gripper=True, lower=-math.pi, upper=math.pi, grip=(0.0, 1.0)):
    names = tuple(joints) + (("gripper",) if gripper else ())
    n = len(names)
    lo, hi = np.full(n, lower), np.full(n, upper)
    if gripper:
        lo[-1], hi[-1] = grip
    return ArmSpec(name, names, lo, hi, np.clip(np.zeros(n), lo, hi), n - 1 if gripper else None)


LEADER = spec("leader", ["a", "b", "c"], grip=(0.2, 0.8))
FOLLOWER = spec("follower", ["a", "b", "c"], grip=(0.0, 1.0))


def test_mapping_applies_offset_direction_permutation_and_gripper():
    pair = ArmPairCalibration(
        joints=[
            JointMapping(follower="a", leader="b", offset=0.5, direction=-1),
            JointMapping(follower="b", leader="a"),
            JointMapping(follower="c", leader="c", offset=-math.pi / 2),
        ],
        gripper=GripperMapping("gripper", "gripper", (0.2, 0.8), (0.0, 1.0)),
    )
    mapping = JointMap(pair, LEADER, FOLLOWER)
    out = mapping(np.array([0.1, 0.3, 1.0, 0.5]))
    np.testing.assert_allclose(out, [0.5 - 0.3, 0.1, 1.0 - math.pi / 2, 0.5])
    # the gripper clips outside the leader's range
    assert mapping(np.array([0, 0, 0, 0.0]))[3] == 0.0
    assert mapping(np.array([0, 0, 0, 5.0]))[3] == 1.0


def test_default_pair_maps_by_name_and_scales_the_gripper():
    mapping = JointMap(default_pair(LEADER, FOLLOWER), LEADER, FOLLOWER)
    np.testing.assert_allclose(mapping(np.array([0.1, -0.2, 0.3, 0.35])), [0.1, -0.2, 0.3, 0.25])


def test_default_pair_refuses_arms_that_do_not_match():
    other = spec("other", ["x", "y"])
    with pytest.raises(ConfigError, match="calibration file"):
        default_pair(other, FOLLOWER)


def test_offsets_from_poses_recovers_quarter_turn_mounting():
    direction = np.array([1, -1, 1])
    true_offset = np.array([0.0, math.pi / 2, -math.pi])
    leader = np.array([0.3, -0.2, 1.1])
    follower = true_offset + direction * leader
    noisy = follower + np.array([0.05, -0.08, 0.1])  # poses matched by eye, not exactly
    snapped = offsets_from_poses(leader, noisy, direction, snap=math.pi / 2)
    np.testing.assert_allclose(snapped, true_offset)
    exact = offsets_from_poses(leader, follower, direction)
    np.testing.assert_allclose(exact, true_offset)


def test_file_round_trip(tmp_path):
    calibration = LeaderFollowerCalibration(
        pairs={
            "main": ArmPairCalibration(
                joints=[JointMapping("a", "a", 0.25, -1), JointMapping("b", "b"), JointMapping("c", "c")],
                gripper=GripperMapping("gripper", "gripper", (0.2, 0.8), (0.0, 1.0)),
            )
        }
    )
    path = calibration.save(tmp_path / "calib.yaml")
    loaded = LeaderFollowerCalibration.load(path)
    assert loaded == calibration
    mapping = JointMap(loaded.pairs["main"], LEADER, FOLLOWER)
    assert mapping(np.array([1.0, 0, 0, 0.5]))[0] == pytest.approx(-0.75)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("format: other/9\npairs: {}\n", "format"),
        ("pairs: {main: {joints: [{follower: a, leader: a, direction: 0}]}}\n", "direction must be 1 or -1"),
        ("pairs: {main: {joints: [{follower: a, leader: a, offst: 1}]}}\n", "offst"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        LeaderFollowerCalibration.load(path)


def test_unknown_or_missing_joints_are_named():
    with pytest.raises(ConfigError, match="Unknown leader joint .* 'zz'"):
        JointMap(ArmPairCalibration(joints=[JointMapping("a", "zz")]), LEADER, FOLLOWER)
    partial = ArmPairCalibration(joints=[JointMapping("a", "a")])
    with pytest.raises(ConfigError, match=r"\['b', 'c', 'gripper'\]"):
        JointMap(partial, LEADER, FOLLOWER)
