"""The contract every Camera and Arm implementation must pass: drivers and the twin alike.

Use it by subclassing in a test module and providing a factory fixture:

    from tether.robot.testing.contract import ArmContract, CameraContract

    class TestMyCamera(CameraContract):
        @pytest.fixture
        def make_camera(self):
            return lambda: MyCamera(...)      # a fresh, unconnected camera each call

    class TestMyArm(ArmContract):
        @pytest.fixture
        def make_arm(self):
            return lambda: MyArm(...)

pytest collects the inherited tests for each subclass. Factories may return objects whose
underlying emulator is started by the fixture; tear it down in the fixture.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tether.core.errors import DeviceClosedError
from tether.robot.interfaces import Arm, Camera, Frame, JointState

# read() must return promptly: it hands over the newest frame, it does not wait for one. The
# behaviour is checked by frame indices (reads in a row return the same frame); this wall-clock
# bound only catches a read that hangs, with room for a loaded host.
READ_BUDGET_S = 0.5


class CameraContract:
    @pytest.fixture
    def make_camera(self):  # pragma: no cover - overridden
        raise NotImplementedError("subclasses provide a make_camera fixture")

    def test_connect_and_close_are_idempotent(self, make_camera):
        cam: Camera = make_camera()
        cam.close()  # before connect: no-op
        cam.connect()
        cam.connect()
        assert cam.is_connected
        cam.close()
        cam.close()
        assert not cam.is_connected

    def test_frames_have_the_declared_shape_and_dtype(self, make_camera):
        with make_camera() as cam:
            frame = cam.read()
            assert isinstance(frame, Frame)
            assert frame.image.dtype == np.uint8
            assert frame.image.shape == (cam.spec.height, cam.spec.width, 3)
            if frame.depth is not None:
                assert frame.depth.dtype == np.uint16
                assert frame.depth.shape == (cam.spec.height, cam.spec.width)

    def test_timestamps_and_indices_are_monotonic(self, make_camera):
        with make_camera() as cam:
            frames = []
            deadline = time.monotonic() + 3.0
            while len({f.index for f in frames}) < 4 and time.monotonic() < deadline:
                frames.append(cam.read())
                _advance_device(cam)
            distinct = {f.index: f for f in frames}
            assert len(distinct) >= 4, "camera delivered fewer than 4 distinct frames in 3 s"
            ordered = [distinct[i] for i in sorted(distinct)]
            for before, after in zip(ordered, ordered[1:]):
                assert after.t_device > before.t_device
                assert after.t_host >= before.t_host
            reads = [f.index for f in frames]
            assert reads == sorted(reads), "frame index went backwards between reads"

    def test_read_does_not_block(self, make_camera):
        with make_camera() as cam:
            cam.read()
            worst = 0.0
            indices = []
            for _ in range(20):
                t0 = time.perf_counter()
                indices.append(cam.read().index)
                worst = max(worst, time.perf_counter() - t0)
            # a read that waited for the next frame would return 20 different frames
            assert len(set(indices)) < len(indices), f"every read returned a new frame: {indices}"
            assert worst < READ_BUDGET_S, f"read() took {worst * 1e3:.1f} ms; it must not wait for a frame"

    def test_read_after_close_raises(self, make_camera):
        cam = make_camera()
        with pytest.raises(DeviceClosedError):
            cam.read()
        cam.connect()
        cam.close()
        with pytest.raises(DeviceClosedError):
            cam.read()


class ArmContract:
    @pytest.fixture
    def make_arm(self):  # pragma: no cover - overridden
        raise NotImplementedError("subclasses provide a make_arm fixture")

    def test_connect_and_close_are_idempotent(self, make_arm):
        arm: Arm = make_arm()
        arm.close()
        arm.connect()
        arm.connect()
        assert arm.is_connected
        arm.close()
        arm.close()
        assert not arm.is_connected

    def test_state_matches_spec(self, make_arm):
        with make_arm() as arm:
            state = arm.read()
            assert isinstance(state, JointState)
            assert state.position.shape == (arm.spec.dof,)
            assert np.all(np.isfinite(state.position))
            assert len(arm.spec.joint_names) == arm.spec.dof

    def test_timestamps_are_monotonic(self, make_arm):
        with make_arm() as arm:
            times = []
            for _ in range(10):
                times.append(arm.read().t_host)
                _advance_device(arm)
            assert times == sorted(times)

    def test_command_moves_toward_target(self, make_arm):
        with make_arm() as arm:
            start = arm.read().position.copy()
            target = start.copy()
            j = 0 if arm.spec.gripper_index != 0 else 1
            step = 0.05 if start[j] + 0.05 < arm.spec.upper[j] else -0.05
            target[j] += step
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                arm.command(target)
                _advance_device(arm)
                if abs(arm.read().position[j] - target[j]) < abs(step) / 2:
                    break
                time.sleep(0.01)
            assert abs(arm.read().position[j] - target[j]) < abs(step) / 2, (
                "arm did not move halfway toward a small commanded step within 3 s"
            )

    def test_read_does_not_block(self, make_arm):
        with make_arm() as arm:
            arm.read()
            t0 = time.perf_counter()
            for _ in range(10):
                arm.read()
            assert (time.perf_counter() - t0) / 10 < READ_BUDGET_S  # no hang (loaded-host margin)

    def test_io_after_close_raises(self, make_arm):
        arm = make_arm()
        with pytest.raises(DeviceClosedError):
            arm.read()
        arm.connect()
        arm.close()
        with pytest.raises(DeviceClosedError):
            arm.read()
        with pytest.raises(DeviceClosedError):
            arm.command(arm.spec.home)


def _advance_device(device) -> None:
    """Let time pass for the device: simulated devices expose `advance()`, real ones need a wait."""
    advance = getattr(device, "advance", None)
    if callable(advance):
        advance()
    else:
        time.sleep(0.02)
