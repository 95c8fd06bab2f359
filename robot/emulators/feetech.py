"""Feetech STS/SCS bus emulator (STS3215, as in SO-100 / SO-101) on a pseudo-terminal.

The protocol is Dynamixel-1.0 shaped: `FF FF id len instruction params checksum`, where the
checksum is the inverted low byte of the sum of id..params. Implements PING, READ, WRITE,
REG WRITE + ACTION, SYNC READ and SYNC WRITE. A packet with a bad checksum, a length too short
to hold an instruction, or missing parameters is ignored (a real servo stays silent, so the SDK
times out). Status packets carry Feetech's error bits: angle
error when a goal outside the angle limits was clamped, overload when a hardware error is set.

Example:  python -m tether.robot.emulators.feetech --ids 1-6
"""

from __future__ import annotations

from tether.robot.emulators.servo_bus import (
    BROADCAST_ID,
    INST_READ,
    INST_SYNC_READ,
    INST_SYNC_WRITE,
    INST_WRITE,
    WRITE_CLAMPED,
    WRITE_OK,
    EmulatedServo,
    PtyBusEmulator,
    Register,
    Request,
    ServoLayout,
    run_from_command_line,
)

# The instruction codes both protocols share, re-exported as part of this protocol's set.
from tether.robot.emulators.servo_bus import INST_PING as INST_PING

INST_REG_WRITE, INST_ACTION = 0x04, 0x05  # PING, READ, WRITE, SYNC READ / WRITE: servo_bus

MIN_LENGTH = 2  # the length byte counts instruction + params + checksum
# Parameters an instruction cannot do without (address, length, ...).
MIN_PARAMS = {INST_READ: 2, INST_WRITE: 1, INST_REG_WRITE: 1, INST_SYNC_READ: 2, INST_SYNC_WRITE: 2}

ERRBIT_VOLTAGE, ERRBIT_ANGLE, ERRBIT_OVERHEAT, ERRBIT_OVERELE, ERRBIT_OVERLOAD = 1, 2, 4, 8, 32

STS_LAYOUT = ServoLayout(
    table_size=128,
    eeprom_end=40,
    min_position=Register(9, 2),
    max_position=Register(11, 2),
    operating_mode=Register(33, 1),
    torque_enable=Register(40, 1),
    goal_position=Register(42, 2, "bit15"),
    goal_velocity=Register(46, 2, "bit15"),
    present_position=Register(56, 2, "bit15"),
    present_velocity=Register(58, 2, "bit15"),
    present_effort=Register(60, 2, "bit10"),
    moving=Register(66, 1),
    read_only_from=56,
)
LOCK = Register(55, 1)

MODEL_NUMBERS = {"sts3215": 777, "sts3250": 2825, "scs0009": 1284}


class FeetechServo(EmulatedServo):
    def __init__(self, servo_id: int, model: str = "sts3215", **kwargs) -> None:
        number = MODEL_NUMBERS[model.lower()]
        super().__init__(servo_id, number, STS_LAYOUT, **kwargs)
        self.set(Register(3, 2), number)
        self.set(Register(5, 1), servo_id)
        self.set(Register(6, 1), 0)  # baud index 0 = 1 Mbps
        self.set(LOCK, 1)
        self.angle_error = False

    def eeprom_protected(self) -> bool:
        # STS servos accept EEPROM writes while torque is on (unlike Dynamixel); the Lock
        # register only decides whether they survive a power cycle, which is not modelled.
        return False

    def check_write(self, start: int, end: int) -> int:
        goal = STS_LAYOUT.goal_position
        if start < goal.address + goal.size and goal.address < end:
            low, high = self.get(STS_LAYOUT.min_position), self.get(STS_LAYOUT.max_position)
            value = self.get(goal)
            if not low <= value <= high:
                self.set(goal, min(max(value, low), high))
                return WRITE_CLAMPED
        return WRITE_OK


class FeetechBusEmulator(PtyBusEmulator):
    protocol_name = "feetech"
    servo_type = FeetechServo
    default_model = "sts3215"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._registered: dict[int, tuple[int, bytes]] = {}  # REG WRITE: id -> (address, data)

    header = b"\xff\xff"

    def packet_length(self, buffer: bytearray) -> int | None:
        if len(buffer) < 4:
            return None
        if buffer[2] == 0xFF:  # a third FF: the header starts one byte later
            return 0
        return 4 + buffer[3] if buffer[3] >= MIN_LENGTH else 0

    # --- requests (the dispatch is PtyBusEmulator.handle) ------------------------------------
    def decode(self, packet: bytes) -> Request | list[bytes]:
        servo_id, instruction = packet[2], packet[4]
        self.counts[f"inst_{instruction:#04x}"] += 1
        if checksum(packet[2:-1]) != packet[-1]:
            self.counts["checksum_errors"] += 1
            return []
        params = packet[5:-1]
        if len(params) < MIN_PARAMS.get(instruction, 0):
            self.counts["short_packets"] += 1
            return []  # a servo ignores an instruction missing its parameters
        return Request(servo_id, instruction, params)

    def write_error(self, code: int) -> int:
        return ERRBIT_ANGLE if code == WRITE_CLAMPED else 0

    def handle_other(self, request: Request) -> list[bytes]:
        servo_id, params = request.servo_id, request.params
        if request.instruction == INST_ACTION:
            targets = self.servos if servo_id == BROADCAST_ID else {servo_id: None}
            for target in list(targets):
                if target in self._registered and target in self.servos:
                    address, data = self._registered.pop(target)
                    self.servos[target].write(address, data)
        servo = self.responding(servo_id)
        if servo is None or servo_id == BROADCAST_ID:
            return []
        if request.instruction == INST_ACTION:
            return [self.status(servo, 0)]
        if request.instruction == INST_REG_WRITE:
            self._registered[servo_id] = (params[0], bytes(params[1:]))
            return [self.status(servo, 0)]
        return []  # unknown instruction: STS servos do not answer

    def status(self, servo: EmulatedServo, error: int, params: bytes = b"") -> bytes:
        if servo.hardware_error:
            error |= ERRBIT_OVERLOAD
        return build_packet(servo.id, error, params)


def build_packet(servo_id: int, instruction_or_error: int, params: bytes) -> bytes:
    body = bytes([servo_id, len(params) + 2, instruction_or_error]) + params
    return b"\xff\xff" + body + bytes([checksum(body)])


def checksum(body: bytes) -> int:
    return ~sum(body) & 0xFF


def main(argv: list[str] | None = None) -> None:
    run_from_command_line(FeetechBusEmulator, "Emulate Feetech STS servos on a pty.",
                          list(MODEL_NUMBERS), argv)


if __name__ == "__main__":
    main()
