"""The inference wire format: one msgpack header frame, then one raw frame per array.

Both the server and the client import this module and nothing else about the format, so the
two sides cannot drift apart. A message is a ZMQ multipart message:

    frame 0   msgpack map {"v": 1, "id": ..., "op": ..., "arrays": [{"name","dtype","shape"}], ...}
    frame i   the raw, C-ordered bytes of array i-1 (little-endian), described by arrays[i-1]

Nothing here ever unpickles: the header is msgpack with strict limits, arrays are rebuilt with
`np.frombuffer` from a whitelisted dtype and a shape that must match the frame's byte count.
Every way a message can be wrong raises `MessageError` with a stable `code` (see ERROR_CODES)
and a message that names the problem, so the server can answer it and keep serving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from tether.core.errors import ConfigError, ProtocolError

PROTOCOL_VERSION = 1

# Requests a client may send; replies carry the same op, or "error".
OPS = ("info", "reset", "infer", "ping")
ERROR_OP = "error"

# Little-endian numeric dtypes only: no object, string, void or structured dtypes can be built.
ALLOWED_DTYPES = frozenset(
    {
        "bool",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float16",
        "float32",
        "float64",
    }
)

MAX_NDIM = 8
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 64
MAX_FRAMES = 1 + MAX_ARRAYS  # the header and one frame per array
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_ELEMENTS = DEFAULT_MAX_MESSAGE_BYTES * 16  # per array; any one dimension is bounded by it too
MAX_STEPS = 10000  # `steps` bound when the policy states none (diffusion: its training steps)

# Error replies a later retry may succeed with (the server was momentarily full); every other
# error code means the request itself is wrong and resending it gets the same answer.
RETRYABLE_CODES = frozenset({"busy", "too_many_clients"})

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

# Stable error codes carried in {"op": "error", "code": ...} replies.
ERROR_CODES = {
    "bad_header": "frame 0 is not a msgpack map of the expected form",
    "bad_version": "the protocol version is missing or not supported",
    "unknown_op": "the op is not one of info, reset, infer, ping",
    "bad_field": "a header field has the wrong type or value",
    "bad_arrays": "the array descriptors are malformed",
    "frame_count": "the number of raw frames differs from the array descriptors",
    "bad_dtype": "an array dtype is not allowed or not the expected one",
    "bad_shape": "an array shape is malformed or not the expected one",
    "truncated": "a raw frame's byte count does not match its dtype and shape",
    "non_finite": "an array contains NaN or inf",
    "too_large": "the message exceeds the size limit",
    "missing_array": "an array the policy needs is missing",
    "extra_array": "an array the policy does not know was sent",
    "busy": "the client already has the maximum number of requests queued",
    "too_many_clients": "the server is serving the maximum number of clients",
    "policy_error": "the policy raised while handling the request",
}


class MessageError(ProtocolError):
    """A malformed message; `code` is one of ERROR_CODES, `request_id` echoes the id if known.

    Raised on the side that finds the problem: the server (it answers with an error reply) or
    the client before sending (a request no retry can fix, so `retryable` is False).
    """

    retryable = False

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown protocol error code {code!r}")
        super().__init__(f"{message} ({code})")  # no [brackets]: rich would eat them
        self.code = code
        self.detail = message
        self.request_id = request_id


class RemoteError(ProtocolError):
    """The server answered a request with an error reply.

    `retryable` is True only for `busy` / `too_many_clients`; any other code (bad steps, a shape
    or spec mismatch, a policy that raised) will be answered the same way again, so callers
    must raise it instead of retrying.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"the policy server refused the request ({code}): {message}")
        self.code = code
        self.detail = message
        self.retryable = code in RETRYABLE_CODES


@dataclass(frozen=True)
class Message:
    """A decoded message: the header map and the arrays (read-only views of the frames)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def op(self) -> str:
        return self.header["op"]

    @property
    def id(self) -> Any:
        return self.header.get("id")


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> list:
    """Frames for `header` plus `arrays` (name -> array); arrays go out without a copy.

    The header gets `v` and the `arrays` descriptors filled in. Non-contiguous or big-endian
    arrays are converted once so the receiver can always `frombuffer` them.
    """
    head = dict(header)
    head["v"] = PROTOCOL_VERSION
    descriptors = []
    frames: list = [b""]
    for name, array in (arrays or {}).items():
        array = np.asarray(array)
        if array.dtype.name not in ALLOWED_DTYPES:
            raise MessageError(
                "bad_dtype",
                f"array '{name}' has dtype {array.dtype}, which the protocol does not carry",
            )
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        array = np.ascontiguousarray(array)
        descriptors.append(
            {"name": str(name), "dtype": array.dtype.name, "shape": list(array.shape)}
        )
        frames.append(memoryview(array).cast("B") if array.size else b"")
    head["arrays"] = descriptors
    frames[0] = msgpack.packb(head, use_bin_type=True)
    return frames


def request(
    op: str, request_id: int, arrays: Mapping[str, np.ndarray] | None = None, **fields
) -> list:
    """Frames of a request (`fields` such as steps=10 or t_sent=... go into the header)."""
    return encode({"id": request_id, "op": op, **fields}, arrays)


def error_reply(request_id: Any, code: str, message: str) -> list:
    """Frames of an error reply."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown protocol error code {code!r}")
    return encode({"id": request_id, "op": ERROR_OP, "code": code, "message": message})


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode(
    frames: Sequence[Any],
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    allowed_ops: Sequence[str] | None = OPS,
) -> Message:
    """Parse and validate frames (bytes, memoryviews or zmq.Frame) into a Message.

    Raises MessageError for anything malformed; the arrays it returns are zero-copy, read-only
    views of the frames, so keep the frames alive while you use them.
    """
    buffers = [_buffer(f) for f in frames]
    if not buffers:
        raise MessageError("bad_header", "empty message: expected a msgpack header frame")
    total = sum(b.nbytes for b in buffers)
    if total > max_message_bytes:
        raise MessageError(
            "too_large", f"message is {total} bytes; the limit is {max_message_bytes} bytes"
        )
    header = _decode_header(buffers[0])
    request_id = _valid_id(header.get("id"))
    try:
        _check_header(header, allowed_ops)
        arrays = _decode_arrays(header["arrays"], buffers[1:])
    except MessageError as exc:
        exc.request_id = request_id
        raise
    return Message(header=header, arrays=arrays)


def peek_id(frame: Any) -> Any:
    """Best-effort request id of a header frame that failed validation (None if unreadable)."""
    try:
        header = msgpack.unpackb(bytes(_buffer(frame)[:MAX_HEADER_BYTES]), raw=False)
    except Exception:
        return None
    return _valid_id(header.get("id")) if isinstance(header, dict) else None


def check_arrays(arrays: Mapping[str, np.ndarray], expected: Sequence[Any]) -> None:
    """Check decoded arrays against a policy's ArraySpecs: names, dtypes, shapes, finiteness.

    `expected` holds objects with `name`, `dtype` and `shape` (tether.policies.base.ArraySpec).
    """
    wanted = {spec.name: spec for spec in expected}
    missing = [name for name in wanted if name not in arrays]
    if missing:
        raise MessageError(
            "missing_array",
            f"missing array(s) {', '.join(missing)}; the policy expects {', '.join(wanted)}",
        )
    extra = [name for name in arrays if name not in wanted]
    if extra:
        raise MessageError(
            "extra_array",
            f"unexpected array(s) {', '.join(extra)}; the policy expects {', '.join(wanted)}",
        )
    for name, spec in wanted.items():
        array = arrays[name]
        if array.dtype.name != spec.dtype:
            raise MessageError(
                "bad_dtype", f"array '{name}' has dtype {array.dtype.name}, expected {spec.dtype}"
            )
        if tuple(array.shape) != tuple(spec.shape):
            raise MessageError(
                "bad_shape",
                f"array '{name}' has shape {tuple(array.shape)}, expected {tuple(spec.shape)}",
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise MessageError("non_finite", f"array '{name}' contains NaN or inf")


def max_steps_of(extra: Mapping[str, Any]) -> int:
    """The largest `steps` a policy accepts: diffusion's `num_train_steps` from its spec extra."""
    value = extra.get("num_train_steps") if isinstance(extra, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_STEPS:
        return value
    return MAX_STEPS


def check_steps(steps: Any, max_steps: int = MAX_STEPS) -> None:
    """Raise MessageError(bad_field) unless `steps` is an int in 1..max_steps."""
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise MessageError(
            "bad_field", f"'steps' must be an integer from 1 to {max_steps}, got {steps!r}"
        )
    if not 1 <= int(steps) <= max_steps:
        raise MessageError(
            "bad_field",
            f"'steps' must be from 1 to {max_steps} (denoising steps; the policy was trained "
            f"with {max_steps}), got {int(steps)}; pass --steps between 1 and {max_steps}, or "
            "leave it out for the policy's default",
        )


def validate_endpoint(address: str) -> str:
    """`address` if it is a ZMQ endpoint a client can connect to; else ConfigError.

    ZMQ itself answers `localhost:5555` with "Protocol not supported" (or, before this check,
    a socket left open that made closing the client hang), so say what the form is.
    """
    fix = "use tcp://host:port or ipc://path (for example tcp://127.0.0.1:5555)"
    if not isinstance(address, str) or "://" not in address:
        raise ConfigError(f"'{address}' is not a policy server endpoint; {fix}")
    scheme, rest = address.split("://", 1)
    if scheme in ("ipc", "inproc"):
        if not rest:
            raise ConfigError(f"'{address}' names no path; {fix}")
        return address
    if scheme != "tcp":
        raise ConfigError(f"'{address}' uses '{scheme}://', which is not supported; {fix}")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"'{address}' needs a host and a port from 1 to 65535; {fix}")
    return address


def is_local_address(address: str) -> bool:
    """True for ipc/inproc endpoints and tcp endpoints on the loopback interface."""
    if not address.startswith("tcp://"):
        return True
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host in LOCAL_HOSTS or host.startswith("127.")


def raise_if_error(message: Message) -> Message:
    """Turn an error reply into RemoteError; pass other messages through."""
    if message.header.get("op") == ERROR_OP:
        raise RemoteError(str(message.header.get("code")), str(message.header.get("message")))
    return message


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _buffer(frame: Any) -> memoryview:
    if hasattr(frame, "buffer"):  # zmq.Frame received with copy=False
        frame = frame.buffer
    view = memoryview(frame)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _valid_id(rid: Any) -> Any:
    """`rid` if it may be echoed back (an int, or a string of at most 128 chars), else None."""
    if isinstance(rid, int) and not isinstance(rid, bool):
        return rid
    if isinstance(rid, str) and len(rid) <= 128:
        return rid
    return None


def _decode_header(buffer: memoryview) -> dict[str, Any]:
    if buffer.nbytes > MAX_HEADER_BYTES:
        raise MessageError(
            "bad_header", f"header frame is {buffer.nbytes} bytes; the limit is {MAX_HEADER_BYTES}"
        )
    try:
        header = msgpack.unpackb(
            buffer,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MessageError(
            "bad_header", f"frame 0 is not valid msgpack ({type(exc).__name__})"
        ) from None
    if not isinstance(header, dict):
        raise MessageError(
            "bad_header", f"header must be a msgpack map, got {type(header).__name__}"
        )
    return header


def _check_header(header: dict[str, Any], allowed_ops: Sequence[str] | None) -> None:
    version = header.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise MessageError(
            "bad_version",
            f"protocol version {version!r} is not supported; this side speaks v{PROTOCOL_VERSION}",
        )
    rid = header.get("id")
    if rid is not None and _valid_id(rid) is None:
        raise MessageError(
            "bad_field",
            f"'id' must be an int or a string of <= 128 chars, got {type(rid).__name__}",
        )
    op = header.get("op")
    if not isinstance(op, str) or (allowed_ops is not None and op not in allowed_ops):
        known = ", ".join(allowed_ops or ())
        raise MessageError("unknown_op", f"unknown op {op!r}; known ops: {known}")
    if "arrays" not in header:
        header["arrays"] = []
    check_steps(header.get("steps"))
    t_sent = header.get("t_sent")
    if t_sent is not None and (
        isinstance(t_sent, bool)
        or not isinstance(t_sent, (int, float))
        or not math.isfinite(t_sent)
    ):
        raise MessageError("bad_field", f"'t_sent' must be a finite number, got {t_sent!r}")


def _decode_arrays(descriptors: Any, buffers: Sequence[memoryview]) -> dict[str, np.ndarray]:
    if not isinstance(descriptors, list):
        raise MessageError(
            "bad_arrays", f"'arrays' must be a list, got {type(descriptors).__name__}"
        )
    if len(descriptors) > MAX_ARRAYS:
        raise MessageError("bad_arrays", f"{len(descriptors)} arrays; the limit is {MAX_ARRAYS}")
    if len(descriptors) != len(buffers):
        raise MessageError(
            "frame_count",
            f"header describes {len(descriptors)} array(s) but {len(buffers)} raw frame(s) followed",
        )
    arrays: dict[str, np.ndarray] = {}
    for index, (desc, buffer) in enumerate(zip(descriptors, buffers, strict=True)):
        name, dtype, shape = _descriptor(desc, index)
        if name in arrays:
            raise MessageError("bad_arrays", f"array name '{name}' appears twice")
        expected = math.prod(shape) * dtype.itemsize
        if buffer.nbytes != expected:
            raise MessageError(
                "truncated",
                f"array '{name}' ({dtype.name} {tuple(shape)}) needs {expected} bytes, "
                f"its frame has {buffer.nbytes}",
            )
        try:
            array = np.frombuffer(buffer, dtype=dtype) if expected else np.empty(0, dtype=dtype)
            array = array.reshape(shape)
        except ValueError as exc:  # numpy's own size limits: answer, never escape
            raise MessageError("bad_shape", f"array '{name}' {tuple(shape)}: {exc}") from None
        array.flags.writeable = False
        arrays[name] = array
    return arrays


def _descriptor(desc: Any, index: int) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not isinstance(desc, dict):
        raise MessageError("bad_arrays", f"array descriptor {index} must be a map")
    name = desc.get("name")
    if not isinstance(name, str) or not name or len(name) > 128:
        raise MessageError(
            "bad_arrays", f"array descriptor {index} needs a non-empty string 'name'"
        )
    dtype_name = desc.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in ALLOWED_DTYPES:
        raise MessageError(
            "bad_dtype",
            f"array '{name}' has dtype {dtype_name!r}; allowed: {', '.join(sorted(ALLOWED_DTYPES))}",
        )
    shape = desc.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape)
    ):
        raise MessageError(
            "bad_shape",
            f"array '{name}' has shape {shape!r}; expected a list of <= {MAX_NDIM} ints >= 0",
        )
    # Every dimension is bounded, not only the product: (0, 2**62, 2**62) has no elements but
    # numpy refuses to build it, and (2**40, 2**40) overflows any fixed-width size.
    if any(s > MAX_ELEMENTS for s in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise MessageError(
            "too_large",
            f"array '{name}' has shape {shape}; at most {MAX_ELEMENTS} elements are allowed",
        )
    return name, np.dtype(dtype_name).newbyteorder("<"), tuple(shape)
