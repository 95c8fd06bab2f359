"""Protocol emulators that stand in for hardware on machines with nothing plugged in.

They speak the real wire protocols, so the vendors' own SDKs talk to them unchanged:

- `DynamixelBusEmulator`: Dynamixel protocol 2.0 servos (X-series control table) on a
  pseudo-terminal, which `dynamixel_sdk.PortHandler` opens like a U2D2 serial port.
- `FeetechBusEmulator`: Feetech STS/SCS servos (SO-100/SO-101) on a pseudo-terminal, for
  `scservo_sdk`.

Use them in tests, in demos (`tether emulate-bus`), or to try a leader/follower config
without an arm on the desk.
"""

from tether.robot.emulators.dynamixel import DynamixelBusEmulator
from tether.robot.emulators.feetech import FeetechBusEmulator
from tether.robot.emulators.servo_bus import EmulatedServo, PtyBusEmulator

__all__ = ["DynamixelBusEmulator", "EmulatedServo", "FeetechBusEmulator", "PtyBusEmulator"]
