"""The inference wire format and its messages: typed requests and replies, framed for ZMQ.

Both the server and the client import this module and nothing else about the format, so the
two sides cannot drift apart, and no header field name is typed anywhere else. Each operation
is a pair of frozen dataclasses (`InferRequest` / `InferReply`, ...) with `encode() -> frames`
and `decode(frames)`; `decode_request` / `decode_reply` read whichever message arrived.

A message is a ZMQ multipart message:

    frame 0   msgpack map {"v": 1, "id": ..., "op": ..., "arrays": [{"name","dtype","shape"}], ...}
    frame i   the raw, C-ordered bytes of array i-1 (little-endian), described by arrays[i-1]

Nothing here ever unpickles: the header is msgpack with strict limits, arrays are rebuilt with
`np.frombuffer` from a whitelisted dtype and a shape that must match the frame's byte count.
Every way a message can be wrong (framing, a missing or mistyped field, a bad dtype or shape,
NaN, the size limit) raises `MessageError` with a stable `code` (see ERROR_CODES), the `field`
at fault and a message naming the problem, so the server can answer it and keep serving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from tether.core.errors import ConfigError, ProtocolError
from tether.core.schema import ACTION, ArraySpec, PolicySpec

PROTOCOL_VERSION = 1

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
MAX_ID_CHARS = 128
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_ELEMENTS = DEFAULT_MAX_MESSAGE_BYTES * 16  # per array; any one dimension is bounded by it too
MAX_LOOKAHEAD = 1024  # `lookahead` bound on the wire; the policy narrows it to its buffer
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
    "bad_field": "a header field is missing or has the wrong type or value",
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

RequestId = int | str | None


class MessageError(ProtocolError):
    """A malformed message; `code` is one of ERROR_CODES, `request_id` echoes the id if known.

    `field` names the header field (or array) at fault when there is one. Raised on the side
    that finds the problem: the server (it answers with an error reply) or the client (a reply
    it cannot use, or a request of its own no retry can fix, so `retryable` is False).
    """

    retryable = False

    def __init__(
        self, code: str, message: str, request_id: Any = None, field: str | None = None
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown protocol error code {code!r}")
        super().__init__(f"{message} ({code})")  # no [brackets]: rich would eat them
        self.code = code
        self.detail = message
        self.request_id = request_id
        self.field = field


class RemoteError(ProtocolError):
    """The server answered a request with an error reply.

    `retryable` is True only for `busy` / `too_many_clients`; any other code (bad steps, a shape
    or spec mismatch, a policy that raised) will be answered the same way again, so callers
    must raise it instead of retrying.
    """

    def __init__(self, code: str, message: str, retryable: bool | None = None) -> None:
        super().__init__(f"the policy server refused the request ({code}): {message}")
        self.code = code
        self.detail = message
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable


# --------------------------------------------------------------------------------------------
# Typed messages: one request and one reply class per operation, plus ErrorReply
# --------------------------------------------------------------------------------------------

M = TypeVar("M", bound="_Typed")


class _Typed:
    """Shared encode/decode/equality of the typed messages (dataclasses with an `OP`)."""

    OP: ClassVar[str]
    id: RequestId

    def encode(self) -> list:
        """The frames of this message; its arrays go out without a copy."""
        return encode({"id": self.id, "op": self.OP, **self._header()}, self._arrays())

    @classmethod
    def decode(
        cls: type[M], frames: Sequence[Any], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> M:
        """Parse and validate frames that must hold this operation (MessageError if not)."""
        message = decode(frames, max_message_bytes, allowed_ops=(cls.OP,))
        return _typed(cls, message)

    def _header(self) -> dict[str, Any]:
        return {}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def _from(cls: type[M], message: Message) -> M:
        """The typed message from a framed one whose op is `OP` (MessageError if malformed)."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(
            _same(getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)  # type: ignore[arg-type]
        )

    __hash__ = None  # type: ignore[assignment]  # arrays inside: not hashable


class Request(_Typed):
    """A message a client sends."""


class Reply(_Typed):
    """A message the server answers with; `id` echoes the request's."""


@dataclass(frozen=True, eq=False)
class _StampedRequest(Request):
    """A request with nothing but its id and, optionally, its send time (client clock)."""

    id: RequestId = None
    t_sent: float | None = None

    def _header(self) -> dict[str, Any]:
        return _optional(t_sent=self.t_sent)

    @classmethod
    def _from(cls, message: Message) -> _StampedRequest:
        _no_arrays(message)
        return cls(id=message.id, t_sent=_number(message.header, "t_sent", required=False))


@dataclass(frozen=True, eq=False)
class _StampedReply(Reply):
    """A reply with nothing but when the server received the request and answered it
    (server clock, seconds)."""

    id: RequestId
    t_recv: float
    t_reply: float

    def _header(self) -> dict[str, Any]:
        return {"t_recv": self.t_recv, "t_reply": self.t_reply}

    @classmethod
    def _from(cls, message: Message) -> _StampedReply:
        _no_arrays(message)
        head = message.header
        return cls(id=message.id, t_recv=_number(head, "t_recv"), t_reply=_number(head, "t_reply"))


@dataclass(frozen=True, eq=False)
class InfoRequest(_StampedRequest):
    """Ask what the server serves (the reply: InfoReply)."""

    OP: ClassVar[str] = "info"


@dataclass(frozen=True, eq=False)
class PingRequest(_StampedRequest):
    """Measure the round trip and the clock offset (the reply: PingReply)."""

    OP: ClassVar[str] = "ping"


@dataclass(frozen=True, eq=False)
class PingReply(_StampedReply):
    """The answer to a ping: its two server times give the clock offset."""

    OP: ClassVar[str] = "ping"


@dataclass(frozen=True, eq=False)
class ResetRequest(_StampedRequest):
    """Clear this client's policy history: the start of an episode (the reply: ResetReply)."""

    OP: ClassVar[str] = "reset"


@dataclass(frozen=True, eq=False)
class ResetReply(_StampedReply):
    """The reset is done."""

    OP: ClassVar[str] = "reset"


@dataclass(frozen=True, eq=False)
class InfoReply(Reply):
    """The served policy's spec and the server's limits (`t_recv`: server clock)."""

    OP: ClassVar[str] = "info"
    id: RequestId
    spec: PolicySpec
    protocol: int = PROTOCOL_VERSION
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queued_per_client: int | None = None
    t_recv: float | None = None

    def _header(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "spec": self.spec.as_dict(),
            "max_message_bytes": self.max_message_bytes,
            **_optional(max_queued_per_client=self.max_queued_per_client, t_recv=self.t_recv),
        }

    @classmethod
    def _from(cls, message: Message) -> InfoReply:
        _no_arrays(message)
        head = message.header
        return cls(
            id=message.id,
            spec=_spec(head),
            protocol=_integer(head, "protocol", minimum=1),
            max_message_bytes=_integer(head, "max_message_bytes", minimum=1),
            max_queued_per_client=_integer(
                head, "max_queued_per_client", minimum=1, required=False
            ),
            t_recv=_number(head, "t_recv", required=False),
        )


@dataclass(frozen=True, eq=False)
class InferRequest(Request):
    """One observation (name -> array, the robot's keys); the reply is its action chunk.

    `steps` (diffusion's denoising steps) is 1..MAX_STEPS here; the server narrows it to the
    policy's own range (`check_steps`). `sampler` (diffusion: ddim, dpmpp, streaming) is a
    short name the policy checks. `lookahead` (the streaming sampler: clean estimates of the
    actions after the emitted ones, for temporal ensembling) is 0..MAX_LOOKAHEAD here, and the
    policy checks it against its buffer. Decoded observation arrays are zero-copy, read-only
    views of the frames: keep the frames alive while you use them.
    """

    OP: ClassVar[str] = "infer"
    id: RequestId
    observation: Mapping[str, np.ndarray]
    steps: int | None = None
    t_sent: float | None = None
    sampler: str | None = None
    lookahead: int | None = None

    def _header(self) -> dict[str, Any]:
        return _optional(steps=self.steps, sampler=self.sampler, lookahead=self.lookahead,
                         t_sent=self.t_sent)

    def _arrays(self) -> dict[str, np.ndarray]:
        return dict(self.observation)

    def policy_options(self) -> dict[str, Any]:
        """The keyword options for `Policy.predict_chunk` this request sets (none by default)."""
        return _optional(steps=self.steps, sampler=self.sampler, lookahead=self.lookahead)

    @classmethod
    def _from(cls, message: Message) -> InferRequest:
        head = message.header
        steps = head.get("steps")
        check_steps(steps)
        t_sent = _number(head, "t_sent", required=False)
        sampler = _string(head, "sampler", required=False)
        if sampler is not None and not 0 < len(sampler) <= 32:
            raise MessageError("bad_field", f"'sampler' must be a short name, got {sampler[:40]!r}",
                               field="sampler")
        lookahead = head.get("lookahead")
        check_lookahead(lookahead)
        for name, array in message.arrays.items():
            _check_finite(name, array)
        return cls(
            id=message.id,
            observation=message.arrays,
            steps=None if steps is None else int(steps),
            t_sent=t_sent,
            sampler=sampler,
            lookahead=None if lookahead is None else int(lookahead),
        )


@dataclass(frozen=True, eq=False)
class InferReply(Reply):
    """An action chunk: finite float32 (n >= 1, action_dim); row 0 is for the observation's time.

    `t_recv` / `t_reply` are server clock seconds; `queue_ms` the wait for the worker,
    `infer_ms` the model. A decoded `action` is a read-only view of its frame.
    """

    OP: ClassVar[str] = "infer"
    id: RequestId
    action: np.ndarray
    t_recv: float
    t_reply: float
    queue_ms: float = 0.0
    infer_ms: float = 0.0

    def _header(self) -> dict[str, Any]:
        return {
            "t_recv": self.t_recv,
            "t_reply": self.t_reply,
            "queue_ms": self.queue_ms,
            "infer_ms": self.infer_ms,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        return {ACTION: self.action}

    @classmethod
    def _from(cls, message: Message) -> InferReply:
        head = message.header
        extra = [name for name in message.arrays if name != ACTION]
        if extra:
            raise MessageError(
                "extra_array",
                f"an infer reply carries only '{ACTION}', got {', '.join(extra)}",
                field=extra[0],
            )
        action = message.arrays.get(ACTION)
        if action is None:
            raise MessageError(
                "missing_array", f"the infer reply has no '{ACTION}' array", field=ACTION
            )
        if action.dtype != np.float32:
            raise MessageError(
                "bad_dtype",
                f"'{ACTION}' has dtype {action.dtype.name}, expected float32",
                field=ACTION,
            )
        if action.ndim != 2 or action.shape[0] < 1 or action.shape[1] < 1:
            raise MessageError(
                "bad_shape",
                f"'{ACTION}' has shape {tuple(action.shape)}, expected (n >= 1, action_dim >= 1)",
                field=ACTION,
            )
        _check_finite(ACTION, action)
        return cls(
            id=message.id,
            action=action,
            t_recv=_number(head, "t_recv"),
            t_reply=_number(head, "t_reply"),
            queue_ms=_number(head, "queue_ms", required=False, default=0.0),
            infer_ms=_number(head, "infer_ms", required=False, default=0.0),
        )


@dataclass(frozen=True, eq=False)
class ErrorReply(Reply):
    """The server refused a request: `code` (ERROR_CODES) and a message naming the fix.

    `retryable` goes on the wire too (for clients in other languages); it is True only for
    RETRYABLE_CODES. A decoded reply may carry a code this side does not know (a newer server).
    """

    OP: ClassVar[str] = "error"
    id: RequestId
    code: str
    message: str
    retryable: bool = False

    def __post_init__(self) -> None:
        if self.code in ERROR_CODES and self.retryable != (self.code in RETRYABLE_CODES):
            object.__setattr__(self, "retryable", self.code in RETRYABLE_CODES)

    def encode(self) -> list:
        if self.code not in ERROR_CODES:
            raise ValueError(f"unknown protocol error code {self.code!r}")
        return super().encode()

    def _header(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}

    @classmethod
    def _from(cls, message: Message) -> ErrorReply:
        _no_arrays(message)
        head = message.header
        retryable = head.get("retryable", False)
        if not isinstance(retryable, bool):
            raise MessageError(
                "bad_field",
                f"'retryable' must be true or false, got {retryable!r}",
                field="retryable",
            )
        return cls(
            id=message.id,
            code=_string(head, "code"),
            message=_string(head, "message", required=False, default=""),
            retryable=retryable,
        )

    @classmethod
    def from_error(cls, request_id: RequestId, error: MessageError) -> ErrorReply:
        """The reply that answers a request refused with `error`."""
        return cls(request_id, error.code, error.detail)

    def to_exception(self) -> RemoteError:
        """The RemoteError a client raises for this reply."""
        return RemoteError(self.code, self.message, self.retryable)


REQUESTS: dict[str, type[Request]] = {
    cls.OP: cls for cls in (InfoRequest, ResetRequest, InferRequest, PingRequest)
}
REPLIES: dict[str, type[Reply]] = {
    cls.OP: cls for cls in (InfoReply, ResetReply, InferReply, PingReply, ErrorReply)
}
# Requests a client may send; replies carry the same op, or "error".
OPS = tuple(REQUESTS)
ERROR_OP = ErrorReply.OP


def decode_request(
    frames: Sequence[Any], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Request:
    """The typed request in `frames` (what the server calls); MessageError if malformed."""
    message = decode(frames, max_message_bytes, allowed_ops=OPS)
    return _typed(REQUESTS[message.op], message)


def decode_reply(
    frames: Sequence[Any], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Reply:
    """The typed reply in `frames`, an ErrorReply included (what the client calls)."""
    message = decode(frames, max_message_bytes, allowed_ops=tuple(REPLIES))
    return _typed(REPLIES[message.op], message)


def error_reply(request_id: Any, code: str, message: str) -> list:
    """Frames of an error reply (ValueError for a code not in ERROR_CODES)."""
    return ErrorReply(request_id, code, message).encode()


@dataclass(frozen=True)
class Message:
    """A framed message before typing: the header map and the arrays (read-only frame views)."""

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
            field=missing[0],
        )
    extra = [name for name in arrays if name not in wanted]
    if extra:
        raise MessageError(
            "extra_array",
            f"unexpected array(s) {', '.join(extra)}; the policy expects {', '.join(wanted)}",
            field=extra[0],
        )
    for name, spec in wanted.items():
        array = arrays[name]
        if array.dtype.name != spec.dtype:
            raise MessageError(
                "bad_dtype",
                f"array '{name}' has dtype {array.dtype.name}, expected {spec.dtype}",
                field=name,
            )
        if tuple(array.shape) != tuple(spec.shape):
            raise MessageError(
                "bad_shape",
                f"array '{name}' has shape {tuple(array.shape)}, expected {tuple(spec.shape)}",
                field=name,
            )
        _check_finite(name, array)


def max_steps_of(extra: Mapping[str, Any]) -> int:
    """The largest `steps` a policy accepts: diffusion's `num_train_steps` from its spec extra."""
    value = extra.get("num_train_steps") if isinstance(extra, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_STEPS:
        return value
    return MAX_STEPS


def check_lookahead(lookahead: Any) -> None:
    """Raise MessageError(bad_field) unless `lookahead` is None or an int in 0..MAX_LOOKAHEAD."""
    if lookahead is None:
        return
    if isinstance(lookahead, bool) or not isinstance(lookahead, (int, np.integer)) \
            or not 0 <= int(lookahead) <= MAX_LOOKAHEAD:
        raise MessageError(
            "bad_field",
            f"'lookahead' must be an integer from 0 to {MAX_LOOKAHEAD} (streaming actions after "
            f"the emitted ones), got {lookahead!r}",
            field="lookahead",
        )


def check_steps(steps: Any, max_steps: int = MAX_STEPS) -> None:
    """Raise MessageError(bad_field) unless `steps` is an int in 1..max_steps."""
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise MessageError(
            "bad_field",
            f"'steps' must be an integer from 1 to {max_steps}, got {steps!r}",
            field="steps",
        )
    if not 1 <= int(steps) <= max_steps:
        raise MessageError(
            "bad_field",
            f"'steps' must be from 1 to {max_steps} (denoising steps; the policy was trained "
            f"with {max_steps}), got {int(steps)}; pass --steps between 1 and {max_steps}, or "
            "leave it out for the policy's default",
            field="steps",
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
    if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS:
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
    """The fields every message has: `v`, `id`, `op`, `arrays` (the rest is the types' job)."""
    version = header.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise MessageError(
            "bad_version",
            f"protocol version {version!r} is not supported; this side speaks v{PROTOCOL_VERSION}",
            field="v",
        )
    rid = header.get("id")
    if rid is not None and _valid_id(rid) is None:
        raise MessageError(
            "bad_field",
            f"'id' must be an int or a string of <= {MAX_ID_CHARS} chars, got {type(rid).__name__}",
            field="id",
        )
    op = header.get("op")
    if not isinstance(op, str) or (allowed_ops is not None and op not in allowed_ops):
        known = ", ".join(allowed_ops or ())
        raise MessageError("unknown_op", f"unknown op {op!r}; known ops: {known}", field="op")
    if "arrays" not in header:
        header["arrays"] = []


def _decode_arrays(descriptors: Any, buffers: Sequence[memoryview]) -> dict[str, np.ndarray]:
    if not isinstance(descriptors, list):
        raise MessageError(
            "bad_arrays",
            f"'arrays' must be a list, got {type(descriptors).__name__}",
            field="arrays",
        )
    if len(descriptors) > MAX_ARRAYS:
        raise MessageError(
            "bad_arrays", f"{len(descriptors)} arrays; the limit is {MAX_ARRAYS}", field="arrays"
        )
    if len(descriptors) != len(buffers):
        raise MessageError(
            "frame_count",
            f"header describes {len(descriptors)} array(s) but {len(buffers)} raw frame(s) followed",
            field="arrays",
        )
    arrays: dict[str, np.ndarray] = {}
    for index, (desc, buffer) in enumerate(zip(descriptors, buffers, strict=True)):
        name, dtype, shape = _descriptor(desc, index)
        if name in arrays:
            raise MessageError("bad_arrays", f"array name '{name}' appears twice", field=name)
        expected = math.prod(shape) * dtype.itemsize
        if buffer.nbytes != expected:
            raise MessageError(
                "truncated",
                f"array '{name}' ({dtype.name} {tuple(shape)}) needs {expected} bytes, "
                f"its frame has {buffer.nbytes}",
                field=name,
            )
        try:
            array = np.frombuffer(buffer, dtype=dtype) if expected else np.empty(0, dtype=dtype)
            array = array.reshape(shape)
        except ValueError as exc:  # numpy's own size limits: answer, never escape
            raise MessageError(
                "bad_shape", f"array '{name}' {tuple(shape)}: {exc}", field=name
            ) from None
        array.flags.writeable = False
        arrays[name] = array
    return arrays


def _descriptor(desc: Any, index: int) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not isinstance(desc, dict):
        raise MessageError("bad_arrays", f"array descriptor {index} must be a map", field="arrays")
    name = desc.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_ID_CHARS:
        raise MessageError(
            "bad_arrays",
            f"array descriptor {index} needs a non-empty string 'name'",
            field="arrays",
        )
    dtype_name = desc.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in ALLOWED_DTYPES:
        raise MessageError(
            "bad_dtype",
            f"array '{name}' has dtype {dtype_name!r}; allowed: {', '.join(sorted(ALLOWED_DTYPES))}",
            field=name,
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
            field=name,
        )
    # Every dimension is bounded, not only the product: (0, 2**62, 2**62) has no elements but
    # numpy refuses to build it, and (2**40, 2**40) overflows any fixed-width size.
    if any(s > MAX_ELEMENTS for s in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise MessageError(
            "too_large",
            f"array '{name}' has shape {shape}; at most {MAX_ELEMENTS} elements are allowed",
            field=name,
        )
    return name, np.dtype(dtype_name).newbyteorder("<"), tuple(shape)


def _typed(cls: type[M], message: Message) -> M:
    """`cls` built from a framed message; field errors echo the request id."""
    try:
        return cls._from(message)
    except MessageError as exc:
        exc.request_id = message.id
        raise


def _no_arrays(message: Message) -> None:
    if message.arrays:
        names = ", ".join(message.arrays)
        raise MessageError(
            "extra_array",
            f"op '{message.op}' takes no arrays, got {len(message.arrays)} ({names})",
            field=next(iter(message.arrays)),
        )


def _optional(**values: Any) -> dict[str, Any]:
    """Header entries for the optional fields that are set (None stays off the wire)."""
    return {name: value for name, value in values.items() if value is not None}


def _missing(header: Mapping[str, Any], name: str) -> MessageError:
    return MessageError(
        "bad_field", f"the '{header.get('op')}' message lacks its '{name}' field", field=name
    )


def _number(
    header: Mapping[str, Any], name: str, required: bool = True, default: float | None = None
) -> Any:
    """A finite number field as float (`default` when optional and absent)."""
    value = header.get(name)
    if value is None:
        if required:
            raise _missing(header, name)
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MessageError(
            "bad_field", f"'{name}' must be a finite number, got {value!r}", field=name
        )
    return float(value)


def _integer(header: Mapping[str, Any], name: str, minimum: int = 0, required: bool = True) -> Any:
    """An integer field >= minimum (None when optional and absent)."""
    value = header.get(name)
    if value is None:
        if required:
            raise _missing(header, name)
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MessageError(
            "bad_field", f"'{name}' must be an integer >= {minimum}, got {value!r}", field=name
        )
    return value


def _string(
    header: Mapping[str, Any], name: str, required: bool = True, default: str | None = None
) -> Any:
    value = header.get(name)
    if value is None:
        if required:
            raise _missing(header, name)
        return default
    if not isinstance(value, str):
        raise MessageError(
            "bad_field", f"'{name}' must be a string, got {type(value).__name__}", field=name
        )
    return value


def _spec(header: Mapping[str, Any]) -> PolicySpec:
    """The `spec` field of an info reply: a PolicySpec whose arrays the protocol can carry."""
    raw = header.get("spec")
    if raw is None:
        raise _missing(header, "spec")

    def bad(what: str) -> MessageError:
        return MessageError("bad_field", f"'spec' is malformed: {what}", field="spec")

    if not isinstance(raw, dict):
        raise bad(f"expected a map, got {type(raw).__name__}")
    observation = raw.get("observation")
    if not isinstance(observation, list):
        raise bad("'observation' must be a list of {name, dtype, shape}")
    for index, desc in enumerate(observation):
        try:
            _descriptor(desc, index)
        except MessageError as exc:
            raise bad(f"observation {index}: {exc.detail}") from None
    checks = {
        "policy_type": lambda v: isinstance(v, str),
        "action_dim": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "chunk_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "fps": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        and math.isfinite(v) and v > 0,
    }  # fmt: skip
    for name, ok in checks.items():
        if not ok(raw.get(name)):
            raise bad(f"'{name}' is {raw.get(name)!r}")
    if not isinstance(raw.get("normalizer_hash", ""), str):
        raise bad("'normalizer_hash' must be a string")
    if not isinstance(raw.get("extra", {}), dict):
        raise bad("'extra' must be a map")
    return PolicySpec(
        policy_type=raw["policy_type"],
        observation=tuple(ArraySpec.from_dict(desc) for desc in observation),
        action_dim=raw["action_dim"],
        chunk_size=raw["chunk_size"],
        fps=float(raw["fps"]),
        normalizer_hash=raw.get("normalizer_hash", ""),
        extra=dict(raw.get("extra", {})),
    )


def _check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise MessageError("non_finite", f"array '{name}' contains NaN or inf", field=name)


def _same(a: Any, b: Any) -> bool:
    """Field equality for messages: arrays by dtype, shape and values; maps of them likewise."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)
