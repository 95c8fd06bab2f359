"""Serial servo buses (Dynamixel, Feetech) behind one small API, and an Arm built on it.

Both vendors' SDKs share a shape (PortHandler, PacketHandler, GroupSyncRead/Write, integer
result codes, an error byte per status packet); a `BusDialect` holds what differs: the SDK
module, the control table, the unit conversions and the sign convention. `ServoBus` turns the
SDK's result codes into DeviceError messages that name the port, the servo id, the register
and what to check. `ServoArm` maps servo ticks to radians with a per-motor zero and direction,
reads position/velocity/effort in one sync read, and writes goals in one sync write.

Time: servos have no clock of their own, so `JointState.t_device` is None and `t_host` is the
host's monotonic time at the middle of the sync read's round trip (when the servos sampled
their registers, to within half a round trip).

Why one sync read: a 6-servo arm at 50 Hz has 20 ms per tick; one SYNC READ costs one round
trip (~0.2 ms on a pty, ~1-2 ms on a U2D2 with the latency timer at 1 ms) where six READs cost
six.
"""

from __future__ import annotations

import logging
import math
import termios
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.core.config import from_dict
from tether.core.errors import ConfigError, DeviceClosedError, DeviceError
from tether.core.optional import require
from tether.robot.interfaces import Arm, ArmSpec, JointState

log = logging.getLogger(__name__)

TICKS_PER_TURN = 4096
RAD_PER_TICK = 2 * math.pi / TICKS_PER_TURN


@dataclass(frozen=True)
class Field:
    """A control-table register: address, size in bytes, sign convention."""

    address: int
    size: int
    signed: str = "none"  # "none", "twos", or "bit<N>" (sign-magnitude with the sign in bit N)

    def decode(self, raw: int) -> int:
        if self.signed == "twos" and raw >= 1 << (8 * self.size - 1):
            return raw - (1 << (8 * self.size))
        if self.signed.startswith("bit"):
            bit = int(self.signed[3:])
            if raw & (1 << bit):
                return -(raw & ~(1 << bit))
        return raw

    def encode(self, value: int) -> list[int]:
        value = int(value)
        if self.signed.startswith("bit") and value < 0:
            value = -value | (1 << int(self.signed[3:]))
        elif value < 0:
            value += 1 << (8 * self.size)
        return list((value & ((1 << (8 * self.size)) - 1)).to_bytes(self.size, "little"))


@dataclass(frozen=True)
class ModelInfo:
    number: int
    effort_unit: float  # SI units (A for current, fraction of max torque for load) per raw unit


@dataclass(frozen=True)
class BusDialect:
    """What differs between servo families; see dynamixel.py and feetech.py for instances."""

    name: str
    sdk_module: str
    extra: str
    baudrates: tuple[int, ...]
    fields: dict[str, Field]
    models: dict[str, ModelInfo]
    default_model: str
    velocity_unit: float  # rad/s per raw velocity unit
    operating_modes: dict[str, int]
    # The registers read every tick, in address order, forming one contiguous block.
    state_fields: tuple[str, ...] = ("present_position",)
    packet_handler_arg: float = 2.0
    # (register, unlocked value, locked value) written around EEPROM writes (Feetech 'Lock')
    eeprom_lock: tuple[str, int, int] | None = None

    def field(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise ConfigError(
                f"{self.name} has no register '{name}'. Known: {', '.join(sorted(self.fields))}."
            ) from None

    def model(self, name: str) -> ModelInfo:
        key = name.lower()
        if key not in self.models:
            raise ConfigError(
                f"Unknown {self.name} servo model '{name}'. Known: {', '.join(sorted(self.models))}."
            )
        return self.models[key]


class ServoBus:
    """One serial port with servos on it. Thread-safe: every transaction holds the bus lock."""

    def __init__(
        self,
        port: str,
        baudrate: int,
        dialect: BusDialect,
        retries: int = 2,
        packet_timeout_ms: float | None = None,
    ) -> None:
        if baudrate not in dialect.baudrates:
            raise ConfigError(
                f"{dialect.name} baudrate {baudrate} is not supported by the SDK; use one of "
                f"{', '.join(str(b) for b in dialect.baudrates)}."
            )
        self.port_name = port
        self.baudrate = baudrate
        self.dialect = dialect
        # A real bus sees the odd corrupted or late packet (and a loaded host the odd late
        # poll); a transaction is retried this many times before it counts as failed.
        self.retries = int(retries)
        self.retried = 0  # how many retries were needed so far (reported by tools)
        # None: the SDK's own reply timeout (2 x its 16 ms latency-timer guess + wire time);
        # raise it for long daisy chains, slow adapters or a loaded host.
        self.packet_timeout_ms = packet_timeout_ms
        self._lock = threading.Lock()
        self._sdk = None
        self._port = None
        self._ph = None
        self._sync_reads: dict[tuple, Any] = {}

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        if self._port is not None:
            return
        sdk = require(self.dialect.sdk_module, self.dialect.extra, f"{self.dialect.name} servos")
        port = _port_handler(sdk, self.port_name, self.packet_timeout_ms)
        try:
            opened = port.openPort()
        except Exception as exc:  # pyserial raises SerialException (an OSError subclass) or OSError
            raise DeviceError(
                f"Could not open {self.dialect.name} bus on '{self.port_name}': {exc}. Check the "
                "adapter is plugged in (`tether find-ports`), and that your user may use it "
                "(add yourself to the 'dialout' group or install the udev rule in docs/hardware.md)."
            ) from exc
        if not opened or not port.setBaudRate(self.baudrate):
            port.closePort()
            raise DeviceError(f"Could not set {self.baudrate} baud on '{self.port_name}'.")
        self._sdk, self._port = sdk, port
        self._ph = sdk.PacketHandler(self.dialect.packet_handler_arg)

    def close(self) -> None:
        with self._lock:
            if self._port is not None:
                try:
                    self._port.closePort()
                except Exception as exc:  # the device may already be gone (unplugged)
                    log.debug("closing %s: %s", self.port_name, exc)
            self._port = None
            self._sync_reads.clear()

    # --- single-servo transactions -------------------------------------------------------------
    def ping(self, servo_id: int) -> int | None:
        """The servo's model number, or None when nothing answers at this id."""
        for attempt in range(self.retries + 1):
            with self._lock:
                self._require_open()
                try:
                    model, result, error = self._io("ping", [servo_id], self._ph.ping, self._port, servo_id)
                except IndexError:  # the SDK took a late, shorter reply as the model read
                    model, result, error = 0, self._sdk.COMM_RX_CORRUPT, 0
            if result == self._sdk.COMM_SUCCESS:
                break
            self.retried += attempt < self.retries
            with self._lock:
                self._drain()
        if result != self._sdk.COMM_SUCCESS:
            if result == self._sdk.COMM_RX_TIMEOUT:
                return None
            raise self._comm_error(result, "ping", [servo_id])
        self._check_error(error, "ping", servo_id)
        return int(model)

    def read(self, servo_id: int, name: str) -> int:
        reg = self.dialect.field(name)
        for attempt in range(self.retries + 1):
            with self._lock:
                self._require_open()
                data, result, error = self._io(
                    f"read of '{name}'", [servo_id], self._ph.readTxRx, self._port, servo_id,
                    reg.address, reg.size,
                )
            if result == self._sdk.COMM_SUCCESS:
                break
            self.retried += attempt < self.retries
            with self._lock:
                self._drain()
        if result != self._sdk.COMM_SUCCESS:
            raise self._comm_error(result, f"read of '{name}'", [servo_id])
        self._check_error(error, f"read of '{name}'", servo_id)
        return reg.decode(int.from_bytes(bytes(data[: reg.size]), "little"))

    def write(self, servo_id: int, name: str, value: int) -> None:
        reg = self.dialect.field(name)
        for attempt in range(self.retries + 1):
            with self._lock:
                self._require_open()
                result, error = self._io(
                    f"write of '{name}'", [servo_id], self._ph.writeTxRx, self._port, servo_id,
                    reg.address, reg.size, reg.encode(value),
                )
            if result == self._sdk.COMM_SUCCESS:
                break
            self.retried += attempt < self.retries
            with self._lock:
                self._drain()
        if result != self._sdk.COMM_SUCCESS:
            raise self._comm_error(result, f"write of '{name}'={value}", [servo_id])
        self._check_error(error, f"write of '{name}'={value}", servo_id)

    # --- group transactions --------------------------------------------------------------------
    def sync_read(self, names: tuple[str, ...], ids: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Read contiguous registers from many servos in one SYNC READ: name -> int64 (n_ids,)."""
        regs = [self.dialect.field(n) for n in names]
        start = min(r.address for r in regs)
        length = max(r.address + r.size for r in regs) - start
        with self._lock:
            self._require_open()
            key = (start, length, ids)
            group = self._sync_reads.get(key)
            if group is None:
                group = self._sdk.GroupSyncRead(self._port, self._ph, start, length)
                for servo_id in ids:
                    group.addParam(servo_id)
                self._sync_reads[key] = group
            for attempt in range(self.retries + 1):
                result = self._io(f"sync read of {', '.join(names)}", ids, group.txRxPacket)
                if result == self._sdk.COMM_SUCCESS:
                    break
                self.retried += attempt < self.retries
                self._drain()
            if result != self._sdk.COMM_SUCCESS:
                missing = [i for i in ids if len(group.data_dict.get(i) or []) < length]
                raise self._comm_error(result, f"sync read of {', '.join(names)}", missing or ids)
            out = {}
            for name, reg in zip(names, regs, strict=True):
                raw = [group.getData(i, reg.address, reg.size) for i in ids]
                out[name] = np.array([reg.decode(v) for v in raw], dtype=np.int64)
        return out

    def sync_write(self, name: str, values: dict[int, int]) -> None:
        reg = self.dialect.field(name)
        with self._lock:
            self._require_open()
            group = self._sdk.GroupSyncWrite(self._port, self._ph, reg.address, reg.size)
            for servo_id, value in values.items():
                group.addParam(servo_id, reg.encode(value))
            result = self._io(f"sync write of '{name}'", list(values), group.txPacket)
        if result != self._sdk.COMM_SUCCESS:
            raise self._comm_error(result, f"sync write of '{name}'", list(values))

    # --- errors --------------------------------------------------------------------------------
    def _io(self, what: str, ids, fn, *args):
        """Run one SDK transaction; an OS-level failure (adapter unplugged) becomes DeviceError.

        The SDK marks the port busy for the length of a transaction and never clears the flag
        when pyserial raises, which would make every later call fail with "Port is in use".
        """
        try:
            return fn(*args)
        except (OSError, termios.error) as exc:
            self._port.is_using = False
            raise DeviceError(
                f"{self.dialect.name} {what} on '{self.port_name}' (servo id(s) {list(ids)}) failed: "
                f"the port stopped working ({exc}). The adapter was probably unplugged or reset; "
                "plug it back in and connect() again."
            ) from exc

    def _drain(self, quiet_s: float = 0.002, limit_s: float = 0.03) -> None:
        """Discard late replies of a failed transaction before the next one starts.

        A status packet that arrives after the SDK gave up (a slow servo, a reply to a retried
        request) would otherwise be read as the answer to the next request; the SDK's input
        flush does not catch bytes still in flight in the adapter or the tty layer.
        """
        port = self._port
        if port is None:
            return
        deadline = time.monotonic() + limit_s
        last_data = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last_data < quiet_s:
            try:
                waiting = port.getBytesAvailable()
                if waiting:
                    port.readPort(waiting)
            except (OSError, termios.error):
                return  # the port is gone; the next transaction reports it
            if waiting:
                last_data = time.monotonic()
            else:
                time.sleep(0.0005)

    def _require_open(self) -> None:
        if self._port is None:
            raise DeviceClosedError(f"{self.dialect.name} bus '{self.port_name}' is not open.")

    def _comm_error(self, result: int, what: str, ids) -> DeviceError:
        text = self._ph.getTxRxResult(result)
        return DeviceError(
            f"{self.dialect.name} {what} on '{self.port_name}' failed for servo id(s) "
            f"{list(ids)}: {text}. Check that the servos are powered, the ids and the baudrate "
            f"({self.baudrate}) match the config, and the cable is seated."
        )

    def _check_error(self, error: int, what: str, servo_id: int) -> None:
        if not error:
            return
        text = self._ph.getRxPacketError(error)
        hint = (
            "The servo reports a hardware fault (overload, overheating or voltage): remove the "
            "load, check the supply, then power-cycle or reboot it."
            if self._is_hardware_alert(error)
            else "The servo refused the request; check the value and that torque is off before "
            "changing EEPROM settings."
        )
        raise DeviceError(
            f"{self.dialect.name} servo {servo_id} on '{self.port_name}' answered the {what} with "
            f"error {error:#04x} ({text.strip()}). {hint}"
        )

    def _is_hardware_alert(self, error: int) -> bool:
        if self.dialect.name == "Dynamixel":
            return bool(error & 0x80)
        return bool(error & (1 | 4 | 8 | 32))


def _port_handler(sdk, name: str, packet_timeout_ms: float | None):
    """The SDK's PortHandler, with the reply timeout overridden when configured."""
    if packet_timeout_ms is None:
        return sdk.PortHandler(name)

    class PortHandler(sdk.PortHandler):
        def setPacketTimeout(self, packet_length):  # noqa: N802 - the SDK's name
            super().setPacketTimeout(packet_length)
            self.packet_timeout = self.tx_time_per_byte * packet_length + packet_timeout_ms

    return PortHandler(name)


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


@dataclass
class MotorParams:
    """One joint: servo id and model, and how its ticks map to radians."""

    name: str
    id: int
    model: str | None = None
    zero: int = TICKS_PER_TURN // 2  # ticks at 0 rad
    direction: int = 1  # +1 or -1
    lower: float = -math.pi  # rad, joint limits for the safety layer
    upper: float = math.pi
    home: float = 0.0
    mode: str | None = None  # operating mode for this motor (default: the arm's)


@dataclass
class ServoArmParams:
    """The `params:` of a dynamixel/feetech arm in a robot config (see configs/*.yaml)."""

    port: str
    motors: list[MotorParams]
    baudrate: int = 1_000_000
    gripper: str | None = None  # name of the gripper motor; default: one called "gripper"
    torque: bool = True  # False for leader arms, which a human moves by hand
    operating_mode: str = "position"
    torque_off_on_close: bool = True
    read_velocity: bool = True
    read_effort: bool = True
    check_models: bool = True
    retries: int = 2  # re-tries of a failed transaction before it raises
    packet_timeout_ms: float | None = None  # reply timeout; None: the SDK's (~34 ms)


def parse_params(params: dict[str, Any], key: str) -> ServoArmParams:
    parsed = from_dict(ServoArmParams, params, key)
    if not parsed.motors:
        raise ConfigError(f"'{key}.motors' is empty; list each joint's name and servo id.")
    names = [m.name for m in parsed.motors]
    ids = [m.id for m in parsed.motors]
    if len(set(names)) != len(names) or len(set(ids)) != len(ids):
        raise ConfigError(f"'{key}.motors' repeats a name or an id: names {names}, ids {ids}.")
    for i, motor in enumerate(parsed.motors):
        if motor.direction not in (1, -1):
            raise ConfigError(f"'{key}.motors[{i}].direction' must be 1 or -1, got {motor.direction}.")
        if not 0 <= motor.id <= 252:
            raise ConfigError(f"'{key}.motors[{i}].id' must be in 0..252, got {motor.id}.")
    if parsed.gripper is not None and parsed.gripper not in names:
        raise ConfigError(f"'{key}.gripper' is '{parsed.gripper}', which is not a motor name ({names}).")
    return parsed


# ------------------------------------------------------------------------------------------------
# The arm
# ------------------------------------------------------------------------------------------------


class ServoArm(Arm):
    """An arm made of serial-bus servos; DynamixelArm and FeetechArm pick the dialect."""

    dialect: BusDialect

    def __init__(self, name: str, params: ServoArmParams) -> None:
        self.params = params
        motors = params.motors
        gripper = params.gripper or ("gripper" if any(m.name == "gripper" for m in motors) else None)
        self.spec = ArmSpec(
            name=name,
            joint_names=tuple(m.name for m in motors),
            lower=np.array([m.lower for m in motors]),
            upper=np.array([m.upper for m in motors]),
            home=np.array([m.home for m in motors]),
            gripper_index=[m.name for m in motors].index(gripper) if gripper else None,
        )
        self.ids = tuple(m.id for m in motors)
        self._zero = np.array([m.zero for m in motors], dtype=np.float64)
        self._direction = np.array([m.direction for m in motors], dtype=np.float64)
        self._models = [self.dialect.model(m.model or self.dialect.default_model) for m in motors]
        self._effort_unit = np.array([m.effort_unit for m in self._models])
        for m in motors:
            mode = m.mode or params.operating_mode
            if mode not in self.dialect.operating_modes:
                raise ConfigError(
                    f"Arm '{name}': operating mode '{mode}' is not one of "
                    f"{', '.join(self.dialect.operating_modes)} for {self.dialect.name}."
                )
        self.bus = ServoBus(
            params.port, params.baudrate, self.dialect, params.retries, params.packet_timeout_ms
        )
        self._connected = False

    @classmethod
    def from_config(cls, config) -> ServoArm:
        params = parse_params(dict(config.params), f"arms.{config.name}.params")
        return cls(config.name, params)

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            return
        self.bus.open()
        try:
            self._check_servos()
            self._configure()
        except BaseException:
            self.bus.close()
            raise
        self._connected = True

    def close(self) -> None:
        if not self._connected:
            return
        self._connected = False
        if self.params.torque and self.params.torque_off_on_close:
            try:
                self.bus.sync_write("torque_enable", {i: 0 for i in self.ids})
                # SYNC WRITE has no reply; reading back confirms the servos applied it.
                still_on = self.bus.sync_read(("torque_enable",), self.ids)["torque_enable"]
                if np.any(still_on):
                    log.warning("Arm '%s': torque still on after close: %s", self.name, still_on)
            except DeviceError as exc:
                log.warning("Arm '%s': could not disable torque on close: %s", self.name, exc)
        self.bus.close()

    # --- I/O -----------------------------------------------------------------------------------
    def read(self) -> JointState:
        if not self._connected:
            self._require_connected()
        names = self._state_fields()
        t_sent = time.monotonic()
        values = self.bus.sync_read(names, self.ids)
        t_host = 0.5 * (t_sent + time.monotonic())  # the servos answered mid round trip
        position = (values["present_position"] - self._zero) * RAD_PER_TICK * self._direction
        velocity = effort = None
        if "present_velocity" in values:
            velocity = values["present_velocity"] * self.dialect.velocity_unit * self._direction
        if "present_effort" in values:
            effort = values["present_effort"] * self._effort_unit * self._direction
        return JointState(position=position, t_host=t_host, velocity=velocity, effort=effort)

    def command(self, target_position: np.ndarray) -> None:
        if not self._connected:
            self._require_connected()
        if not self.params.torque:
            raise DeviceError(
                f"Arm '{self.name}' is configured with torque: false (a leader arm moved by hand); "
                "it cannot be commanded. Set torque: true in its params to drive it."
            )
        target = np.asarray(target_position, dtype=np.float64)
        if target.shape != (self.spec.dof,) or not np.all(np.isfinite(target)):
            raise ValueError(f"Arm '{self.name}' expects {self.spec.dof} finite targets, got {target!r}")
        ticks = np.rint(self._zero + target / RAD_PER_TICK * self._direction).astype(np.int64)
        self.bus.sync_write("goal_position", dict(zip(self.ids, ticks.tolist(), strict=True)))

    def to_ticks(self, position: np.ndarray) -> np.ndarray:
        """Radians -> raw goal ticks with this arm's zero and direction (for tools and tests)."""
        return np.rint(self._zero + np.asarray(position) / RAD_PER_TICK * self._direction)

    # --- helpers -------------------------------------------------------------------------------
    def _state_fields(self) -> tuple[str, ...]:
        names = ["present_position"]
        if self.params.read_velocity:
            names.append("present_velocity")
        if self.params.read_effort:
            names.append("present_effort")
        return tuple(names)

    def _check_servos(self) -> None:
        missing, wrong = [], []
        for motor, model in zip(self.params.motors, self._models, strict=True):
            number = self.bus.ping(motor.id)
            if number is None:
                missing.append(f"{motor.name} (id {motor.id})")
            elif self.params.check_models and number != model.number:
                wrong.append(f"{motor.name} (id {motor.id}) is model {number}, expected {model.number}")
        if missing:
            raise DeviceError(
                f"Arm '{self.name}': no reply on '{self.bus.port_name}' from {', '.join(missing)}. "
                f"Check power, the daisy chain, the ids and the baudrate ({self.bus.baudrate})."
            )
        if wrong:
            raise DeviceError(
                f"Arm '{self.name}': {'; '.join(wrong)}. Fix the 'model' of these motors in the "
                "config, or set check_models: false."
            )

    def _configure(self) -> None:
        """Torque off, set modes, goal := present, then torque on: the arm never jumps."""
        self.bus.sync_write("torque_enable", {i: 0 for i in self.ids})
        for motor in self.params.motors:
            mode = self.dialect.operating_modes[motor.mode or self.params.operating_mode]
            if self.bus.read(motor.id, "operating_mode") != mode:
                lock = self.dialect.eeprom_lock
                if lock is not None:
                    self.bus.write(motor.id, lock[0], lock[1])
                self.bus.write(motor.id, "operating_mode", mode)
                if lock is not None:
                    self.bus.write(motor.id, lock[0], lock[2])
        if self.params.torque:
            present = self.bus.sync_read(("present_position",), self.ids)["present_position"]
            self.bus.sync_write("goal_position", dict(zip(self.ids, present.tolist(), strict=True)))
            self.bus.sync_write("torque_enable", {i: 1 for i in self.ids})
            # SYNC WRITE has no reply: read back so connect() returns with torque really on.
            enabled = self.bus.sync_read(("torque_enable",), self.ids)["torque_enable"]
            if not np.all(enabled):
                off = [i for i, e in zip(self.ids, enabled, strict=True) if not e]
                raise DeviceError(
                    f"Arm '{self.name}': servos {off} did not enable torque; check their "
                    "'hardware_error_status' and the supply voltage."
                )

