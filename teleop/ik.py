"""End-effector teleop's inverse kinematics: the robot layer's one solver, on a robot's model.

The damped-least-squares solver itself is tether.robot.twin.ik.DLSIK (the twin's scripted
experts use it too). This module only finds the model to run it on: the twin's own, for one of
its arms. A real arm's MJCF is loaded by ee_control. MuJoCo is imported on first use, so
importing a teleop device stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from tether.robot.twin.ik import DLSIK


def twin_arm_ik(robot, arm_name: str | None = None, **kwargs) -> tuple[DLSIK, int]:
    """A DLSIK on the twin's own model for one of its arms; also returns the arm's index.

    The solver covers the arm joints (not the gripper); positions come and go in the Arm
    interface's units, which for arm joints are the model's radians.
    """
    sim = getattr(robot, "sim", None)
    if sim is None:
        raise ConfigError(
            f"Robot '{robot.name}' has no MuJoCo model to run IK on; end-effector teleop needs the "
            "twin, or an 'mjcf' model of the real arm in the teleop params."
        )
    names = list(robot.raw_arms)
    if arm_name and arm_name not in names:
        raise ConfigError(f"Robot '{robot.name}' has no arm '{arm_name}' (arms: {names}).")
    index = names.index(arm_name) if arm_name else 0
    from tether.robot.twin.ik import DLSIK

    return DLSIK.for_arm(sim.model, sim.arms[index], **kwargs), index
