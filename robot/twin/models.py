"""MJCF models of the twin, written here from published kinematics with primitive geoms.

Nothing is downloaded: every scene is a string built from the arm descriptions below, so a
fresh checkout renders and simulates with `pip install mujoco` alone.

Two arms:
- `so101`: a low-cost 5-joint arm plus gripper (SO-100/SO-101, Koch class). Link lengths and
  joint limits follow the SO-101 URDF (base 62 mm + 54 mm shoulder, 113 mm upper arm with a
  28 mm offset, 135 mm forearm, 35 mm wrist); the jaw is modelled as a parallel gripper.
- `vx300`: a 6-joint ViperX-300 class arm plus gripper (the ALOHA follower): 127 mm shoulder
  height, 300 mm upper arm with a 60 mm offset, 300 mm forearm split by the forearm roll,
  70 mm wrist.

Both grippers are two sliding fingers coupled by an equality constraint and driven by one
position actuator. The arm interface reports the gripper normalized: 0 closed, 1 fully open,
so the safety layer's per-tick step means the same for both arms.

Physics: 2 ms steps (adjusted so a control period is a whole number of steps), implicitfast
integration, elliptic friction cones with a high impratio (stable grasps), gravity compensation
on arm links (the real servos hold their pose), joint armature for the reflected gear inertia.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArmModel:
    """Static description of one arm kind: its joints and how the gripper maps to the sim."""

    kind: str
    joints: tuple[str, ...]  # actuated arm joints (without the gripper), base to tip
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    home: tuple[float, ...]  # arm joints + normalized gripper
    finger_stroke: float  # metres of travel per finger from closed to fully open

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.joints + ("gripper",)


SO101 = ArmModel(
    kind="so101",
    joints=("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"),
    lower=(-1.92, -1.75, -1.69, -1.66, -2.74),
    upper=(1.92, 1.75, 1.69, 1.66, 2.84),
    home=(0.0, -0.19, -0.21, 1.17, 0.0, 1.0),
    finger_stroke=0.035,
)

VX300 = ArmModel(
    kind="vx300",
    joints=("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"),
    lower=(-3.14, -1.85, -1.76, -3.14, -1.87, -3.14),
    upper=(3.14, 1.26, 1.61, 3.14, 2.23, 3.14),
    home=(0.0, -0.46, 0.47, 0.0, 1.56, 0.0, 1.0),
    finger_stroke=0.037,
)

ARM_MODELS = {"so101": SO101, "vx300": VX300}

_ARM_RGBA = "0.92 0.92 0.95 1"
_DARK_RGBA = "0.15 0.15 0.18 1"
_PAD_RGBA = "0.1 0.1 0.1 1"


def scene_xml(
    arms: list[tuple[str, str, tuple[float, float, float], float]],
    objects: str,
    cameras: str,
    timestep: float,
    extra_equality: str = "",
) -> str:
    """A full scene: table, lights, the given arms `(kind, prefix, base_pos, base_yaw)`, objects.

    `objects` and `cameras` are MJCF fragments placed in the worldbody. Offscreen buffers are
    sized for 480x640 renders; multisampling is off because it dominates CPU render cost.
    """
    arm_bodies = []
    actuators = []
    equalities = []
    for kind, prefix, pos, yaw in arms:
        body, actuator, equality = _ARM_BUILDERS[kind](prefix, pos, yaw)
        arm_bodies.append(body)
        actuators.append(actuator)
        equalities.append(equality)
    return f"""
<mujoco model="tether_twin">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep:.9f}" integrator="implicitfast" cone="elliptic" impratio="10"
          noslip_iterations="0"/>
  <visual>
    <global offwidth="640" offheight="480"/>
    <quality offsamples="0" shadowsize="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <geom solref="0.004 1" solimp="0.95 0.99 0.001" friction="1 0.01 0.001"/>
    <default class="arm">
      <joint armature="0.02" damping="0.05" frictionloss="0.0"/>
      <geom contype="1" conaffinity="1" group="1" rgba="{_ARM_RGBA}" density="400"/>
    </default>
    <default class="pad">
      <geom contype="1" conaffinity="1" friction="2 0.02 0.002" rgba="{_PAD_RGBA}"
            density="800" priority="1" condim="4"/>
    </default>
  </default>
  <worldbody>
    <light name="key" pos="0 -0.6 1.5" dir="0 0.4 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="table" type="box" size="0.8 0.6 0.02" pos="0 0 -0.02" rgba="0.55 0.45 0.35 1"
          contype="1" conaffinity="1"/>
    <geom name="backdrop_x" type="box" size="0.01 1.2 0.6" pos="-0.75 0 0.4"
          rgba="0.78 0.8 0.82 1" contype="0" conaffinity="0"/>
    <geom name="backdrop_y" type="box" size="1.2 0.01 0.6" pos="0 0.75 0.4"
          rgba="0.72 0.76 0.8 1" contype="0" conaffinity="0"/>
    {"".join(arm_bodies)}
    {objects}
    {cameras}
  </worldbody>
  <equality>
    {"".join(equalities)}
    {extra_equality}
  </equality>
  <actuator>
    {"".join(actuators)}
  </actuator>
</mujoco>
"""


def _quat_z(yaw: float) -> str:
    return f"{np.cos(yaw / 2):.9f} 0 0 {np.sin(yaw / 2):.9f}"


def _gripper(prefix: str, palm_x: float, half_width: float, pad_len: float, tcp_x: float,
             pad_half: float, stroke: float) -> str:
    """Palm, two fingers sliding along the body's y axis, the TCP site and a wrist camera.

    The gripper body's x axis is the approach direction; fingers close along y. At q = 0 the
    pads' inner faces meet at y = 0 (with a 2 mm gap), at q = stroke they are 2*stroke apart.
    """
    finger_x = palm_x + 0.03
    return f"""
          <geom name="{prefix}palm" type="box" pos="{palm_x:.4f} 0 0"
                size="0.02 {half_width:.4f} 0.016" class="arm" rgba="{_DARK_RGBA}"/>
          <site name="{prefix}tcp" pos="{tcp_x:.4f} 0 0" size="0.004" rgba="1 0 0 0.5" group="4"/>
          <camera name="{prefix}wrist" pos="{palm_x + 0.02:.4f} 0 0.045" mode="fixed"
                  xyaxes="0 -1 0 0.45 0 0.9" fovy="75"/>
          <body name="{prefix}finger_left" pos="{finger_x:.4f} 0 0">
            <joint name="{prefix}finger_left" type="slide" axis="0 1 0" range="0 {stroke:.4f}"
                   armature="0.01" damping="2"/>
            <geom name="{prefix}pad_left" type="box" class="pad"
                  pos="{pad_len / 2:.4f} 0.005 0" size="{pad_len / 2:.4f} 0.004 {pad_half:.4f}"/>
          </body>
          <body name="{prefix}finger_right" pos="{finger_x:.4f} 0 0">
            <joint name="{prefix}finger_right" type="slide" axis="0 -1 0" range="0 {stroke:.4f}"
                   armature="0.01" damping="2"/>
            <geom name="{prefix}pad_right" type="box" class="pad"
                  pos="{pad_len / 2:.4f} -0.005 0" size="{pad_len / 2:.4f} 0.004 {pad_half:.4f}"/>
          </body>"""


def _gripper_actuation(prefix: str, stroke: float, kp: float, force: float) -> tuple[str, str]:
    actuator = (
        f'<position name="{prefix}gripper" joint="{prefix}finger_left" kp="{kp}" dampratio="1" '
        f'ctrlrange="0 {stroke:.4f}" forcerange="-{force} {force}"/>\n'
    )
    equality = (
        f'<joint joint1="{prefix}finger_right" joint2="{prefix}finger_left" '
        f'polycoef="0 1 0 0 0" solref="0.005 1"/>\n'
    )
    return actuator, equality


def _so101(prefix: str, pos: tuple[float, float, float], yaw: float) -> tuple[str, str, str]:
    m = SO101
    r = {j: (lo, hi) for j, lo, hi in zip(m.joints, m.lower, m.upper, strict=True)}

    def rng(j: str) -> str:
        return f"{r[j][0]} {r[j][1]}"

    body = f"""
    <body name="{prefix}base" pos="{pos[0]} {pos[1]} {pos[2]}" quat="{_quat_z(yaw)}" childclass="arm">
      <geom type="cylinder" size="0.045 0.031" pos="0 0 0.031" rgba="{_DARK_RGBA}"/>
      <body name="{prefix}shoulder" pos="0 0 0.0624" gravcomp="1">
        <joint name="{prefix}shoulder_pan" axis="0 0 1" range="{rng("shoulder_pan")}"/>
        <geom type="box" size="0.025 0.03 0.027" pos="0 0 0.027"/>
        <body name="{prefix}upper_arm" pos="0 0 0.054" gravcomp="1">
          <joint name="{prefix}shoulder_lift" axis="0 1 0" range="{rng("shoulder_lift")}"/>
          <geom type="capsule" fromto="0 0 0 0.028 0 0.1126" size="0.018"/>
          <body name="{prefix}forearm" pos="0.028 0 0.1126" gravcomp="1">
            <joint name="{prefix}elbow_flex" axis="0 1 0" range="{rng("elbow_flex")}"/>
            <geom type="capsule" fromto="0 0 0 0.1349 0 0" size="0.016"/>
            <body name="{prefix}wrist" pos="0.1349 0 0" euler="0 0.8 0" gravcomp="1">
              <joint name="{prefix}wrist_flex" axis="0 1 0" range="{rng("wrist_flex")}"/>
              <geom type="capsule" fromto="0 0 0 0.03 0 0" size="0.015"/>
              <body name="{prefix}gripper" pos="0.035 0 0" gravcomp="1">
                <joint name="{prefix}wrist_roll" axis="1 0 0" range="{rng("wrist_roll")}"/>
                {_gripper(prefix, palm_x=0.03, half_width=0.045, pad_len=0.06, tcp_x=0.10,
                          pad_half=0.011, stroke=m.finger_stroke)}
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""
    actuators = "".join(
        f'<position name="{prefix}{j}" joint="{prefix}{j}" kp="40" dampratio="1" '
        f'ctrlrange="{rng(j)}" forcerange="-4 4"/>\n'
        for j in m.joints
    )
    grip_act, equality = _gripper_actuation(prefix, m.finger_stroke, kp=300, force=6)
    return body, actuators + grip_act, equality


def _vx300(prefix: str, pos: tuple[float, float, float], yaw: float) -> tuple[str, str, str]:
    m = VX300
    r = {j: (lo, hi) for j, lo, hi in zip(m.joints, m.lower, m.upper, strict=True)}

    def rng(j: str) -> str:
        return f"{r[j][0]} {r[j][1]}"

    body = f"""
    <body name="{prefix}base" pos="{pos[0]} {pos[1]} {pos[2]}" quat="{_quat_z(yaw)}" childclass="arm">
      <geom type="box" size="0.06 0.06 0.036" pos="0 0 0.036" rgba="{_DARK_RGBA}"/>
      <body name="{prefix}shoulder_link" pos="0 0 0.079" gravcomp="1">
        <joint name="{prefix}waist" axis="0 0 1" range="{rng("waist")}"/>
        <geom type="cylinder" size="0.035 0.024" pos="0 0 0.024"/>
        <body name="{prefix}upper_arm" pos="0 0 0.04805" gravcomp="1">
          <joint name="{prefix}shoulder" axis="0 1 0" range="{rng("shoulder")}"/>
          <geom type="capsule" fromto="0 0 0 0.05955 0 0.3" size="0.025"/>
          <body name="{prefix}upper_forearm" pos="0.05955 0 0.3" gravcomp="1">
            <joint name="{prefix}elbow" axis="0 1 0" range="{rng("elbow")}"/>
            <geom type="capsule" fromto="0 0 0 0.2 0 0" size="0.022"/>
            <body name="{prefix}lower_forearm" pos="0.2 0 0" gravcomp="1">
              <joint name="{prefix}forearm_roll" axis="1 0 0" range="{rng("forearm_roll")}"/>
              <geom type="capsule" fromto="0 0 0 0.1 0 0" size="0.02"/>
              <body name="{prefix}wrist" pos="0.1 0 0" gravcomp="1">
                <joint name="{prefix}wrist_angle" axis="0 1 0" range="{rng("wrist_angle")}"/>
                <geom type="capsule" fromto="0 0 0 0.065 0 0" size="0.018"/>
                <body name="{prefix}gripper" pos="0.069744 0 0" gravcomp="1">
                  <joint name="{prefix}wrist_rotate" axis="1 0 0" range="{rng("wrist_rotate")}"/>
                  {_gripper(prefix, palm_x=0.03, half_width=0.05, pad_len=0.06, tcp_x=0.10,
                            pad_half=0.010, stroke=m.finger_stroke)}
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""
    actuators = "".join(
        f'<position name="{prefix}{j}" joint="{prefix}{j}" kp="{kp}" dampratio="1" '
        f'ctrlrange="{rng(j)}" forcerange="-{f} {f}"/>\n'
        for j, kp, f in zip(m.joints, (120, 200, 160, 60, 60, 40), (12, 20, 16, 6, 6, 4), strict=True)
    )
    grip_act, equality = _gripper_actuation(prefix, m.finger_stroke, kp=400, force=10)
    return body, actuators + grip_act, equality


_ARM_BUILDERS = {"so101": _so101, "vx300": _vx300}


def free_box(name: str, half: tuple[float, float, float], rgba: str, mass: float) -> str:
    """A free-floating box (pose set at reset), e.g. the cube or the peg."""
    return f"""
    <body name="{name}" pos="0 0 {half[2]:.4f}">
      <freejoint name="{name}"/>
      <geom name="{name}" type="box" size="{half[0]} {half[1]} {half[2]}" rgba="{rgba}"
            mass="{mass}" condim="4" friction="1.5 0.02 0.002"/>
    </body>"""


def socket(name: str, inner_half: float, wall: float, height: float, rgba: str) -> str:
    """A square socket of four walls on a mocap body (fixed, pose set at reset)."""
    outer = inner_half + wall
    walls = []
    for i, (x, y, sx, sy) in enumerate(
        [
            (inner_half + wall / 2, 0, wall / 2, outer),
            (-(inner_half + wall / 2), 0, wall / 2, outer),
            (0, inner_half + wall / 2, inner_half, wall / 2),
            (0, -(inner_half + wall / 2), inner_half, wall / 2),
        ]
    ):
        walls.append(
            f'<geom name="{name}_wall{i}" type="box" pos="{x:.4f} {y:.4f} {height / 2:.4f}" '
            f'size="{sx:.4f} {sy:.4f} {height / 2:.4f}" rgba="{rgba}" friction="0.4 0.01 0.001"/>'
        )
    walls.append(
        f'<geom name="{name}_floor" type="box" pos="0 0 0.001" size="{inner_half:.4f} '
        f'{inner_half:.4f} 0.001" rgba="0.2 0.2 0.2 1" contype="0" conaffinity="0"/>'
    )
    return f'<body name="{name}" mocap="true" pos="0 0 0">{"".join(walls)}</body>'
