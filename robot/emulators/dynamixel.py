"""Dynamixel protocol 2.0 bus emulator (X-series control table) on a pseudo-terminal.

Implements what ALOHA, Koch and GELLO drivers use: PING (unicast and broadcast), READ, WRITE,
SYNC READ, SYNC WRITE and REBOOT, with CRC-16 (polynomial 0x8005), byte stuffing in both
directions, and status packets carrying the protocol's error numbers: CRC error for a damaged
instruction, instruction error for unknown ones, data range / data limit errors, access error
for EEPROM writes while torque is on, and the alert bit when a servo has a hardware error.

Example, from a shell (then point a config's `port:` at the printed path):

    python -m tether.robot.emulators.dynamixel --ids 1-6 --model xl330-m288
"""

from __future__ import annotations

from tether.robot.emulators.servo_bus import (
    BROADCAST_ID,
    INST_READ,
    INST_WRITE,
    WRITE_ACCESS,
    WRITE_OK,
    WRITE_OUT_OF_RANGE,
    WRITE_REJECTED,
    EmulatedServo,
    PtyBusEmulator,
    Register,
    Request,
    ServoLayout,
    run_from_command_line,
)

# The instruction codes both protocols share, re-exported as part of this protocol's set.
from tether.robot.emulators.servo_bus import INST_PING as INST_PING
from tether.robot.emulators.servo_bus import INST_SYNC_READ as INST_SYNC_READ
from tether.robot.emulators.servo_bus import INST_SYNC_WRITE as INST_SYNC_WRITE

HEADER = b"\xff\xff\xfd\x00"
STATUS = 0x55

INST_REBOOT = 0x08  # PING, READ, WRITE, SYNC READ / WRITE and BROADCAST_ID: see servo_bus

MIN_LENGTH = 3  # the length field counts instruction + params + 2 CRC bytes

ERR_RESULT_FAIL, ERR_INSTRUCTION, ERR_CRC = 1, 2, 3
ERR_DATA_RANGE, ERR_DATA_LENGTH, ERR_DATA_LIMIT, ERR_ACCESS = 4, 5, 6, 7
ALERT = 0x80

# X-series control table (XL330 / XL430 / XM430 / XM540 share these addresses).
X_LAYOUT = ServoLayout(
    table_size=256,
    eeprom_end=64,
    operating_mode=Register(11, 1),
    torque_enable=Register(64, 1),
    hardware_error=Register(70, 1),
    goal_velocity=Register(104, 4, "twos"),
    goal_position=Register(116, 4, "twos"),
    moving=Register(122, 1),
    present_effort=Register(126, 2, "twos"),
    present_velocity=Register(128, 4, "twos"),
    present_position=Register(132, 4, "twos"),
    max_position=Register(48, 4, "twos"),
    min_position=Register(52, 4, "twos"),
    read_only_from=120,
)

MODEL_NUMBERS = {
    "xl330-m077": 1190,
    "xl330-m288": 1200,
    "xc330-m288": 1240,
    "xl430-w250": 1060,
    "xm430-w350": 1020,
    "xm540-w270": 1120,
    "xh430-w350": 1010,
}

OP_CURRENT, OP_VELOCITY, OP_POSITION, OP_EXTENDED, OP_CURRENT_POSITION, OP_PWM = 0, 1, 3, 4, 5, 16
VALID_MODES = {OP_CURRENT, OP_VELOCITY, OP_POSITION, OP_EXTENDED, OP_CURRENT_POSITION, OP_PWM}
VELOCITY_UNIT_RPM = 0.229


class DynamixelServo(EmulatedServo):
    def __init__(self, servo_id: int, model: str | int = "xl330-m288", **kwargs) -> None:
        number = MODEL_NUMBERS[model.lower()] if isinstance(model, str) else int(model)
        super().__init__(servo_id, number, X_LAYOUT, **kwargs)
        self.set(Register(0, 2), number)
        self.set(Register(6, 1), 52)  # firmware version
        self.set(Register(7, 1), servo_id)
        self.set(Register(8, 1), 3)  # baud rate index 3 = 1 Mbps
        self.set(X_LAYOUT.operating_mode, OP_POSITION)
        self.set(Register(68, 1), 2)  # status return level: reply to everything

    def check_write(self, start: int, end: int) -> int:
        mode_reg = X_LAYOUT.operating_mode
        if start <= mode_reg.address < end and self.get(mode_reg) not in VALID_MODES:
            return WRITE_REJECTED
        goal = X_LAYOUT.goal_position
        if start < goal.address + goal.size and goal.address < end:
            if self.get(mode_reg) in (OP_POSITION, OP_CURRENT_POSITION):
                low, high = self.get(X_LAYOUT.min_position), self.get(X_LAYOUT.max_position)
                if not low <= self.get(goal) <= high:
                    return WRITE_REJECTED
        return WRITE_OK

    def goal_ticks(self) -> float | None:
        mode = self.get(X_LAYOUT.operating_mode)
        if mode in (OP_POSITION, OP_EXTENDED, OP_CURRENT_POSITION):
            return float(self.get(X_LAYOUT.goal_position))
        if mode == OP_VELOCITY:
            ticks_per_s = self.get(X_LAYOUT.goal_velocity) * VELOCITY_UNIT_RPM * 4096 / 60.0
            return self._position + ticks_per_s * 0.05  # chase a point just ahead
        return None  # current / PWM mode: no position goal

    def velocity_units(self, ticks_per_s: float) -> float:
        return ticks_per_s * 60.0 / 4096 / VELOCITY_UNIT_RPM


class DynamixelBusEmulator(PtyBusEmulator):
    """Servos with the given ids (all of one model, or a dict id -> model) on a pty bus."""

    protocol_name = "dynamixel"
    field_bytes = 2  # addresses and lengths are 16-bit little endian
    answers_broadcast_ping = True
    servo_type = DynamixelServo
    default_model = "xl330-m288"

    # --- framing ----------------------------------------------------------------------------
    header = HEADER

    def packet_length(self, buffer: bytearray) -> int | None:
        if len(buffer) < 7:
            return None
        length = buffer[5] | buffer[6] << 8  # instruction + params + 2 CRC bytes
        return 7 + length if length >= MIN_LENGTH else 0

    # --- requests (the dispatch is PtyBusEmulator.handle) ------------------------------------
    def decode(self, packet: bytes) -> Request | list[bytes]:
        servo_id, instruction = packet[4], packet[7]
        self.counts[f"inst_{instruction:#04x}"] += 1
        if crc16(packet[:-2]) != (packet[-2] | packet[-1] << 8):
            self.counts["crc_errors"] += 1
            servo = self.responding(servo_id)
            if servo is None or servo_id == BROADCAST_ID:
                return []
            return [self.status(servo, ERR_CRC)]
        return Request(servo_id, instruction, unstuff(packet[8:-2]))

    def params_error(self, instruction: int, params: bytes) -> int | None:
        if instruction == INST_READ:
            if len(params) != 4:
                return ERR_DATA_LENGTH
            address, length = self.fields(params, 2)
            return ERR_DATA_RANGE if address + length > X_LAYOUT.table_size else None
        if instruction == INST_WRITE and len(params) < 3:
            return ERR_DATA_LENGTH
        return None

    def write_error(self, code: int) -> int:
        return _WRITE_ERRORS[code]

    def handle_other(self, request: Request) -> list[bytes]:
        servo = self.responding(request.servo_id)
        if servo is None:
            return []  # nobody answers (a broadcast included)
        if request.instruction == INST_REBOOT:
            servo.reboot()
            return [self.status(servo, 0)]
        return [self.status(servo, ERR_INSTRUCTION)]

    # --- replies ----------------------------------------------------------------------------
    def ping_reply(self, servo: EmulatedServo) -> bytes:
        firmware = servo.read(6, 1)
        return self.status(servo, 0, servo.model_number.to_bytes(2, "little") + firmware)

    def status(self, servo: EmulatedServo, error: int, params: bytes = b"") -> bytes:
        if servo.hardware_error:
            error |= ALERT
        return build_packet(servo.id, STATUS, bytes([error]) + params)


_WRITE_ERRORS = {
    WRITE_OK: 0,
    WRITE_OUT_OF_RANGE: ERR_DATA_RANGE,
    WRITE_ACCESS: ERR_ACCESS,
    WRITE_REJECTED: ERR_DATA_LIMIT,
}


def build_packet(servo_id: int, instruction: int, params: bytes) -> bytes:
    """A complete protocol 2.0 packet: header, id, length, instruction, stuffed params, CRC."""
    body = stuff(bytes([instruction]) + params, prefix=b"")
    length = len(body) + 2
    packet = HEADER + bytes([servo_id, length & 0xFF, length >> 8]) + body
    crc = crc16(packet)
    return packet + bytes([crc & 0xFF, crc >> 8])


def stuff(data: bytes, prefix: bytes = b"") -> bytes:
    """Insert 0xFD after every FF FF FD so the payload can never look like a header."""
    out = bytearray(prefix)
    for byte in data:
        out.append(byte)
        if byte == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            out.append(0xFD)
    return bytes(out[len(prefix) :])


def unstuff(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        out.append(data[i])
        if data[i] == 0xFD and i + 1 < len(data) and data[i + 1] == 0xFD:
            if len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
                i += 1  # skip the stuffing byte
        i += 1
    return bytes(out)


def crc16(data: bytes) -> int:
    """CRC-16 (polynomial 0x8005, no reflection, init 0) as the protocol 2.0 spec defines it."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def main(argv: list[str] | None = None) -> None:
    run_from_command_line(DynamixelBusEmulator, "Emulate Dynamixel protocol 2.0 servos on a pty.",
                          list(MODEL_NUMBERS), argv)


if __name__ == "__main__":
    main()
