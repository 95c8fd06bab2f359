"""PolicyClient: timeouts, reconnects, late replies, reply validation and spec checks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from tether.core.errors import PolicyError, ProtocolError
from tether.core.schema import ArraySpec
from tether.policies import protocol
from tether.policies.client import PolicyClient, ServerTimeout
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import IdentityPolicy, SlowPolicy

OBS = (ArraySpec("state", "float32", (6,)), ArraySpec("image.top", "uint8", (8, 8, 3)))


def make_obs(value: float = 0.5) -> dict[str, np.ndarray]:
    return {"state": np.full(6, value, np.float32), "image.top": np.zeros((8, 8, 3), np.uint8)}


def identity(chunk_size: int = 5) -> IdentityPolicy:
    return IdentityPolicy(OBS, 6, chunk_size=chunk_size, fps=30)


@pytest.mark.realtime  # the 0.2 s timeout is honoured (a loaded host may add a few seconds)
def test_no_server_times_out_quickly_naming_the_address():
    with PolicyClient("tcp://127.0.0.1:9", timeout_s=0.2) as client:
        t0 = time.monotonic()
        with pytest.raises(ServerTimeout, match=r"tcp://127\.0\.0\.1:9.*tether serve"):
            client.info()
        assert time.monotonic() - t0 < 3.0
        with pytest.raises(ServerTimeout):
            client.send_infer(make_obs())  # nothing connected: refused at once, nothing queued
        assert client.pending == 0


def test_the_client_reconnects_to_a_restarted_server():
    server = PolicyServer(identity(), ServerConfig("tcp://127.0.0.1:0")).start()
    endpoint = server.endpoint
    with PolicyClient(endpoint, timeout_s=0.3) as client:
        assert client.infer(make_obs(0.1)).actions[0, 0] == pytest.approx(0.1)
        server.stop()
        with pytest.raises(ServerTimeout):
            client.infer(make_obs())
        server = PolicyServer(identity(), ServerConfig(endpoint)).start()
        client.timeout_s = 10.0  # reconnecting may take a while on a loaded host; not a hang
        try:
            assert client.infer(make_obs(0.2)).actions[0, 0] == pytest.approx(0.2)
        finally:
            server.stop()


def test_a_late_reply_is_never_taken_for_the_answer_to_a_newer_request():
    slow = SlowPolicy(identity(), 0.5)  # the first reply comes well after the 0.1 s timeout
    with PolicyServer(slow, ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=0.1) as client:
            with pytest.raises(ServerTimeout):
                client.infer(make_obs(1.0))
            client.timeout_s = 10.0  # behind the late one: >= 0.9 s, however slow the host
            reply = client.infer(make_obs(2.0))
            assert reply.actions[0, 0] == pytest.approx(2.0)


def test_async_requests_carry_their_tag_and_timing():
    with PolicyServer(identity(), ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=1.0) as client:
            client.info()
            client.send_infer(make_obs(), tag=17, wait_s=1.0)
            assert client.pending == 1 and client.oldest_pending_age() >= 0
            reply = client.poll_reply(1.0)
            assert reply is not None and reply.tag == 17 and client.pending == 0
            assert client.poll_reply(0.0) is None


def test_check_spec_lists_every_mismatch():
    with PolicyServer(identity(), ServerConfig("tcp://127.0.0.1:0")) as server:
        with PolicyClient(server.endpoint, timeout_s=1.0) as client:
            robot_side = (
                ArraySpec("state", "float32", (7,)),
                ArraySpec("image.wrist", "uint8", (8, 8, 3)),
            )
            with pytest.raises(PolicyError) as err:
                client.check_spec(robot_side, action_dim=7)
            text = str(err.value)
            assert "'state': policy needs float32 (6,), robot gives float32 (7,)" in text
            assert "policy needs 'image.top'" in text and "image.wrist" in text
            assert "policy outputs 6 actions per step, the robot takes 7" in text
            assert client.check_spec(OBS, 6).action_dim == 6
            with pytest.raises(PolicyError, match="image.top"):
                client.send_infer({"state": np.zeros(6, np.float32)})


class FakeServer:
    """A ROUTER that answers every request with frames chosen by the test."""

    def __init__(self, make_reply) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.make_reply = make_reply
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.socket.poll(50):
                identity, *frames = self.socket.recv_multipart()
                header = protocol.decode(frames).header
                self.socket.send_multipart([identity, *self.make_reply(header["id"])])
        self.socket.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.context.term()


def _chunk_reply(rid, action) -> list:
    head = {"id": rid, "op": "infer", "t_recv": 0.0, "t_reply": 0.0}
    return protocol.encode(head, {"action": action})


BAD_REPLIES = {
    "nan": lambda rid: _chunk_reply(rid, np.full((5, 6), np.nan, np.float32)),
    "float64": lambda rid: _chunk_reply(rid, np.zeros((5, 6), np.float64)),
    "1-d": lambda rid: _chunk_reply(rid, np.zeros(6, np.float32)),
    "no action": lambda rid: protocol.encode({"id": rid, "op": "infer", "t_recv": 0, "t_reply": 0}),
    "garbage": lambda rid: [b"\xc1\xc1"],
    "no timing": lambda rid: protocol.encode(
        {"id": rid, "op": "infer"}, {"action": np.zeros((5, 6), np.float32)}
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_malformed_replies_raise_protocol_error(case):
    fake = FakeServer(BAD_REPLIES[case])
    try:
        with PolicyClient(fake.endpoint, timeout_s=1.0) as client:
            with pytest.raises(ProtocolError):
                client.infer(make_obs())
    finally:
        fake.close()


def test_a_wrong_action_dim_against_the_info_is_refused():
    spec = identity().spec.as_dict()

    def reply(rid):
        if rid == 1:
            return protocol.encode(
                {"id": rid, "op": "info", "protocol": 1, "spec": spec, "max_message_bytes": 1000}
            )
        return _chunk_reply(rid, np.zeros((5, 4), np.float32))

    fake = FakeServer(reply)
    try:
        with PolicyClient(fake.endpoint, timeout_s=1.0) as client:
            client.info()
            with pytest.raises(ProtocolError, match="action_dim 4"):
                client.infer(make_obs())
    finally:
        fake.close()
