"""Servo-bus emulators answer garbage as a real bus does: they ignore it and keep answering.

Found as a new user: `tether scan-bus --protocol dynamixel` against a Feetech bus killed the
emulator's reader thread (IndexError on a Dynamixel header read as a too-short Feetech packet).
The property tests feed arbitrary bytes through the emulators' own framing and dispatch, with the
clock injected; the pty tests send seeded garbage over the wire and then need a valid ping reply.
"""

from __future__ import annotations

import os
import random
import select
import termios
import time
import tty

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tether.robot.emulators import DynamixelBusEmulator, FeetechBusEmulator
from tether.robot.emulators import dynamixel as dxl
from tether.robot.emulators import feetech as ft
from tether.robot.emulators.servo_bus import PARTIAL_PACKET_TIMEOUT_S

DXL_PING = dxl.build_packet(1, dxl.INST_PING, b"")
FT_PING = ft.build_packet(1, ft.INST_PING, b"")
# What servo 1 answers to a ping (Dynamixel: model 1200 = xl330-m288, firmware 52).
DXL_PONG = dxl.build_packet(1, dxl.STATUS, bytes([0]) + (1200).to_bytes(2, "little") + bytes([52]))
FT_PONG = ft.build_packet(1, 0, b"")

EMULATORS = {
    "dynamixel": (lambda: DynamixelBusEmulator([1, 2, 3]), DXL_PING, DXL_PONG),
    "feetech": (lambda: FeetechBusEmulator([1, 2, 3]), FT_PING, FT_PONG),
}


def _pieces() -> st.SearchStrategy[bytes]:
    """Byte strings that reach past the framing: headers with odd lengths, truncated packets,
    the other protocol's packets, and packets with valid checksums but missing parameters."""
    lengths = st.integers(0, 300).map(lambda n: n.to_bytes(2, "little"))
    instructions = st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x08, 0x82, 0x83, 0x55, 0x00])
    ids = st.sampled_from([0, 1, 2, 3, 7, 0xFD, 0xFE, 0xFF])
    short = st.binary(max_size=6)
    return st.one_of(
        st.binary(max_size=64),
        st.sampled_from([dxl.HEADER, b"\xff\xff", b"\xff\xff\xff", DXL_PING, FT_PING]),
        st.builds(lambda i, n, rest: dxl.HEADER + bytes([i]) + n + rest, ids, lengths, st.binary(max_size=12)),
        st.builds(lambda i, n, rest: b"\xff\xff" + bytes([i, n]) + rest, ids, st.integers(0, 255), st.binary(max_size=12)),
        st.builds(dxl.build_packet, ids, instructions, short),
        st.builds(ft.build_packet, ids, instructions, short),
    )


@pytest.mark.parametrize("protocol", sorted(EMULATORS))
@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.lists(_pieces(), max_size=6).map(b"".join), max_size=8))
def test_no_input_reaches_an_unhandled_error(protocol, chunks):
    make, ping, pong = EMULATORS[protocol]
    bus = make()  # not started: receive() is the reader thread's whole job, minus the pty
    now = 0.0
    for chunk in chunks:
        now += 0.001
        bus.receive(chunk, now)
    assert bus.counts["malformed"] == 0, "a packet reached code that could not parse it"
    # After the line goes quiet, a half-received packet is dropped and a ping is answered.
    replies = bus.receive(ping, now + 2 * PARTIAL_PACKET_TIMEOUT_S)
    assert pong in replies


@pytest.mark.parametrize("protocol", sorted(EMULATORS))
def test_the_other_protocols_ping_is_ignored(protocol):
    make, ping, pong = EMULATORS[protocol]
    other_ping = FT_PING if protocol == "dynamixel" else DXL_PING
    bus = make()
    assert bus.receive(other_ping * 3, 0.0) == []
    assert bus.counts["malformed"] == 0
    assert pong in bus.receive(ping, 1.0)


@pytest.mark.parametrize("protocol", sorted(EMULATORS))
def test_the_emulator_survives_garbage_on_the_wire(protocol):
    make, ping, pong = EMULATORS[protocol]
    rng = random.Random(12)
    with make() as bus:
        fd = _open_port(bus.port)
        try:
            received = bytearray()
            for _ in range(40):
                os.write(fd, rng.randbytes(rng.randint(1, 600)))
                received += _drain(fd, wait_s=0.0)  # never let unread replies block the emulator
            os.write(fd, FT_PING if protocol == "dynamixel" else DXL_PING)
            assert _answers(fd, ping, pong), f"{protocol} emulator stopped answering after garbage"
            assert bus._thread is not None and bus._thread.is_alive()
            assert bus.counts["malformed"] == 0
        finally:
            os.close(fd)


def test_scan_bus_with_the_wrong_protocol_then_the_right_one():
    """The reported case, through the CLI: the wrong protocol finds nothing, the right one works."""
    import typer

    from tether.app.commands.hardware import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    with FeetechBusEmulator([1, 2]) as bus:
        wrong = runner.invoke(
            app, ["scan-bus", "--port", bus.port, "--protocol", "dynamixel", "--ids", "1-2", "--timeout-ms", "50"]
        )
        assert wrong.exit_code == 1, wrong.output
        assert "No dynamixel servo answered" in wrong.output
        right = runner.invoke(
            app, ["scan-bus", "--port", bus.port, "--protocol", "feetech", "--ids", "1-2", "--json", "--timeout-ms", "150"]
        )
        assert right.exit_code == 0, right.output
        assert '"id": 1' in right.output and '"id": 2' in right.output
        assert bus._thread is not None and bus._thread.is_alive()
        assert bus.counts["malformed"] == 0


def _open_port(port: str) -> int:
    """Open the emulated port raw at 1 Mbaud, as the vendor SDKs do."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = termios.B1000000
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return fd


def _drain(fd: int, wait_s: float) -> bytes:
    out = bytearray()
    while True:
        ready, _, _ = select.select([fd], [], [], wait_s)
        if not ready:
            return bytes(out)
        out += os.read(fd, 4096)


def _answers(fd: int, ping: bytes, pong: bytes, deadline_s: float = 10.0) -> bool:
    """Ping until the expected reply arrives (retrying as the SDKs do) or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        time.sleep(2 * PARTIAL_PACKET_TIMEOUT_S)  # a quiet line: the servo drops a partial packet
        os.write(fd, ping)
        if pong in _drain(fd, wait_s=0.2):
            return True
    return False


# --- the UR RTDE peer (TCP) ---------------------------------------------------------------------


@pytest.fixture
def rtde_peer():
    """The RTDE peer in this process on a free port (raw sockets only: no ur_rtde, no GIL issue)."""
    import threading

    from tether.robot.emulators.rtde import RTDEPeer

    peer = RTDEPeer(port=0)
    thread = threading.Thread(target=peer.serve, daemon=True)
    thread.start()
    yield peer
    peer.stop.set()
    thread.join(timeout=5)


@pytest.mark.parametrize(
    ("garbage", "dropped"),
    [
        (b"\x00\x00V", True),  # size 0: used to spin forever without consuming the buffer
        (b"\x00\x01V\x00", True),  # size below the header
        (b"\x00\x05O\x00\x00", True),  # output setup without its 8-byte frequency
        (b"\x00\x05I\xff\xfe", True),  # input recipe that is not text
        (b"\x00\x0bO" + b"\x00" * 8, False),  # frequency 0, empty recipe: valid, answered
        (b"\x00\x03S", False),  # start with no recipe: refused, the connection stays
    ],
)
def test_the_rtde_peer_survives_malformed_packets(rtde_peer, garbage, dropped):
    import socket

    with socket.create_connection(("127.0.0.1", rtde_peer.port), timeout=5) as conn:
        conn.sendall(garbage)
        conn.sendall(_rtde_packet("V", b"\x00\x02"))  # protocol version request (after garbage)
        replies = _read_until_closed_or(conn, deadline_s=5, want=8)
    if dropped:
        assert replies == b"" and rtde_peer.malformed == 1
    else:
        assert replies.endswith(_rtde_packet("V", b"\x01")) and rtde_peer.malformed == 0
    # Whatever happened to that connection, the peer still answers a new client.
    with socket.create_connection(("127.0.0.1", rtde_peer.port), timeout=5) as conn:
        conn.sendall(_rtde_packet("V", b"\x00\x02"))
        assert _rtde_packet("V", b"\x01") in _read_until_closed_or(conn, deadline_s=5, want=4)


def test_the_rtde_peer_refuses_to_start_an_unknown_recipe(rtde_peer):
    import socket

    with socket.create_connection(("127.0.0.1", rtde_peer.port), timeout=5) as conn:
        conn.sendall(_rtde_packet("O", b"\x40\x5f\x40\x00\x00\x00\x00\x00" + b"actual_q,no_such_var"))
        conn.sendall(_rtde_packet("S", b""))
        replies = _read_until_closed_or(conn, deadline_s=5, want=4 + 28 + 4)
    assert _rtde_packet("S", b"\x00") in replies


def _rtde_packet(kind: str, body: bytes) -> bytes:
    return (3 + len(body)).to_bytes(2, "big") + kind.encode() + body


def _read_until_closed_or(conn, deadline_s: float, want: int | None = None) -> bytes:
    """Read until the peer closes, `want` bytes arrived, or the deadline passes."""
    out = bytearray()
    deadline = time.monotonic() + deadline_s
    conn.settimeout(0.1)
    while time.monotonic() < deadline and (want is None or len(out) < want):
        try:
            data = conn.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        out += data
    return bytes(out)
