"""The pieces every servo-bus emulator shares: a pseudo-terminal, a reader thread, servo memory.

A real bus adapter (U2D2, Waveshare/Feetech board) appears as a serial device; a pty slave looks
the same to pyserial, so the vendors' `PortHandler` opens it unchanged and every byte the SDK
sends reaches this emulator, which answers with the bytes a servo would. Protocol subclasses
only parse packets and build replies; the servo model here holds the control table and moves
the present position toward the goal in wall-clock time.

Fault injection, for tests of the driver's error paths: a servo can be made silent (rx
timeout), report a hardware error (alert bit / overload), or the next replies can carry a
corrupted checksum. A port opened at a baud rate the bus is not running at gets no replies,
like a real bus.

Garbage never stops the bus: bytes that do not frame a packet are skipped, a packet too short
or with missing parameters is ignored (a real servo stays silent), and a half-received packet
is dropped when the line stays quiet for `PARTIAL_PACKET_TIMEOUT_S`, as servo firmware does.
A request the protocol code cannot parse is counted in `counts["malformed"]`, never raised on
the reader thread, so a wrong `--protocol` in `tether scan-bus` cannot kill the emulator.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import termios
import threading
import time
import tty
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

TICKS_PER_TURN = 4096
# A half-received packet older than this is dropped when new bytes arrive. The SDK writes a
# packet in one call, so its bytes arrive together; a gap this long means the sender gave up.
PARTIAL_PACKET_TIMEOUT_S = 0.1


@dataclass(frozen=True)
class Register:
    address: int
    size: int
    signed: str = "none"  # "none", "twos" (two's complement) or "bit<N>" (sign-magnitude, bit N)


@dataclass(frozen=True)
class ServoLayout:
    """Where a servo family keeps the registers the motion model touches."""

    table_size: int
    eeprom_end: int  # first RAM address; EEPROM below it is write-protected while torque is on
    torque_enable: Register
    goal_position: Register
    present_position: Register
    present_velocity: Register
    present_effort: Register  # current (Dynamixel) or load (Feetech)
    min_position: Register
    max_position: Register
    moving: Register
    read_only_from: int  # addresses >= this are read-only (present values)
    operating_mode: Register | None = None
    goal_velocity: Register | None = None
    hardware_error: Register | None = None


def encode(value: int, register: Register) -> bytes:
    """Little-endian bytes of `value` in the register's sign convention."""
    size = register.size
    if register.signed.startswith("bit"):
        bit = int(register.signed[3:])
        value = (-value | (1 << bit)) if value < 0 else value
    elif register.signed == "twos" and value < 0:
        value += 1 << (8 * size)
    return int(value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def decode(data: bytes, register: Register) -> int:
    value = int.from_bytes(data, "little")
    if register.signed.startswith("bit"):
        bit = int(register.signed[3:])
        if value & (1 << bit):
            value = -(value & ~(1 << bit))
    elif register.signed == "twos" and value >= 1 << (8 * register.size - 1):
        value -= 1 << (8 * register.size)
    return value


class EmulatedServo:
    """One servo: a control table plus a first-order position response to the goal.

    Call `move_to(ticks)` to move the horn by hand (a leader arm's operator does that).
    Set `responding = False` to make it silent, `hardware_error` to a non-zero code to report
    a fault, or `physics = False` to freeze its present values for byte-exact tests.
    """

    def __init__(
        self,
        servo_id: int,
        model_number: int,
        layout: ServoLayout,
        position: int = TICKS_PER_TURN // 2,
        max_speed_ticks_s: float = 6000.0,
        time_constant_s: float = 0.02,
    ) -> None:
        self.id = servo_id
        self.model_number = model_number
        self.layout = layout
        self.memory = bytearray(layout.table_size)
        self.max_speed_ticks_s = max_speed_ticks_s
        self.time_constant_s = time_constant_s
        self.responding = True
        self.hardware_error = 0
        self.physics = True
        self._lock = threading.RLock()
        self._position = float(position)
        self._velocity = 0.0
        self._t = time.monotonic()
        self.set(layout.min_position, 0)
        self.set(layout.max_position, TICKS_PER_TURN - 1)
        self.set(layout.goal_position, int(position))
        self._write_present()

    # --- register access (no protocol checks) -------------------------------------------------
    def get(self, register: Register) -> int:
        with self._lock:
            start = register.address
            return decode(bytes(self.memory[start : start + register.size]), register)

    def set(self, register: Register, value: int) -> None:
        with self._lock:
            start = register.address
            self.memory[start : start + register.size] = encode(value, register)

    @property
    def torque_enabled(self) -> bool:
        return self.get(self.layout.torque_enable) != 0

    @property
    def position(self) -> int:
        """Present position in ticks."""
        self.update()
        return self.get(self.layout.present_position)

    def move_to(self, ticks: float) -> None:
        """Move the horn by hand (back-drive it); the servo reports the new position."""
        with self._lock:
            self.update()
            self._position = float(ticks)
            self._velocity = 0.0
            self._write_present()

    # --- what the protocol layer calls --------------------------------------------------------
    def read(self, address: int, length: int) -> bytes:
        self.update()
        with self._lock:
            return bytes(self.memory[address : address + length])

    def write(self, address: int, data: bytes) -> int:
        """Apply a write; returns a protocol-neutral error code (0 ok, else a WRITE_* code)."""
        end = address + len(data)
        if end > self.layout.table_size:
            return WRITE_OUT_OF_RANGE
        if end > self.layout.read_only_from:
            return WRITE_ACCESS
        with self._lock:
            self.update()
            if address < self.layout.eeprom_end and self.eeprom_protected():
                return WRITE_ACCESS
            previous = bytes(self.memory[address:end])
            self.memory[address:end] = data
            code = self.check_write(address, end)
            if code == WRITE_REJECTED:
                self.memory[address:end] = previous
            if self.get(self.layout.torque_enable) and self.hardware_error:
                self.set(self.layout.torque_enable, 0)  # a faulted servo keeps torque off
            return code

    def eeprom_protected(self) -> bool:
        """Dynamixel refuses EEPROM writes while torque is on; families differ."""
        return self.torque_enabled

    def check_write(self, start: int, end: int) -> int:
        """Validate the registers just written; the protocol emulator may override this."""
        return WRITE_OK

    def reboot(self) -> None:
        with self._lock:
            self.hardware_error = 0
            self.set(self.layout.torque_enable, 0)

    # --- motion model ------------------------------------------------------------------------
    def update(self) -> None:
        with self._lock:
            now = time.monotonic()
            dt = now - self._t
            self._t = now
            if not self.physics or dt <= 0:
                return
            before = self._position
            if self.torque_enabled and not self.hardware_error:
                goal = self.goal_ticks()
                if goal is not None:
                    alpha = 1.0 - pow(2.718281828459045, -dt / self.time_constant_s)
                    step = (goal - self._position) * alpha
                    limit = self.max_speed_ticks_s * dt
                    self._position += max(-limit, min(limit, step))
            self._velocity = (self._position - before) / dt
            self._write_present()

    def goal_ticks(self) -> float | None:
        """Where the servo is driving to in its current mode (None: nowhere, it is limp)."""
        return float(self.get(self.layout.goal_position))

    def _write_present(self) -> None:
        layout = self.layout
        self.set(layout.present_position, int(round(self._position)))
        self.set(layout.present_velocity, int(round(self.velocity_units(self._velocity))))
        effort = 0.0
        if self.torque_enabled:
            goal = self.goal_ticks()
            if goal is not None:
                effort = max(-1000.0, min(1000.0, 2.0 * (goal - self._position)))
        self.set(layout.present_effort, int(effort))
        self.set(layout.moving, 1 if abs(self._velocity) > 1.0 else 0)
        if layout.hardware_error is not None:
            self.set(layout.hardware_error, self.hardware_error)

    def velocity_units(self, ticks_per_s: float) -> float:
        """Convert ticks/s to the family's velocity register unit."""
        return ticks_per_s


WRITE_OK = 0
WRITE_OUT_OF_RANGE = 1  # address/length past the control table
WRITE_ACCESS = 2  # read-only register, or EEPROM while torque is on
WRITE_REJECTED = 3  # value outside the allowed range: not applied
WRITE_CLAMPED = 4  # value outside the limits: applied after clamping (Feetech angle error)


# Instruction codes and the broadcast id are the same in Dynamixel 2.0 and Feetech STS/SCS.
BROADCAST_ID = 0xFE
INST_PING, INST_READ, INST_WRITE = 0x01, 0x02, 0x03
INST_SYNC_READ, INST_SYNC_WRITE = 0x82, 0x83
COMMON_INSTRUCTIONS = frozenset({INST_PING, INST_READ, INST_WRITE, INST_SYNC_READ, INST_SYNC_WRITE})


@dataclass(frozen=True)
class Request:
    """One decoded instruction packet (parameters unstuffed, checksum verified)."""

    servo_id: int
    instruction: int
    params: bytes


class PtyBusEmulator(ABC):
    """A servo bus on a pseudo-terminal. Subclasses parse and answer one protocol.

    Start it, hand `port` (the pty slave's path, e.g. /dev/pts/7) to the SDK's PortHandler,
    stop it when done. It is a context manager.
    """

    protocol_name = "servo"
    servo_type: Callable[..., EmulatedServo]  # (servo_id, model, position=ticks) -> servo
    default_model = ""

    def __init__(
        self,
        ids: list[int] | dict[int, str] = (1,),
        model: str | None = None,
        baudrate: int = 1_000_000,
        positions: dict[int, int] | None = None,
    ) -> None:
        """Servos `ids` (all of `model`, or a dict id -> model) at `positions` (default mid-range)."""
        models = dict(ids) if isinstance(ids, dict) else {i: model or self.default_model for i in ids}
        positions = positions or {}
        self.servos = {
            i: self.servo_type(i, m, position=positions.get(i, 2048)) for i, m in models.items()
        }
        self.baudrate = int(baudrate)
        self._fault_lock = threading.Lock()
        self._corrupt_replies = 0
        self.reply_delay_s = 0.0
        self.counts: Counter[str] = Counter()
        self._master: int | None = None
        self._slave: int | None = None
        self.port = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._buffer = bytearray()
        self._last_rx = 0.0

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> str:
        if self._thread is not None:
            return self.port
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"{self.protocol_name}-bus-emulator", daemon=True
        )
        self._thread.start()
        log.debug("%s bus emulator on %s", self.protocol_name, self.port)
        return self.port

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._thread = None
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    @property
    def corrupt_replies(self) -> int:
        """How many of the next replies will carry a wrong checksum."""
        return self._corrupt_replies

    @corrupt_replies.setter
    def corrupt_replies(self, count: int) -> None:
        with self._fault_lock:  # the reader thread decrements it concurrently
            self._corrupt_replies = int(count)

    def servo(self, servo_id: int) -> EmulatedServo:
        return self.servos[servo_id]

    # --- the reader thread -------------------------------------------------------------------
    def _run(self) -> None:
        assert self._master is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if not ready:
                    continue
                chunk = os.read(self._master, 4096)
            except OSError:
                time.sleep(0.01)
                continue
            if not chunk:
                continue
            if not self._baud_matches():
                self.counts["wrong_baud"] += 1
                self._buffer.clear()
                continue
            for reply in self.receive(chunk, time.monotonic()):
                try:
                    self._send(reply)
                except OSError as exc:  # nobody reading the port any more: keep serving
                    log.debug("%s emulator could not send a reply: %s", self.protocol_name, exc)

    def receive(self, chunk: bytes, now: float) -> list[bytes]:
        """Take bytes off the wire at host time `now`; return the replies to every complete packet.

        Never raises for what arrives: the reader thread must outlive any input, as a servo does.
        """
        if self._buffer and now - self._last_rx > PARTIAL_PACKET_TIMEOUT_S:
            self.counts["stale_partial"] += 1
            self._buffer.clear()
        self._last_rx = now
        self._buffer.extend(chunk)
        try:
            packets = self.extract_packets(self._buffer)
        except Exception:  # a framing bug must not kill the bus: drop what is buffered
            log.exception("%s emulator: cannot frame %d buffered bytes", self.protocol_name, len(self._buffer))
            self.counts["malformed"] += 1
            self._buffer.clear()
            return []
        replies: list[bytes] = []
        for packet in packets:
            try:
                replies.extend(self.handle(packet))
            except Exception:  # a packet the protocol code cannot parse: a servo stays silent
                log.debug("%s emulator ignores malformed packet %s", self.protocol_name, packet.hex())
                self.counts["malformed"] += 1
        return replies

    def _send(self, reply: bytes) -> None:
        with self._fault_lock:
            corrupt = self._corrupt_replies > 0
            if corrupt:
                self._corrupt_replies -= 1
        if corrupt:
            reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
            self.counts["corrupted"] += 1
        if self.reply_delay_s:
            time.sleep(self.reply_delay_s)
        assert self._master is not None
        os.write(self._master, reply)

    def _baud_matches(self) -> bool:
        """True when the port is configured at the bus baud rate (unknown speeds pass)."""
        try:
            attrs = termios.tcgetattr(self._slave)
        except (termios.error, TypeError):
            return True
        speed = _BAUD_BY_CONSTANT.get(attrs[5])
        return speed is None or speed == self.baudrate

    # --- requests: what both protocols do alike ---------------------------------------------
    def handle(self, packet: bytes) -> list[bytes]:
        """Execute one instruction packet; return the status packets to send back, in order.

        Both protocols share the instruction codes, SYNC framing and who answers (a missing or
        silent servo never does; a broadcast gets no status). The protocol decodes the packet,
        checks its parameters, builds status packets and runs its own instructions.
        """
        request = self.decode(packet)
        if not isinstance(request, Request):
            return request  # damaged or incomplete: the protocol's own answer (usually none)
        servo_id, instruction, params = request.servo_id, request.instruction, request.params
        if instruction not in COMMON_INSTRUCTIONS:
            return self.handle_other(request)
        width = self.field_bytes
        if instruction in (INST_SYNC_READ, INST_SYNC_WRITE):
            if len(params) < 2 * width:
                return []
            address, length = self.fields(params, 2)
            if instruction == INST_SYNC_WRITE:
                sync_write(self.servos, address, length, params[2 * width :])
                return []
            # a missing servo leaves a gap: the SDK times out on it
            return [
                self.status(servo, 0, servo.read(address, length))
                for servo in map(self.responding, params[2 * width :])
                if servo is not None
            ]
        if servo_id == BROADCAST_ID:
            if instruction == INST_PING and self.answers_broadcast_ping:
                return [self.ping_reply(s) for _, s in sorted(self.servos.items()) if s.responding]
            if instruction == INST_WRITE and len(params) >= width:
                address = self.fields(params, 1)[0]
                for servo in self.servos.values():
                    servo.write(address, params[width:])
            return []
        servo = self.responding(servo_id)
        if servo is None:
            return []  # nobody answers: the SDK times out
        if instruction == INST_PING:
            return [self.ping_reply(servo)]
        error = self.params_error(instruction, params)
        if error is not None:
            return [self.status(servo, error)]
        if instruction == INST_READ:
            address, length = self.fields(params, 2)
            return [self.status(servo, 0, servo.read(address, length))]
        code = servo.write(self.fields(params, 1)[0], params[width:])
        return [self.status(servo, self.write_error(code))]

    def responding(self, servo_id: int) -> EmulatedServo | None:
        """The servo with this id if it is on the bus and answering, else None."""
        servo = self.servos.get(servo_id)
        return servo if servo is not None and servo.responding else None

    def fields(self, params: bytes, count: int) -> list[int]:
        """The first `count` address/length fields of `params` (little endian, `field_bytes` each)."""
        width = self.field_bytes
        return [int.from_bytes(params[i * width : (i + 1) * width], "little") for i in range(count)]

    # --- protocol ----------------------------------------------------------------------------
    field_bytes = 1  # width of an address or length field in READ / WRITE / SYNC parameters
    answers_broadcast_ping = False  # whether every servo answers a PING sent to BROADCAST_ID

    header = b""  # the bytes every instruction packet starts with

    @abstractmethod
    def packet_length(self, buffer: bytearray) -> int | None:
        """Length of the packet whose header starts `buffer`: None while too few bytes are in to
        tell, 0 when this is no packet (a length that cannot hold an instruction and a checksum)."""

    def extract_packets(self, buffer: bytearray) -> list[bytes]:
        """Remove complete instruction packets from `buffer` (discarding garbage) and return them."""
        packets = []
        while True:
            start = buffer.find(self.header)
            if start < 0:
                del buffer[: max(0, len(buffer) - len(self.header) + 1)]  # keep a partial header
                return packets
            del buffer[:start]
            total = self.packet_length(buffer)
            if total is None:
                return packets
            if total == 0:  # not a header after all: look again one byte later
                del buffer[0]
                continue
            if len(buffer) < total:
                return packets
            packets.append(bytes(buffer[:total]))
            del buffer[:total]

    @abstractmethod
    def decode(self, packet: bytes) -> Request | list[bytes]:
        """The request in `packet`, or the replies to a packet that cannot be executed."""

    @abstractmethod
    def status(self, servo: EmulatedServo, error: int, params: bytes = b"") -> bytes:
        """A status packet from `servo` with the protocol's `error` and `params`."""

    def ping_reply(self, servo: EmulatedServo) -> bytes:
        return self.status(servo, 0)

    def params_error(self, instruction: int, params: bytes) -> int | None:
        """The error a servo replies to READ / WRITE parameters it cannot execute, or None."""
        return None

    def write_error(self, code: int) -> int:
        """The status error for a servo's `EmulatedServo.write` result code."""
        return 0

    def handle_other(self, request: Request) -> list[bytes]:
        """A protocol's own instructions (REBOOT, REG WRITE, ACTION, unknown ones)."""
        return []


_BAUD_BY_CONSTANT = {
    getattr(termios, f"B{rate}"): rate
    for rate in (
        9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600,
        1000000, 1152000, 2000000, 2500000, 3000000, 3500000, 4000000,
    )
    if hasattr(termios, f"B{rate}")
}


def sync_write(servos: dict[int, EmulatedServo], address: int, length: int, body: bytes) -> None:
    """Apply a SYNC WRITE body (`id data[length]` repeated); both protocols frame it alike."""
    if length <= 0:
        return
    for offset in range(0, len(body) - length, length + 1):
        servo = servos.get(body[offset])
        if servo is not None and servo.responding:
            servo.write(address, body[offset + 1 : offset + 1 + length])


def run_from_command_line(
    emulator: type[PtyBusEmulator], description: str, models: list[str], argv: list[str] | None
) -> None:
    """`python -m tether.robot.emulators.<protocol>`: serve a bus, print its port, run until ^C."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ids", default="1-6", help="servo ids, e.g. 1-6 or 1,2,7")
    parser.add_argument("--model", default=emulator.default_model, choices=sorted(models))
    parser.add_argument("--baudrate", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with emulator(parse_ids(args.ids), args.model, args.baudrate) as bus:
        print(bus.port, flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass


def parse_ids(text: str) -> list[int]:
    """'1-6' or '1,2,5' or '1-3,7' -> [1, 2, ...] (used by the emulate-bus command)."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            ids.extend(range(int(low), int(high) + 1))
        else:
            ids.append(int(part))
    if not ids or any(not 0 <= i <= 252 for i in ids):
        raise ValueError(f"servo ids must be in 0..252, got '{text}'")
    return ids
