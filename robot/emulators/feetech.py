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

import argparse
import time

from tether.robot.emulators.servo_bus import (
    WRITE_CLAMPED,
    WRITE_OK,
    EmulatedServo,
    PtyBusEmulator,
    Register,
    ServoLayout,
    parse_ids,
    sync_write,
)

BROADCAST_ID = 0xFE
INST_PING, INST_READ, INST_WRITE, INST_REG_WRITE, INST_ACTION = 0x01, 0x02, 0x03, 0x04, 0x05
INST_SYNC_READ, INST_SYNC_WRITE = 0x82, 0x83

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

    def __init__(
        self,
        ids: list[int] | dict[int, str] = (1,),
        model: str = "sts3215",
        baudrate: int = 1_000_000,
        positions: dict[int, int] | None = None,
    ) -> None:
        models = dict(ids) if isinstance(ids, dict) else {i: model for i in ids}
        positions = positions or {}
        servos = {i: FeetechServo(i, m, position=positions.get(i, 2048)) for i, m in models.items()}
        super().__init__(servos, baudrate)
        self._registered: dict[int, tuple[int, bytes]] = {}

    def extract_packets(self, buffer: bytearray) -> list[bytes]:
        packets = []
        while True:
            start = buffer.find(b"\xff\xff")
            if start < 0:
                del buffer[: max(0, len(buffer) - 1)]
                return packets
            del buffer[:start]
            if len(buffer) < 4:
                return packets
            if buffer[2] == 0xFF:  # a third FF: the header starts one byte later
                del buffer[0]
                continue
            if buffer[3] < MIN_LENGTH:  # cannot hold an instruction and a checksum: not a header
                del buffer[0]
                continue
            total = 4 + buffer[3]
            if len(buffer) < total:
                return packets
            packets.append(bytes(buffer[:total]))
            del buffer[:total]

    def handle(self, packet: bytes) -> list[bytes]:
        servo_id, instruction = packet[2], packet[4]
        self.counts[f"inst_{instruction:#04x}"] += 1
        if checksum(packet[2:-1]) != packet[-1]:
            self.counts["checksum_errors"] += 1
            return []
        params = packet[5:-1]
        if len(params) < MIN_PARAMS.get(instruction, 0):
            self.counts["short_packets"] += 1
            return []  # a servo ignores an instruction missing its parameters
        if instruction == INST_SYNC_READ:
            address, length = params[0], params[1]
            return [
                self._status(self.servos[i], 0, self.servos[i].read(address, length))
                for i in params[2:]
                if i in self.servos and self.servos[i].responding
            ]
        if instruction == INST_SYNC_WRITE:
            sync_write(self.servos, params[0], params[1], params[2:])
            return []
        if instruction == INST_ACTION:
            targets = self.servos if servo_id == BROADCAST_ID else {servo_id: None}
            for target in list(targets):
                if target in self._registered and target in self.servos:
                    address, data = self._registered.pop(target)
                    self.servos[target].write(address, data)
            return [] if servo_id == BROADCAST_ID else self._reply_empty(servo_id)
        if servo_id == BROADCAST_ID:
            if instruction == INST_WRITE:
                for servo in self.servos.values():
                    servo.write(params[0], params[1:])
            return []
        servo = self.servos.get(servo_id)
        if servo is None or not servo.responding:
            return []
        if instruction == INST_PING:
            return [self._status(servo, 0)]
        if instruction == INST_READ:
            return [self._status(servo, 0, servo.read(params[0], params[1]))]
        if instruction == INST_WRITE:
            code = servo.write(params[0], params[1:])
            return [self._status(servo, ERRBIT_ANGLE if code == WRITE_CLAMPED else 0)]
        if instruction == INST_REG_WRITE:
            self._registered[servo_id] = (params[0], bytes(params[1:]))
            return [self._status(servo, 0)]
        return []  # unknown instruction: STS servos do not answer

    def _reply_empty(self, servo_id: int) -> list[bytes]:
        servo = self.servos.get(servo_id)
        return [self._status(servo, 0)] if servo is not None and servo.responding else []

    def _status(self, servo: EmulatedServo, error: int, params: bytes = b"") -> bytes:
        if servo.hardware_error:
            error |= ERRBIT_OVERLOAD
        return build_packet(servo.id, error, params)


def build_packet(servo_id: int, instruction_or_error: int, params: bytes) -> bytes:
    body = bytes([servo_id, len(params) + 2, instruction_or_error]) + params
    return b"\xff\xff" + body + bytes([checksum(body)])


def checksum(body: bytes) -> int:
    return ~sum(body) & 0xFF


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Emulate Feetech STS servos on a pty.")
    parser.add_argument("--ids", default="1-6", help="servo ids, e.g. 1-6")
    parser.add_argument("--model", default="sts3215", choices=sorted(MODEL_NUMBERS))
    parser.add_argument("--baudrate", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with FeetechBusEmulator(parse_ids(args.ids), args.model, args.baudrate) as bus:
        print(bus.port, flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
