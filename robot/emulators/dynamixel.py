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

import argparse
import time

from tether.robot.emulators.servo_bus import (
    WRITE_ACCESS,
    WRITE_OK,
    WRITE_OUT_OF_RANGE,
    WRITE_REJECTED,
    EmulatedServo,
    PtyBusEmulator,
    Register,
    ServoLayout,
    parse_ids,
    sync_write,
)

HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE
STATUS = 0x55

INST_PING, INST_READ, INST_WRITE, INST_REBOOT = 0x01, 0x02, 0x03, 0x08
INST_SYNC_READ, INST_SYNC_WRITE = 0x82, 0x83

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

    def __init__(
        self,
        ids: list[int] | dict[int, str] = (1,),
        model: str = "xl330-m288",
        baudrate: int = 1_000_000,
        positions: dict[int, int] | None = None,
    ) -> None:
        models = dict(ids) if isinstance(ids, dict) else {i: model for i in ids}
        positions = positions or {}
        servos = {
            i: DynamixelServo(i, m, position=positions.get(i, 2048)) for i, m in models.items()
        }
        super().__init__(servos, baudrate)

    # --- framing ----------------------------------------------------------------------------
    def extract_packets(self, buffer: bytearray) -> list[bytes]:
        packets = []
        while True:
            start = buffer.find(HEADER)
            if start < 0:
                del buffer[: max(0, len(buffer) - 3)]  # keep a possible partial header
                return packets
            del buffer[:start]
            if len(buffer) < 7:
                return packets
            length = buffer[5] | buffer[6] << 8
            if length < MIN_LENGTH:  # cannot hold an instruction and a CRC: not a header
                del buffer[0]
                continue
            total = 7 + length
            if len(buffer) < total:
                return packets
            packets.append(bytes(buffer[:total]))
            del buffer[:total]

    def handle(self, packet: bytes) -> list[bytes]:
        servo_id, instruction = packet[4], packet[7]
        self.counts[f"inst_{instruction:#04x}"] += 1
        if crc16(packet[:-2]) != (packet[-2] | packet[-1] << 8):
            self.counts["crc_errors"] += 1
            servo = self.servos.get(servo_id)
            if servo is None or not servo.responding or servo_id == BROADCAST_ID:
                return []
            return [self._status(servo, ERR_CRC)]
        params = unstuff(packet[8:-2])
        if instruction == INST_SYNC_READ:
            return self._sync_read(params)
        if instruction == INST_SYNC_WRITE:
            self._sync_write(params)
            return []
        if servo_id == BROADCAST_ID:
            if instruction == INST_PING:
                return [
                    self._ping_reply(s) for _, s in sorted(self.servos.items()) if s.responding
                ]
            if instruction == INST_WRITE and len(params) >= 2:
                address = params[0] | params[1] << 8
                for servo in self.servos.values():
                    servo.write(address, params[2:])
            return []
        servo = self.servos.get(servo_id)
        if servo is None or not servo.responding:
            return []  # nobody answers: the SDK times out
        if instruction == INST_PING:
            return [self._ping_reply(servo)]
        if instruction == INST_READ:
            if len(params) != 4:
                return [self._status(servo, ERR_DATA_LENGTH)]
            address, length = params[0] | params[1] << 8, params[2] | params[3] << 8
            if address + length > X_LAYOUT.table_size:
                return [self._status(servo, ERR_DATA_RANGE)]
            return [self._status(servo, 0, servo.read(address, length))]
        if instruction == INST_WRITE:
            if len(params) < 3:
                return [self._status(servo, ERR_DATA_LENGTH)]
            code = servo.write(params[0] | params[1] << 8, params[2:])
            return [self._status(servo, _WRITE_ERRORS[code])]
        if instruction == INST_REBOOT:
            servo.reboot()
            return [self._status(servo, 0)]
        return [self._status(servo, ERR_INSTRUCTION)]

    def _sync_read(self, params: bytes) -> list[bytes]:
        if len(params) < 5:
            return []
        address, length = params[0] | params[1] << 8, params[2] | params[3] << 8
        replies = []
        for servo_id in params[4:]:
            servo = self.servos.get(servo_id)
            if servo is None or not servo.responding:
                continue  # a missing servo leaves a gap: the SDK times out on it
            replies.append(self._status(servo, 0, servo.read(address, length)))
        return replies

    def _sync_write(self, params: bytes) -> None:
        if len(params) < 4:
            return
        address, length = params[0] | params[1] << 8, params[2] | params[3] << 8
        sync_write(self.servos, address, length, params[4:])

    # --- replies ----------------------------------------------------------------------------
    def _ping_reply(self, servo: EmulatedServo) -> bytes:
        firmware = servo.read(6, 1)
        return self._status(servo, 0, servo.model_number.to_bytes(2, "little") + firmware)

    def _status(self, servo: EmulatedServo, error: int, params: bytes = b"") -> bytes:
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
    parser = argparse.ArgumentParser(description="Emulate Dynamixel protocol 2.0 servos on a pty.")
    parser.add_argument("--ids", default="1-6", help="servo ids, e.g. 1-6 or 1,2,7")
    parser.add_argument("--model", default="xl330-m288", choices=sorted(MODEL_NUMBERS))
    parser.add_argument("--baudrate", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with DynamixelBusEmulator(parse_ids(args.ids), args.model, args.baudrate) as bus:
        print(bus.port, flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
