"""The typed protocol messages: every operation round-trips, every bad field is named.

encode -> decode must give an equal object (arrays: same dtype, shape and values), decoded
arrays must stay zero-copy views of the frames (the server keeps them as such until the policy
has run), and a malformed message must raise MessageError with the code and the field at fault.
A static check keeps header field names out of server.py and client.py.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from tether.core.errors import ProtocolError
from tether.core.schema import ArraySpec, PolicySpec
from tether.policies import protocol
from tether.policies.client import PolicyClient
from tether.policies.protocol import (
    ErrorReply,
    InferReply,
    InferRequest,
    InfoReply,
    InfoRequest,
    MessageError,
    PingReply,
    PingRequest,
    ResetReply,
    ResetRequest,
)

SPEC = PolicySpec(
    policy_type="diffusion",
    observation=(ArraySpec("state", "float32", (14,)), ArraySpec("image.top", "uint8", (4, 6, 3))),
    action_dim=14,
    chunk_size=8,
    fps=50.0,
    normalizer_hash="abc123",
    extra={"num_train_steps": 100, "obs_horizon": 2},
)


def _observation() -> dict[str, np.ndarray]:
    return {
        "state": np.linspace(-1, 1, 14, dtype=np.float32),
        "image.top": np.arange(72, dtype=np.uint8).reshape(4, 6, 3),
    }


def _action() -> np.ndarray:
    return np.arange(8 * 14, dtype=np.float32).reshape(8, 14) / 7


MESSAGES = {
    "info request": InfoRequest(1),
    "info request t_sent": InfoRequest("abc", t_sent=3.25),
    "info reply": InfoReply(
        2, SPEC, protocol=1, max_message_bytes=1 << 20, max_queued_per_client=2, t_recv=9.5
    ),
    "info reply minimal": InfoReply(2, SPEC),
    "ping request": PingRequest(3, t_sent=100.0),
    "ping reply": PingReply(3, t_recv=200.0, t_reply=200.5),
    "reset request": ResetRequest(4),
    "reset reply": ResetReply(4, t_recv=1.0, t_reply=2.0),
    "infer request": InferRequest(5, _observation(), steps=10, t_sent=1.5),
    "infer request streaming": InferRequest(7, _observation(), sampler="streaming", lookahead=4),
    "infer request bare": InferRequest(6, {"state": np.zeros(3, np.float64)}),
    "infer reply": InferReply(5, _action(), t_recv=1.0, t_reply=1.25, queue_ms=0.5, infer_ms=3.0),
    "error reply": ErrorReply(7, "bad_shape", "array 'state' has shape (7,), expected (14,)"),
    "error reply retryable": ErrorReply(None, "busy", "wait for a reply"),
}


def _bytes(frames: list) -> list[bytes]:
    return [bytes(f) for f in frames]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_round_trips_to_an_equal_object(name):
    message = MESSAGES[name]
    decode = (
        protocol.decode_request if isinstance(message, protocol.Request) else protocol.decode_reply
    )
    for frames in (message.encode(), _bytes(message.encode())):  # memoryviews and bytes
        decoded = decode(frames)
        assert type(decoded) is type(message)
        assert decoded == message
        assert type(message).decode(frames) == message  # the class's own decoder too


def test_round_trip_keeps_array_dtypes_shapes_and_order():
    request = MESSAGES["infer request"]
    decoded = InferRequest.decode(_bytes(request.encode()))
    assert list(decoded.observation) == ["state", "image.top"]
    for key, array in request.observation.items():
        assert decoded.observation[key].dtype == array.dtype
        assert decoded.observation[key].shape == array.shape
    reply = InferReply.decode(_bytes(MESSAGES["infer reply"].encode()))
    assert reply.action.dtype == np.float32 and reply.action.shape == (8, 14)


def test_equality_sees_dtype_shape_and_values():
    base = InferRequest(1, {"state": np.zeros(4, np.float32)})
    assert base == InferRequest(1, {"state": np.zeros(4, np.float32)})
    assert base != InferRequest(1, {"state": np.zeros(4, np.float64)})
    assert base != InferRequest(1, {"state": np.zeros((2, 2), np.float32)})
    assert base != InferRequest(1, {"state": np.ones(4, np.float32)})
    assert base != InferRequest(2, {"state": np.zeros(4, np.float32)})
    assert base != PingRequest(1)


def test_the_info_reply_carries_the_spec_as_a_policy_spec():
    reply = protocol.decode_reply(MESSAGES["info reply"].encode())
    assert isinstance(reply, InfoReply) and reply.spec == SPEC
    assert reply.spec.observation[1] == ArraySpec("image.top", "uint8", (4, 6, 3))
    assert reply.max_queued_per_client == 2 and reply.t_recv == 9.5


def test_error_replies_say_whether_a_retry_can_help():
    assert ErrorReply(1, "busy", "x").retryable and ErrorReply(1, "too_many_clients", "x").retryable
    assert not ErrorReply(1, "bad_field", "x").retryable
    assert not ErrorReply(1, "bad_field", "x", retryable=True).retryable  # the code decides
    error = ErrorReply(1, "policy_error", "boom").to_exception()
    assert isinstance(error, protocol.RemoteError) and error.code == "policy_error"
    assert not error.retryable and "boom" in str(error)
    with pytest.raises(ValueError):
        ErrorReply(1, "not_a_code", "x").encode()
    # a newer server's code is read, not refused, and is not retryable unless it says so
    frames = protocol.encode({"id": 1, "op": "error", "code": "future_code", "message": "m"})
    reply = protocol.decode_reply(frames)
    assert isinstance(reply, ErrorReply) and reply.code == "future_code" and not reply.retryable
    frames = protocol.encode({"id": 1, "op": "error", "code": "future_busy", "retryable": True})
    assert protocol.decode_reply(frames).to_exception().retryable


def test_the_error_reply_of_a_message_error_keeps_its_code_and_text():
    error = MessageError("bad_field", "'steps' must be ...", field="steps")
    reply = ErrorReply.from_error(9, error)
    assert (reply.id, reply.code, reply.message) == (9, "bad_field", "'steps' must be ...")


def test_infer_request_policy_options_carry_steps_only_when_set():
    assert InferRequest(1, {}, steps=7).policy_options() == {"steps": 7}
    assert InferRequest(1, {}).policy_options() == {}


def test_unknown_header_fields_are_ignored_for_forward_compatibility():
    frames = protocol.encode({"id": 1, "op": "ping", "t_sent": 1.0, "trace": "x"})
    assert protocol.decode_request(frames) == PingRequest(1, t_sent=1.0)


# --- zero copy ----------------------------------------------------------------------------------


def test_encode_sends_contiguous_arrays_without_a_copy():
    observation = _observation()
    frames = InferRequest(1, observation).encode()
    for frame, array in zip(frames[1:], observation.values(), strict=True):
        assert np.shares_memory(np.frombuffer(frame, np.uint8), array)


def test_decoded_arrays_are_read_only_views_of_the_frames():
    frames = _bytes(InferRequest(1, _observation()).encode())
    request = InferRequest.decode(frames)
    for frame, array in zip(frames[1:], request.observation.values(), strict=True):
        assert not array.flags.writeable
        assert np.shares_memory(array, np.frombuffer(frame, np.uint8))
    frames = _bytes(MESSAGES["infer reply"].encode())
    reply = InferReply.decode(frames)
    assert np.shares_memory(reply.action, np.frombuffer(frames[1], np.uint8))


def test_arrays_received_with_copy_false_stay_in_the_zmq_frames():
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        a.bind("inproc://typed-messages")
        b.connect("inproc://typed-messages")
        state = np.arange(4096, dtype=np.float32)  # large enough that ZMQ does not inline it
        a.send_multipart(InferRequest(1, {"state": state}).encode(), copy=False)
        assert b.poll(5000)
        frames = b.recv_multipart(copy=False)
        request = protocol.decode_request(frames)
        np.testing.assert_array_equal(request.observation["state"], state)
        assert np.shares_memory(
            request.observation["state"], np.frombuffer(frames[1].buffer, np.uint8)
        )
    finally:
        a.close(linger=0)
        b.close(linger=0)
        context.term()


# --- bad input ----------------------------------------------------------------------------------

ACTION = np.zeros((5, 14), np.float32)
GOOD_SPEC = SPEC.as_dict()


def _spec_with(**changes) -> dict:
    return {**GOOD_SPEC, **changes}


def _info(spec) -> list:
    return protocol.encode({"id": 1, "op": "info", "protocol": 1, "spec": spec,
                            "max_message_bytes": 1000})  # fmt: skip


def _infer_reply(action=ACTION, **header) -> list:
    head = {"id": 1, "op": "infer", "t_recv": 0.0, "t_reply": 0.0, **header}
    return protocol.encode(head, {} if action is None else {"action": action})


def _nan_state() -> np.ndarray:
    state = np.zeros(14, np.float32)
    state[2] = np.nan
    return state


# case -> (decoder, frames, code, field)
BAD_REQUESTS = {
    "unknown op": (protocol.encode({"id": 1, "op": "shutdown"}), "unknown_op", "op"),
    "a reply op": (protocol.encode({"id": 1, "op": "error"}), "unknown_op", "op"),
    "steps zero": (protocol.encode({"id": 1, "op": "infer", "steps": 0}), "bad_field", "steps"),
    "steps bool": (protocol.encode({"id": 1, "op": "infer", "steps": True}), "bad_field", "steps"),
    "steps float": (protocol.encode({"id": 1, "op": "infer", "steps": 2.5}), "bad_field", "steps"),
    "steps too many": (
        protocol.encode({"id": 1, "op": "infer", "steps": protocol.MAX_STEPS + 1}),
        "bad_field",
        "steps",
    ),
    "lookahead negative": (protocol.encode({"id": 1, "op": "infer", "lookahead": -1}), "bad_field",
                           "lookahead"),
    "lookahead string": (protocol.encode({"id": 1, "op": "infer", "lookahead": "4"}), "bad_field",
                         "lookahead"),
    "lookahead too many": (
        protocol.encode({"id": 1, "op": "infer", "lookahead": protocol.MAX_LOOKAHEAD + 1}),
        "bad_field",
        "lookahead",
    ),
    "t_sent inf": (
        protocol.encode({"id": 1, "op": "ping", "t_sent": math.inf}),
        "bad_field",
        "t_sent",
    ),
    "t_sent string": (
        protocol.encode({"id": 1, "op": "infer", "t_sent": "now"}),
        "bad_field",
        "t_sent",
    ),
    "id a list": (protocol.encode({"id": [1], "op": "ping"}), "bad_field", "id"),
    "id too long": (protocol.encode({"id": "x" * 129, "op": "ping"}), "bad_field", "id"),
    "NaN in an observation": (
        protocol.encode({"id": 1, "op": "infer"}, {"state": _nan_state()}),
        "non_finite",
        "state",
    ),
    "arrays on reset": (
        protocol.encode({"id": 1, "op": "reset"}, {"state": ACTION}),
        "extra_array",
        "state",
    ),
    "arrays on ping": (
        protocol.encode({"id": 1, "op": "ping"}, {"x": ACTION}),
        "extra_array",
        "x",
    ),
}

BAD_REPLIES = {
    "no action": (_infer_reply(action=None), "missing_array", "action"),
    "float64 action": (_infer_reply(ACTION.astype(np.float64)), "bad_dtype", "action"),
    "1-d action": (_infer_reply(ACTION[0]), "bad_shape", "action"),
    "empty chunk": (_infer_reply(ACTION[:0]), "bad_shape", "action"),
    "NaN action": (_infer_reply(np.full((5, 14), np.nan, np.float32)), "non_finite", "action"),
    "extra array": (
        protocol.encode(
            {"id": 1, "op": "infer", "t_recv": 0.0, "t_reply": 0.0},
            {"action": ACTION, "debug": ACTION},
        ),
        "extra_array",
        "debug",
    ),
    "no t_recv": (
        protocol.encode({"id": 1, "op": "infer", "t_reply": 0.0}, {"action": ACTION}),
        "bad_field",
        "t_recv",
    ),
    "t_reply a string": (_infer_reply(t_reply="late"), "bad_field", "t_reply"),
    "infer_ms NaN": (_infer_reply(infer_ms=math.nan), "bad_field", "infer_ms"),
    "ping without t_reply": (
        protocol.encode({"id": 1, "op": "ping", "t_recv": 0.0}),
        "bad_field",
        "t_reply",
    ),
    "reset t_recv bool": (
        protocol.encode({"id": 1, "op": "reset", "t_recv": True, "t_reply": 0.0}),
        "bad_field",
        "t_recv",
    ),
    "info without spec": (
        protocol.encode({"id": 1, "op": "info", "protocol": 1, "max_message_bytes": 10}),
        "bad_field",
        "spec",
    ),
    "info spec a list": (_info([1, 2]), "bad_field", "spec"),
    "spec with an object dtype": (
        _info(_spec_with(observation=[{"name": "state", "dtype": "object", "shape": [3]}])),
        "bad_field",
        "spec",
    ),
    "spec with a negative dim": (
        _info(_spec_with(observation=[{"name": "state", "dtype": "float32", "shape": [-3]}])),
        "bad_field",
        "spec",
    ),
    "spec with a float dim": (
        _info(_spec_with(observation=[{"name": "state", "dtype": "float32", "shape": [3.5]}])),
        "bad_field",
        "spec",
    ),
    "spec action_dim zero": (_info(_spec_with(action_dim=0)), "bad_field", "spec"),
    "spec action_dim string": (_info(_spec_with(action_dim="14")), "bad_field", "spec"),
    "spec fps NaN": (_info(_spec_with(fps=math.nan)), "bad_field", "spec"),
    "spec extra a list": (_info(_spec_with(extra=[1])), "bad_field", "spec"),
    "spec without policy_type": (
        _info({k: v for k, v in GOOD_SPEC.items() if k != "policy_type"}),
        "bad_field",
        "spec",
    ),
    "info protocol a string": (
        protocol.encode(
            {"id": 1, "op": "info", "protocol": "1", "spec": GOOD_SPEC, "max_message_bytes": 10}
        ),  # fmt: skip
        "bad_field",
        "protocol",
    ),
    "info without max_message_bytes": (
        protocol.encode({"id": 1, "op": "info", "protocol": 1, "spec": GOOD_SPEC}),
        "bad_field",
        "max_message_bytes",
    ),
    "error without code": (
        protocol.encode({"id": 1, "op": "error", "message": "m"}),
        "bad_field",
        "code",
    ),
    "error code an int": (
        protocol.encode({"id": 1, "op": "error", "code": 3, "message": "m"}),
        "bad_field",
        "code",
    ),
    "error retryable a string": (
        protocol.encode({"id": 1, "op": "error", "code": "busy", "retryable": "yes"}),
        "bad_field",
        "retryable",
    ),
    "unknown reply op": (protocol.encode({"id": 1, "op": "shutdown"}), "unknown_op", "op"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_decode_request_names_the_bad_field(case):
    frames, code, field = BAD_REQUESTS[case]
    with pytest.raises(MessageError) as err:
        protocol.decode_request(_bytes(frames))
    assert (err.value.code, err.value.field) == (code, field)
    assert err.value.detail and err.value.request_id == (1 if field != "id" else None)


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_decode_reply_names_the_bad_field(case):
    frames, code, field = BAD_REPLIES[case]
    with pytest.raises(MessageError) as err:
        protocol.decode_reply(_bytes(frames))
    assert (err.value.code, err.value.field) == (code, field)
    assert err.value.request_id == 1  # echoed, so the client knows which request it answers
    if code == "bad_field":
        assert f"'{field}'" in err.value.detail


def test_a_class_decoder_refuses_another_operation():
    with pytest.raises(MessageError) as err:
        InferRequest.decode(PingRequest(1).encode())
    assert err.value.code == "unknown_op" and "infer" in err.value.detail
    with pytest.raises(MessageError) as err:
        InferReply.decode(ErrorReply(1, "busy", "x").encode())
    assert err.value.code == "unknown_op"


def test_decode_refuses_messages_over_the_size_limit():
    frames = InferRequest(1, {"state": np.zeros(1000, np.float32)}).encode()
    with pytest.raises(MessageError) as err:
        protocol.decode_request(frames, max_message_bytes=2000)
    assert err.value.code == "too_large" and "2000" in err.value.detail


def test_framing_errors_name_the_array_at_fault():
    frames = protocol.encode({"id": 1, "op": "infer"}, {"state": np.zeros(4, np.float32)})
    with pytest.raises(MessageError) as err:
        protocol.decode_request([frames[0], bytes(frames[1])[:-4]])
    assert (err.value.code, err.value.field) == ("truncated", "state")


def test_encode_refuses_arrays_the_protocol_cannot_carry():
    with pytest.raises(MessageError) as err:
        InferRequest(1, {"names": np.array(["a", "b"])}).encode()
    assert err.value.code == "bad_dtype" and "names" in err.value.detail


# --- one place for the wire vocabulary ------------------------------------------------------------

WIRE_WORDS = {
    # header fields
    "v", "id", "op", "arrays", "steps", "t_sent", "t_recv", "t_reply", "queue_ms", "infer_ms",
    "spec", "protocol", "max_message_bytes", "max_queued_per_client", "code", "message",
    "retryable", "action",
    # operations
    "info", "reset", "infer", "ping", "error",
}  # fmt: skip


@pytest.mark.parametrize("module", ["server.py", "client.py"])
def test_no_wire_field_or_op_name_is_typed_outside_protocol_py(module):
    source = (Path(protocol.__file__).parent / module).read_text()
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    typed = sorted(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and node.value in WIRE_WORDS
    )
    assert typed == [], f"{module} types wire names {typed}; use the classes in protocol.py"


def test_the_wire_side_imports_no_heavy_package():
    """A robot computer runs the client without torch: importing the wire side pulls none in."""
    code = (
        "import sys\n"
        "import tether.policies.client, tether.policies.server, tether.policies.simple\n"
        "import tether.policies.ensembling, tether.policies.keys\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'mujoco', 'zarr'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""


# --- the client reads replies through the typed decoders ------------------------------------------


class _Router:
    """A ROUTER on 127.0.0.1 answering each request with the frames `answer(request)` lists."""

    def __init__(self, answer) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        self.answer = answer
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.socket.poll(50):
                identity, *frames = self.socket.recv_multipart()
                for reply in self.answer(protocol.decode_request(frames)):
                    self.socket.send_multipart([identity, *reply])
        self.socket.close()

    def __enter__(self) -> _Router:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()
        self.context.term()


def test_the_client_names_the_bad_field_of_a_malformed_info_reply():
    def answer(request):
        head = {"id": request.id, "op": "info", "protocol": 1, "spec": _spec_with(fps=-1.0),
                "max_message_bytes": 1000}  # fmt: skip
        return [protocol.encode(head)]

    with _Router(answer) as server, PolicyClient(server.endpoint, timeout_s=2.0) as client:
        with pytest.raises(ProtocolError, match="'spec' is malformed: 'fps'"):
            client.info()


def test_a_malformed_reply_to_a_request_nobody_waits_for_is_dropped():
    def answer(request):
        stale = _infer_reply(action=None, id=999)  # malformed, for a request nobody awaits
        return [stale, PingReply(request.id, t_recv=1.0, t_reply=1.0).encode()]

    with _Router(answer) as server, PolicyClient(server.endpoint, timeout_s=2.0) as client:
        for _ in range(2):  # the stale reply is dropped both times
            rtt, _offset = client.ping()
            assert rtt >= 0
