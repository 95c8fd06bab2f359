"""Message size limits through a real server on 127.0.0.1: too many frames, too many bytes in
total (each frame under the per-frame limit), and shapes whose element count overflows. Every
one gets an error reply naming the limit, and the server keeps serving."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from tether.core.schema import ArraySpec
from tether.policies import protocol
from tether.policies.client import PolicyClient
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import IdentityPolicy

OBS = (ArraySpec("state", "float32", (4,)),)
LIMIT = 1_000_000


@pytest.fixture(scope="module")
def server():
    policy = IdentityPolicy(OBS, action_dim=4, chunk_size=2)
    with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0", max_message_bytes=LIMIT)) as srv:
        yield srv


@pytest.fixture
def dealer(server):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    yield sock
    sock.close(linger=0)
    context.term()


def _reply(sock: zmq.Socket) -> dict:
    assert sock.poll(5000), "no reply: the server must answer every refusal"
    message = protocol.decode(sock.recv_multipart(), allowed_ops=(*protocol.OPS, "error"))
    return message.header


def _still_serves(server) -> None:
    with PolicyClient(server.endpoint, timeout_s=5.0) as client:
        reply = client.infer({"state": np.ones(4, np.float32)})
    assert reply.actions.shape == (2, 4)
    assert server.stats.errors["internal"] == 0


def test_too_many_frames_are_refused_as_soon_as_they_are_counted(server, dealer):
    head = msgpack.packb({"v": 1, "id": 7, "op": "infer", "arrays": []})
    dealer.send_multipart([head, *([b"x"] * 500)])
    reply = _reply(dealer)
    assert reply["op"] == "error" and reply["code"] == "too_large" and reply["id"] == 7
    assert "frames" in reply["message"]
    _still_serves(server)


def test_a_message_over_the_total_limit_is_refused_though_each_frame_is_under_it(server, dealer):
    head = msgpack.packb({"v": 1, "id": 8, "op": "infer", "arrays": []})
    frame = b"\0" * (LIMIT // 2)  # three of these: each allowed by ZMQ, together too many
    dealer.send_multipart([head, frame, frame, frame])
    reply = _reply(dealer)
    assert reply["code"] == "too_large" and reply["id"] == 8
    assert str(LIMIT) in reply["message"]
    _still_serves(server)


@pytest.mark.parametrize(
    "shape",
    [[2**40, 2**40], [0, 2**62, 2**62], [2**63 - 1], [1, 2**31, 2**31, 2**31], [0, 2**64 - 1]],
)
def test_shapes_whose_size_overflows_get_an_error_reply(server, dealer, shape):
    head = {"v": 1, "id": 9, "op": "infer",
            "arrays": [{"name": "state", "dtype": "float32", "shape": shape}]}  # fmt: skip
    dealer.send_multipart([msgpack.packb(head), b""])
    reply = _reply(dealer)
    assert reply["op"] == "error" and reply["code"] in ("too_large", "bad_shape"), reply
    assert reply["id"] == 9
    _still_serves(server)


def test_the_decoder_itself_refuses_every_overflowing_shape():
    for shape in ([2**40, 2**40], [0, 2**62, 2**62], [0, 0, 2**60]):
        head = {"v": 1, "op": "infer", "arrays": [{"name": "a", "dtype": "uint8", "shape": shape}]}
        with pytest.raises(protocol.MessageError):
            protocol.decode([msgpack.packb(head), b""])
