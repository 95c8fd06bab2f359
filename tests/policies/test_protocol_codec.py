"""The wire codec: round trips, zero copy, and one test per validation error code."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tether.core.schema import ArraySpec
from tether.policies import protocol
from tether.policies.protocol import MessageError

SPEC = (ArraySpec("state", "float32", (14,)), ArraySpec("image.top", "uint8", (4, 6, 3)))


def _valid_arrays() -> dict[str, np.ndarray]:
    return {
        "state": np.linspace(-1, 1, 14, dtype=np.float32),
        "image.top": np.arange(72, dtype=np.uint8).reshape(4, 6, 3),
    }


def _frames(header: dict, raw: list[bytes]) -> list[bytes]:
    return [msgpack.packb(header), *raw]


def _header(**overrides) -> dict:
    header = {"v": 1, "id": 7, "op": "infer", "arrays": []}
    header.update(overrides)
    return header


def _bytes(frames: list) -> list[bytes]:
    return [bytes(f) for f in frames]


def test_round_trip_keeps_values_dtypes_shapes_and_header_fields():
    frames = protocol.InferRequest(3, _valid_arrays(), steps=10, t_sent=1.5).encode()
    message = protocol.decode(_bytes(frames))
    assert message.op == "infer" and message.id == 3
    assert message.header["steps"] == 10 and message.header["t_sent"] == 1.5
    for name, array in _valid_arrays().items():
        np.testing.assert_array_equal(message.arrays[name], array)
        assert message.arrays[name].dtype == array.dtype
    protocol.check_arrays(message.arrays, SPEC)  # and it passes the spec check


@pytest.mark.parametrize("dtype", sorted(protocol.ALLOWED_DTYPES))
def test_every_allowed_dtype_round_trips(dtype):
    array = (np.arange(24) % 2).astype(dtype).reshape(2, 3, 4)
    message = protocol.decode(_bytes(protocol.encode({"op": "infer"}, {"x": array})))
    np.testing.assert_array_equal(message.arrays["x"], array)
    assert message.arrays["x"].dtype == np.dtype(dtype)


def test_scalars_empty_noncontiguous_and_big_endian_arrays_round_trip():
    arrays = {
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],
        "big_endian": np.arange(4, dtype=">f4"),
    }
    message = protocol.decode(_bytes(protocol.encode({"op": "infer"}, arrays)))
    for name, array in arrays.items():
        np.testing.assert_array_equal(message.arrays[name], array)
    assert message.arrays["big_endian"].dtype == np.dtype("<f4")


def test_decoded_arrays_are_zero_copy_read_only_views_of_the_frames():
    frames = _bytes(protocol.encode({"op": "infer"}, {"x": np.arange(1000, dtype=np.float32)}))
    message = protocol.decode(frames)
    array = message.arrays["x"]
    assert not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(frames[1], dtype=np.uint8))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_any_array_round_trips(array):
    message = protocol.decode(_bytes(protocol.encode({"op": "infer"}, {"a": array})))
    np.testing.assert_array_equal(message.arrays["a"], array)


def test_encode_refuses_object_arrays():
    with pytest.raises(MessageError) as err:
        protocol.encode({"op": "infer"}, {"x": np.array([object()])})
    assert err.value.code == "bad_dtype"


# --- one case per decode error ----------------------------------------------------------------

STATE = np.zeros(14, np.float32).tobytes()
DESC = {"name": "state", "dtype": "float32", "shape": [14]}

DECODE_ERRORS = {
    "empty message": ([], "bad_header"),
    "not msgpack": ([b"\xc1\xc1garbage"], "bad_header"),
    "header is a list": ([msgpack.packb([1, 2, 3])], "bad_header"),
    "header too big": ([msgpack.packb({"v": 1, "pad": "x" * 70000})], "bad_header"),
    "no version": (_frames({"id": 1, "op": "ping"}, []), "bad_version"),
    "future version": (_frames(_header(v=2), []), "bad_version"),
    "bool version": (_frames(_header(v=True), []), "bad_version"),
    "unknown op": (_frames(_header(op="shutdown"), []), "unknown_op"),
    "op not a string": (_frames(_header(op=5), []), "unknown_op"),
    "id is a float": (_frames(_header(id=1.5), []), "bad_field"),
    "steps zero": (_frames(_header(steps=0), []), "bad_field"),
    "steps a string": (_frames(_header(steps="10"), []), "bad_field"),
    "t_sent is nan": (_frames(_header(t_sent=float("nan")), []), "bad_field"),
    "arrays not a list": (_frames(_header(arrays={"a": 1}), []), "bad_arrays"),
    "descriptor not a map": (_frames(_header(arrays=[5]), [STATE]), "bad_arrays"),
    "descriptor without name": (
        _frames(_header(arrays=[{"dtype": "float32", "shape": [14]}]), [STATE]),
        "bad_arrays",
    ),
    "duplicate names": (_frames(_header(arrays=[DESC, DESC]), [STATE, STATE]), "bad_arrays"),
    "too many arrays": (
        _frames(_header(arrays=[{**DESC, "name": f"a{i}"} for i in range(65)]), [STATE] * 65),
        "bad_arrays",
    ),
    "missing frame": (_frames(_header(arrays=[DESC]), []), "frame_count"),
    "extra frame": (_frames(_header(arrays=[DESC]), [STATE, STATE]), "frame_count"),
    "object dtype": (_frames(_header(arrays=[{**DESC, "dtype": "object"}]), [STATE]), "bad_dtype"),
    "explicit-endian dtype": (
        _frames(_header(arrays=[{**DESC, "dtype": ">f4"}]), [STATE]),
        "bad_dtype",
    ),
    "negative dim": (_frames(_header(arrays=[{**DESC, "shape": [-14]}]), [STATE]), "bad_shape"),
    "float dim": (_frames(_header(arrays=[{**DESC, "shape": [14.0]}]), [STATE]), "bad_shape"),
    "shape not a list": (_frames(_header(arrays=[{**DESC, "shape": 14}]), [STATE]), "bad_shape"),
    "too many dims": (_frames(_header(arrays=[{**DESC, "shape": [1] * 9}]), [STATE]), "bad_shape"),
    "truncated frame": (_frames(_header(arrays=[DESC]), [STATE[:-4]]), "truncated"),
    "overlong frame": (_frames(_header(arrays=[DESC]), [STATE + b"\0" * 4]), "truncated"),
    "absurd element count": (
        _frames(_header(arrays=[{**DESC, "shape": [2**40, 2**40]}]), [STATE]),
        "too_large",
    ),
}


@pytest.mark.parametrize("case", sorted(DECODE_ERRORS))
def test_decode_rejects_with_the_right_code(case):
    frames, code = DECODE_ERRORS[case]
    with pytest.raises(MessageError) as err:
        protocol.decode_request(frames)
    assert err.value.code == code
    assert err.value.detail  # a message naming the problem


def test_decode_rejects_messages_over_the_size_limit():
    frames = _bytes(protocol.InferRequest(1, {"state": np.zeros(1000, np.float32)}).encode())
    with pytest.raises(MessageError) as err:
        protocol.decode(frames, max_message_bytes=2000)
    assert err.value.code == "too_large" and "2000" in err.value.detail


def test_errors_after_the_header_echo_the_request_id():
    with pytest.raises(MessageError) as err:
        protocol.decode(_frames(_header(id=42, op="nope"), []))
    assert err.value.request_id == 42
    assert protocol.peek_id(msgpack.packb({"id": 9, "junk": True})) == 9
    assert protocol.peek_id(b"\xc1") is None


CHECK_ERRORS = {
    "missing_array": ({"state": np.zeros(14, np.float32)}, "image.top"),
    "extra_array": (
        {**_valid_arrays(), "image.wrist": np.zeros((4, 6, 3), np.uint8)},
        "image.wrist",
    ),
    "bad_dtype": ({**_valid_arrays(), "state": np.zeros(14, np.float64)}, "float64"),
    "bad_shape": ({**_valid_arrays(), "image.top": np.zeros((6, 4, 3), np.uint8)}, "(6, 4, 3)"),
}


@pytest.mark.parametrize("code", sorted(CHECK_ERRORS))
def test_check_arrays_names_the_offending_array(code):
    arrays, named = CHECK_ERRORS[code]
    with pytest.raises(MessageError) as err:
        protocol.check_arrays(arrays, SPEC)
    assert err.value.code == code and named in err.value.detail


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_arrays_rejects_non_finite_values(bad):
    arrays = _valid_arrays()
    arrays["state"] = arrays["state"].copy()
    arrays["state"][3] = bad
    with pytest.raises(MessageError) as err:
        protocol.check_arrays(arrays, SPEC)
    assert err.value.code == "non_finite" and "state" in err.value.detail


def test_error_replies_round_trip_and_raise_remote_error():
    reply = protocol.decode_reply(_bytes(protocol.error_reply(5, "busy", "slow down")))
    assert isinstance(reply, protocol.ErrorReply) and reply.retryable
    with pytest.raises(protocol.RemoteError) as err:
        raise reply.to_exception()
    assert err.value.code == "busy" and "slow down" in str(err.value)
    with pytest.raises(ValueError):
        protocol.error_reply(5, "not_a_code", "x")
