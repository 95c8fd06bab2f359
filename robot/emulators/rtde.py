"""A minimal UR controller RTDE *output* peer on 127.0.0.1:30004, for ur_rtde's receive interface.

It speaks RTDE protocol version 2 the way a UR e-Series controller does for a receive-only
client: protocol version request, controller version (5.11), output recipe setup (types for the
requested variables, NOT_FOUND for unknown ones), start, then data packages at the requested
frequency, and pause. Input recipes and URScript are not implemented, so
`rtde_control.RTDEControlInterface` (which uploads and runs a control script) cannot connect;
URArm's read-only mode and everything on the receive side can be tested against it.

Run it as its own process: ur_rtde's constructors hold the GIL while they wait for the
controller, so a peer thread in the same process would never get to answer.

    python -m tether.robot.emulators.rtde            # then: URArm with host 127.0.0.1

State changes arrive as JSON lines on stdin, e.g. {"actual_q": [0, -1.57, 1.57, 0, 0, 0]} or
{"safety_status_bits": 4} (bit 2: protective stop); {"restart_clock": true} sets the controller
`timestamp` (seconds since boot, on the controller's own clock) back to zero, as a controller
reboot does; "quit" stops the peer.

A malformed packet (a size below the 3-byte header, a payload too short for its type, a recipe
that is not text) ends that client's connection, as a controller does; the peer keeps serving
everyone else. A start request for a recipe with unknown variables is refused (accepted = 0).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time

PORT = 30004
TYPES = {
    "timestamp": "DOUBLE",
    "actual_q": "VECTOR6D",
    "actual_qd": "VECTOR6D",
    "target_q": "VECTOR6D",
    "actual_TCP_pose": "VECTOR6D",
    "robot_mode": "INT32",
    "safety_mode": "INT32",
    "safety_status_bits": "UINT32",
    "robot_status_bits": "UINT32",
    "runtime_state": "UINT32",
    "speed_scaling": "DOUBLE",
    "target_speed_fraction": "DOUBLE",
}
FORMATS = {"DOUBLE": "d", "VECTOR6D": "6d", "INT32": "i", "UINT32": "I"}
ROBOT_MODE_RUNNING = 7
SAFETY_MODE_NORMAL = 1


class RTDEPeer:
    def __init__(self, host: str = "127.0.0.1", port: int = PORT) -> None:
        self.state = {
            "actual_q": [0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0],
            "actual_qd": [0.0] * 6,
            "target_q": [0.0] * 6,
            "actual_TCP_pose": [0.0] * 6,
            "robot_mode": ROBOT_MODE_RUNNING,
            "safety_mode": SAFETY_MODE_NORMAL,
            "safety_status_bits": 1,  # normal mode
            "robot_status_bits": 3,  # power on, program running
            "runtime_state": 2,  # playing
            "speed_scaling": 1.0,
            "target_speed_fraction": 1.0,
        }
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.server = socket.create_server((host, port), reuse_port=False)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.stop = threading.Event()
        self.malformed = 0  # connections ended for a malformed packet

    @property
    def port(self) -> int:
        """The TCP port listened on (useful with port=0 in tests)."""
        return self.server.getsockname()[1]

    def serve(self) -> None:
        self.server.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()
        self.server.close()

    def _client(self, conn: socket.socket) -> None:
        recipe: list[str] = []
        frequency = 500.0
        streaming = threading.Event()
        sender = None
        buffer = b""
        conn.settimeout(0.2)
        try:
            while not self.stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    break
                buffer += data
                while len(buffer) >= 3:
                    size, kind = struct.unpack(">HB", buffer[:3])
                    if size < 3:
                        raise MalformedPacket(f"size {size} is smaller than the header")
                    if len(buffer) < size:
                        break
                    payload, buffer = buffer[3:size], buffer[size:]
                    kind = chr(kind)
                    if kind == "V":
                        conn.sendall(_packet("V", struct.pack(">B", 1)))
                    elif kind == "v":
                        conn.sendall(_packet("v", struct.pack(">IIII", 5, 11, 0, 0)))
                    elif kind == "O":
                        frequency = struct.unpack(">d", payload[:8])[0]
                        recipe = [n for n in payload[8:].decode().split(",") if n]
                        types = [TYPES.get(n, "NOT_FOUND") for n in recipe]
                        conn.sendall(_packet("O", bytes([1]) + ",".join(types).encode()))
                    elif kind == "I":
                        names = [n for n in payload.decode().split(",") if n]
                        conn.sendall(_packet("I", bytes([0]) + ",".join("NOT_FOUND" for _ in names).encode()))
                    elif kind == "S":
                        if not recipe or any(n not in TYPES for n in recipe):
                            conn.sendall(_packet("S", struct.pack(">B", 0)))
                            continue
                        conn.sendall(_packet("S", struct.pack(">B", 1)))
                        streaming.set()
                        if sender is None:
                            sender = threading.Thread(
                                target=self._stream, args=(conn, recipe, frequency, streaming), daemon=True
                            )
                            sender.start()
                    elif kind == "P":
                        streaming.clear()
                        conn.sendall(_packet("P", struct.pack(">B", 1)))
        except OSError:
            pass
        except (MalformedPacket, struct.error, UnicodeDecodeError):
            self.malformed += 1  # a controller drops a client that sends garbage
        finally:
            streaming.clear()
            conn.close()

    def _stream(self, conn, recipe, frequency, streaming) -> None:
        period = 1.0 / max(1.0, min(frequency, 500.0))
        next_t = time.monotonic()
        while not self.stop.is_set():
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not streaming.is_set():
                continue
            with self.lock:
                values = dict(self.state, timestamp=time.monotonic() - self.t0)
            body = bytes([1])
            for name in recipe:
                fmt = FORMATS[TYPES[name]]
                value = values[name]
                body += struct.pack(">" + fmt, *(value if isinstance(value, list) else [value]))
            try:
                conn.sendall(_packet("U", body))
            except OSError:
                return

    def read_commands(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            if line == "quit":
                break
            update = json.loads(line)
            with self.lock:
                if update.get("restart_clock"):
                    self.t0 = time.monotonic()
                self.state.update({k: v for k, v in update.items() if k in self.state})
        self.stop.set()


class MalformedPacket(ValueError):
    """A packet no RTDE client sends; the connection is closed."""


def _packet(kind: str, body: bytes) -> bytes:
    return struct.pack(">HB", 3 + len(body), ord(kind)) + body


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser(description="RTDE output peer for ur_rtde's receive interface.")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="exit after this long (0: never)")
    args = parser.parse_args(argv)
    if args.max_seconds > 0:  # bounded in time even if the parent never says quit
        timer = threading.Timer(args.max_seconds, lambda: os._exit(0))
        timer.daemon = True
        timer.start()
    peer = RTDEPeer()
    print(f"RTDE peer on 127.0.0.1:{PORT}", flush=True)
    threading.Thread(target=peer.serve, daemon=True).start()
    peer.read_commands()


if __name__ == "__main__":
    main()
