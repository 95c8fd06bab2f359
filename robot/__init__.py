"""Robot side of tether: device interfaces, the safety layer, the control loop, drivers, the twin.

Import the pieces from their modules (`tether.robot.interfaces`, `tether.robot.safety`, ...);
the most used names are re-exported here.
"""

from tether.robot.interfaces import (
    ACTION_KEY,
    STATE_KEY,
    Arm,
    ArmSpec,
    Camera,
    CameraSpec,
    Frame,
    JointState,
    Observation,
    Robot,
    image_key,
)
from tether.robot.safety import SafeArm, SafetyConfig, SafetyFilter

__all__ = [
    "ACTION_KEY",
    "STATE_KEY",
    "Arm",
    "ArmSpec",
    "Camera",
    "CameraSpec",
    "Frame",
    "JointState",
    "Observation",
    "Robot",
    "SafeArm",
    "SafetyConfig",
    "SafetyFilter",
    "image_key",
]
