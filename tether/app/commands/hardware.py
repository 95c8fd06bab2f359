"""Hardware commands: find-ports, find-cameras, scan-bus, emulate-bus, and teleop.

Everything heavy (pyrealsense2, the servo SDKs) is imported inside the commands so that
`tether --help` stays fast and works without the hardware extras.
"""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tether.core.errors import ConfigError

console = Console()

# USB ids of the serial adapters robot arms use, to label them in find-ports.
KNOWN_ADAPTERS = {
    (0x0403, 0x6014): "FTDI FT232H (ROBOTIS U2D2)",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6015): "FTDI FT231X",
    (0x1A86, 0x7523): "CH340 (Feetech/Waveshare bus board)",
    (0x1A86, 0x55D3): "CH343 (Feetech/Waveshare bus board, SO-100/101)",
    (0x2F5D, 0x2202): "ROBOTIS OpenRB-150",
}


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
    app.command("find-ports")(find_ports)
    app.command("find-cameras")(find_cameras)
    app.command("scan-bus")(scan_bus)
    app.command("emulate-bus")(emulate_bus)
    # `tether teleop` lives with the teleop devices (tether.app.commands.record, next to `record`, with
    # which it shares the e-stop keys); it is registered here, as before, for existing callers.
    from tether.app.commands.record import teleop_command

    app.command("teleop")(teleop_command)


def find_ports(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List serial ports (servo bus adapters) with their USB ids, serials and latency timer.

    Example: tether find-ports --json
    """
    ports = list_serial_ports()
    if as_json:
        print(json.dumps(ports, indent=2))
        return
    if not ports:
        console.print("No serial ports found. Plug in the bus adapter (U2D2, Waveshare board) and retry.")
        return
    table = Table("port", "stable path", "adapter", "serial", "latency timer")
    for port in ports:
        latency = port["latency_timer_ms"]
        hint = "" if latency in (None, 1) else " [yellow](set to 1 ms, see docs/hardware.md)[/yellow]"
        table.add_row(
            port["device"],
            port["by_id"] or "-",
            port["adapter"] or port["description"] or "-",
            port["serial_number"] or "-",
            ("-" if latency is None else f"{latency} ms") + hint,
        )
    console.print(table)


def find_cameras(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List RealSense cameras (with serial numbers) and V4L2 video devices.

    Example: tether find-cameras
    """
    cameras = list_realsense() + list_v4l2()
    if as_json:
        print(json.dumps(cameras, indent=2))
        return
    if not cameras:
        console.print("No cameras found.")
        return
    table = Table("driver", "name", "serial / path", "details")
    for cam in cameras:
        table.add_row(cam["driver"], cam["name"], cam.get("serial") or cam.get("source", "-"), cam.get("details", ""))
    console.print(table)


def scan_bus(
    port: str = typer.Option(..., "--port", help="Serial port of the bus, e.g. /dev/ttyUSB0."),
    protocol: str = typer.Option("dynamixel", "--protocol", help="dynamixel or feetech."),
    baudrate: int = typer.Option(1_000_000, "--baudrate", help="Bus baud rate."),
    ids: str = typer.Option("1-10", "--ids", help="Ids to ping, e.g. 1-10 or 1,2,7."),
    timeout_ms: float | None = typer.Option(
        None, "--timeout-ms", help="Reply timeout per ping (default: the SDK's, ~34 ms)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Ping servo ids on a bus and list the ones that answer, with their model numbers.

    Example: tether scan-bus --port /dev/ttyUSB0 --protocol feetech --ids 1-6
    """
    from tether.robot.drivers.servo_bus import ServoBus
    from tether.robot.emulators.servo_bus import parse_ids

    try:
        wanted = parse_ids(ids)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    bus = ServoBus(port, baudrate, _dialect(protocol), retries=1, packet_timeout_ms=timeout_ms)
    found = []
    try:
        bus.open()
        for servo_id in wanted:
            model = bus.ping(servo_id)
            if model is not None:
                found.append({"id": servo_id, "model_number": model, "model": _model_name(protocol, model)})
    finally:  # errors reach tether/cli.py's handler: message + exit 2
        bus.close()
    if as_json:
        print(json.dumps(found))
        return
    if not found:
        console.print(f"No {protocol} servo answered on {port} at {baudrate} baud (ids {ids}).")
        raise typer.Exit(1)
    for servo in found:
        console.print(f"id {servo['id']}: model {servo['model_number']} ({servo['model'] or 'unknown'})")


def emulate_bus(
    protocol: str = typer.Option("dynamixel", "--protocol", help="dynamixel or feetech."),
    ids: str = typer.Option("1-6", "--ids", help="Servo ids on the emulated bus."),
    model: str | None = typer.Option(None, "--model", help="Servo model (default xl330-m288 / sts3215)."),
    baudrate: int = typer.Option(1_000_000, "--baudrate", help="Bus baud rate."),
    duration: float = typer.Option(0.0, "--duration", help="Stop after this many seconds (0: until Ctrl-C)."),
) -> None:
    """Run a servo bus emulator on a pseudo-terminal and print its port, to try configs without hardware.

    Example: tether emulate-bus --protocol feetech --ids 1-6   (then use the printed port in a config)
    """
    from tether.robot.emulators import DynamixelBusEmulator, FeetechBusEmulator
    from tether.robot.emulators.servo_bus import parse_ids

    try:
        servo_ids = parse_ids(ids)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if protocol == "dynamixel":
        bus = DynamixelBusEmulator(servo_ids, model or "xl330-m288", baudrate)
    elif protocol == "feetech":
        bus = FeetechBusEmulator(servo_ids, model or "sts3215", baudrate)
    else:
        raise ConfigError(f"Unknown protocol '{protocol}'; use dynamixel or feetech.")
    with bus:
        print(bus.port, flush=True)
        deadline = time.monotonic() + duration if duration > 0 else None
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass


# --------------------------------------------------------------------------------------------
# Discovery helpers (also used by tests and docs)
# --------------------------------------------------------------------------------------------


def list_serial_ports() -> list[dict]:
    """USB serial ports with adapter name, serial number, stable /dev/serial/by-id path, latency."""
    by_id = {os.path.realpath(p): p for p in glob.glob("/dev/serial/by-id/*")}
    ports = []
    try:
        from serial.tools import list_ports

        entries = [
            (p.device, p.description, p.serial_number, p.vid, p.pid)
            for p in list_ports.comports()
            if p.vid is not None or "USB" in p.device or "ACM" in p.device
        ]
    except ImportError:  # pyserial comes with the servo extras; fall back to the device names
        entries = [(d, "", None, None, None) for d in sorted(glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*"))]
    for device, description, serial_number, vid, pid in entries:
        ports.append(
            {
                "device": device,
                "by_id": by_id.get(os.path.realpath(device)),
                "description": description,
                "adapter": KNOWN_ADAPTERS.get((vid, pid)) if vid is not None else None,
                "vid_pid": f"{vid:04x}:{pid:04x}" if vid is not None else None,
                "serial_number": serial_number,
                "latency_timer_ms": _latency_timer(device),
            }
        )
    return ports


def list_realsense() -> list[dict]:
    try:
        import pyrealsense2 as rs
    except ImportError:
        return []
    cameras = []
    for dev in rs.context().query_devices():
        def info(key, dev=dev):
            return dev.get_info(key) if dev.supports(key) else ""

        cameras.append(
            {
                "driver": "realsense",
                "name": info(rs.camera_info.name),
                "serial": info(rs.camera_info.serial_number),
                "details": f"firmware {info(rs.camera_info.firmware_version)}, "
                f"USB {info(rs.camera_info.usb_type_descriptor)}",
            }
        )
    return cameras


def list_v4l2() -> list[dict]:
    by_id = {os.path.realpath(p): p for p in glob.glob("/dev/v4l/by-id/*")}
    cameras = []
    for sys_dir in sorted(glob.glob("/sys/class/video4linux/video*")):
        device = f"/dev/{Path(sys_dir).name}"
        name_file = Path(sys_dir) / "name"
        name = name_file.read_text().strip() if name_file.exists() else "?"
        cameras.append(
            {
                "driver": "opencv",
                "name": name,
                "source": by_id.get(device, device),
                "details": device,
            }
        )
    return cameras


def _latency_timer(device: str) -> int | None:
    path = Path(f"/sys/bus/usb-serial/devices/{Path(device).name}/latency_timer")
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _dialect(protocol: str):
    if protocol == "dynamixel":
        from tether.robot.drivers.dynamixel import DYNAMIXEL

        return DYNAMIXEL
    if protocol == "feetech":
        from tether.robot.drivers.feetech import FEETECH

        return FEETECH
    raise ConfigError(f"Unknown protocol '{protocol}'; use dynamixel or feetech.")


def _model_name(protocol: str, number: int) -> str | None:
    dialect = _dialect(protocol)
    for name, info in dialect.models.items():
        if info.number == number:
            return name
    return None
