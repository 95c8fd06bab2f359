"""The robot-side client of the inference server (ZMQ DEALER).

`PolicyClient` speaks the protocol in `tether.policies.protocol`. Blocking calls (`info`,
`ping`, `reset`, `infer`) wait at most `timeout_s`; after a timeout the socket is thrown away
and a fresh one connects (the "lazy pirate" pattern), so a reply that arrives late can never be
mistaken for the answer to a newer request. The rollout loop uses the non-blocking pair
`send_infer` / `poll_reply` to ask for the next chunk while the current one executes.

Every reply is validated like the server validates requests: the action chunk must be a finite
float32 (n, action_dim) array. `check_spec` compares the server's `info` with what the robot
observes and raises a PolicyError listing every mismatch before the robot moves.

What a retry can fix and what it cannot are different exceptions: `ServerTimeout` (no answer)
and a `RemoteError` with `retryable` True (`busy`) may succeed later; a `RemoteError` for a bad
request (steps out of range, a shape the policy does not take, a policy that raised) and a
`MessageError` from the client's own checks have `retryable` False and must be raised as they
are. A bad endpoint or key folder fails in the constructor; `close()` never blocks.

The client keeps one ZMQ routing id for its life (across reconnects), which is what the server
keys its per-client policy state (history, RNG) on.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zmq

from tether.core.errors import ConfigError, PolicyError, ProtocolError, TetherError
from tether.core.schema import ArraySpec, PolicySpec
from tether.policies import protocol
from tether.policies.protocol import (
    ErrorReply,
    InferReply,
    InferRequest,
    InfoReply,
    InfoRequest,
    MessageError,
    PingReply,
    PingRequest,
    RemoteError,
    Reply,
    Request,
    ResetReply,
    ResetRequest,
)

log = logging.getLogger(__name__)

__all__ = ["ChunkReply", "PolicyClient", "ServerInfo", "ServerTimeout", "RemoteError"]

R = TypeVar("R", bound=Reply)

TERM_TIMEOUT_S = 2.0  # close(): the longest we wait for ZMQ to release the context
_warned_exposed: set[str] = set()  # endpoints already warned about (once per process)


class ServerTimeout(TetherError, TimeoutError):
    """The server did not answer in time (not running, stalled, or refusing our CURVE key)."""

    retryable = True


@dataclass(frozen=True)
class ServerInfo:
    spec: PolicySpec
    protocol: int
    max_message_bytes: int


@dataclass(frozen=True)
class ChunkReply:
    """An action chunk with its timing. `t_*` without `server` are client monotonic seconds."""

    actions: np.ndarray  # float32 (n, action_dim), writable copy
    request_id: int
    tag: Any  # whatever the caller attached to the request (the rollout: its tick index)
    t_sent: float
    t_received: float
    t_server_recv: float  # server clock
    t_server_reply: float  # server clock
    queue_ms: float
    infer_ms: float

    @property
    def round_trip_ms(self) -> float:
        return (self.t_received - self.t_sent) * 1e3

    @property
    def overhead_ms(self) -> float:
        """Round trip minus the server's own time (transport + codec + scheduling)."""
        return self.round_trip_ms - (self.t_server_reply - self.t_server_recv) * 1e3


class PolicyClient:
    """A connection to `tether serve` at `address`.

    Example:
        with PolicyClient("tcp://127.0.0.1:5555") as client:
            client.check_spec(observation_specs_for(robot), robot.action_dim)
            chunk = client.infer(robot.observe().to_arrays()).actions
    """

    def __init__(
        self,
        address: str,
        timeout_s: float = 1.0,
        keys_dir: Path | str | None = None,
        client_name: str = "client",
        max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.address = protocol.validate_endpoint(address)
        self.timeout_s = float(timeout_s)
        self.keys_dir = Path(keys_dir) if keys_dir is not None else None
        self._keys = None
        if self.keys_dir is not None:
            from tether.policies.keys import load_client_keys

            self._keys = load_client_keys(self.keys_dir, client_name)
        elif not protocol.is_local_address(address) and address not in _warned_exposed:
            _warned_exposed.add(address)
            log.warning(
                "connecting to %s without CURVE keys: observations and actions cross the "
                "network unencrypted and unauthenticated. Create keys with `tether keys "
                "generate DIR` and pass --keys DIR to both `tether serve` and this client.",
                address,
            )
        self.client_name = client_name
        # Kept across reconnects: the server's per-client policy state is keyed on it.
        self.identity = f"{client_name}-{uuid.uuid4().hex[:12]}".encode()
        self.max_message_bytes = max_message_bytes
        self.clock_offset_s: float | None = None  # server clock minus client clock
        self.reconnects = 0
        self._ids = itertools.count(1)
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._info: ServerInfo | None = None
        self._pending: dict[int, tuple[float, Any]] = {}  # id -> (t_sent, tag) of infer requests

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> PolicyClient:
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def connect(self) -> None:
        """Create the socket (ZMQ connects lazily, so this succeeds with no server up)."""
        if self._socket is not None:
            return
        if self._context is None:
            self._context = zmq.Context()
        sock = self._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 4)
            sock.setsockopt(zmq.RCVHWM, 16)
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # do not queue requests for a peer not there
            sock.setsockopt(zmq.ROUTING_ID, self.identity)
            if self._keys is not None:
                from tether.policies.keys import configure_client

                configure_client(sock, self._keys)
            sock.connect(self.address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)  # an open socket would make close() wait in Context.term
            raise ConfigError(
                f"cannot connect to {self.address}: {exc}; use tcp://host:port or ipc://path"
            ) from None
        except BaseException:
            sock.close(linger=0)
            raise
        self._socket = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)

    def close(self) -> None:
        """Close the socket (nothing unsent is kept) and release ZMQ; never blocks for long."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            _terminate(self._context, TERM_TIMEOUT_S)
            self._context = None
        self._pending.clear()

    def __del__(self) -> None:
        # A context garbage-collected with an open socket blocks in term(); close both here.
        try:
            self.close()
        except Exception:
            pass

    def reconnect(self) -> None:
        """Drop the socket and everything in flight, then connect afresh."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._pending.clear()
        self.reconnects += 1
        self.connect()

    # --- blocking calls ------------------------------------------------------------------------
    def info(self, refresh: bool = False) -> ServerInfo:
        """What the server serves (cached after the first call)."""
        if self._info is None or refresh:
            reply = self._call(InfoRequest(next(self._ids)), InfoReply)
            self._info = ServerInfo(reply.spec, reply.protocol, reply.max_message_bytes)
        return self._info

    def wait_for_server(self, deadline_s: float = 30.0) -> ServerInfo:
        """Wait for the first contact: `info` re-sent every `timeout_s` until `deadline_s`.

        A server started a moment ago (`tether serve ... &`) spends seconds importing torch and
        loading its checkpoint; the per-request `timeout_s` is meant for resends during a rollout,
        so the first contact gets its own, longer deadline. Errors that are not timeouts (a wrong
        CURVE key is a timeout; a malformed reply is not) are raised at once.
        """
        deadline = time.monotonic() + deadline_s
        told = False
        while True:
            try:
                return self.info(refresh=True)
            except ServerTimeout:
                if time.monotonic() + self.timeout_s > deadline:
                    raise ServerTimeout(
                        f"no policy server answered at {self.address} within {deadline_s:.0f} s. "
                        "Is `tether serve` running there and reachable (and, with --keys, do "
                        "the keys match)?"
                    ) from None
                if not told:
                    log.warning(
                        "waiting for the policy server at %s (up to %.0f s)",
                        self.address,
                        deadline_s,
                    )
                    told = True

    def ping(self) -> tuple[float, float]:
        """One ping: (round trip minus server time in s, clock offset estimate in s)."""
        t0 = time.monotonic()
        reply = self._call(PingRequest(next(self._ids), t_sent=t0), PingReply)
        t3 = time.monotonic()
        t1, t2 = reply.t_recv, reply.t_reply
        return (t3 - t0) - (t2 - t1), ((t1 - t0) + (t2 - t3)) / 2.0

    def estimate_clock_offset(self, n: int = 8) -> float:
        """Server clock minus client clock from the ping with the smallest round trip."""
        samples = [self.ping() for _ in range(max(1, n))]
        self.clock_offset_s = min(samples)[1]
        return self.clock_offset_s

    def reset(self) -> None:
        """Clear the policy's history (start of an episode)."""
        self._call(ResetRequest(next(self._ids)), ResetReply)

    def infer(self, observation: Mapping[str, np.ndarray], steps: int | None = None,
              sampler: str | None = None, lookahead: int | None = None) -> ChunkReply:
        """Send one observation and wait for its chunk (at most timeout_s)."""
        request_id = self.send_infer(observation, steps=steps, wait_s=self.timeout_s, sampler=sampler,
                                     lookahead=lookahead)
        reply = self.poll_reply(self.timeout_s)
        if reply is None:
            self._pending.pop(request_id, None)
            self.reconnect()
            raise self._timeout(InferRequest.OP)
        return reply

    # --- asynchronous inference ----------------------------------------------------------------
    def send_infer(
        self,
        observation: Mapping[str, np.ndarray],
        steps: int | None = None,
        tag: Any = None,
        wait_s: float = 0.0,
        sampler: str | None = None,
        lookahead: int | None = None,
    ) -> int:
        """Send an infer request without waiting for the reply; returns its id.

        Only the arrays the policy needs are sent (once `info()` was called). Raises
        ServerTimeout when no server connection is ready within `wait_s` (nothing is queued).
        """
        max_steps = protocol.max_steps_of(self._info.spec.extra) if self._info else None
        protocol.check_steps(steps, max_steps or protocol.MAX_STEPS)  # before anything is sent
        protocol.check_lookahead(lookahead)
        self.connect()
        request = InferRequest(
            next(self._ids),
            observation=self._select(observation),
            steps=None if steps is None else int(steps),
            t_sent=time.monotonic(),
            sampler=sampler,
            lookahead=None if lookahead is None else int(lookahead),
        )
        if not self._send(request.encode(), wait_s):
            raise self._timeout(request.OP, sent=False)
        assert isinstance(request.id, int) and request.t_sent is not None
        self._pending[request.id] = (request.t_sent, tag)
        return request.id

    def discard_pending(self) -> None:
        """Forget every unanswered infer request: their replies will be ignored when they come."""
        self._pending.clear()

    @property
    def pending(self) -> int:
        """Infer requests sent and not yet answered."""
        return len(self._pending)

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest unanswered infer request was sent, or None."""
        if not self._pending:
            return None
        return time.monotonic() - min(t for t, _ in self._pending.values())

    def poll_reply(self, timeout_s: float = 0.0) -> ChunkReply | None:
        """The next answered infer request, or None if none arrives within timeout_s.

        Raises RemoteError for an error reply and ProtocolError for a malformed one; both
        consume the request they answer.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._receive(deadline)
            if reply is None:
                return None
            if reply.id not in self._pending:
                continue  # an answer to a request we gave up on
            t_sent, tag = self._pending.pop(reply.id)
            if isinstance(reply, ErrorReply):
                raise reply.to_exception()
            if not isinstance(reply, InferReply):
                raise ProtocolError(
                    f"asked '{InferRequest.OP}', the server answered '{reply.OP}' "
                    f"(request {reply.id})"
                )
            return self._chunk_reply(reply, t_sent, tag)

    # --- spec checks ---------------------------------------------------------------------------
    def check_spec(self, observation: Sequence[ArraySpec], action_dim: int) -> PolicySpec:
        """Raise PolicyError unless the robot provides what the served policy needs."""
        spec = self.info().spec
        problems = spec_mismatches(spec, observation, action_dim)
        if problems:
            raise PolicyError(
                f"the policy served at {self.address} ({spec.policy_type}) does not fit this "
                "robot:\n  - " + "\n  - ".join(problems) + "\nServe a checkpoint trained for this "
                "robot, or change the robot's cameras (width/height) to match."
            )
        return spec

    # --- internals -----------------------------------------------------------------------------
    def _select(self, observation: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._info is None:
            return dict(observation)
        names = [a.name for a in self._info.spec.observation]
        missing = [n for n in names if n not in observation]
        if missing:
            raise PolicyError(f"the observation lacks {', '.join(missing)} that the policy needs")
        return {n: observation[n] for n in names}

    def _call(self, request: Request, reply_type: type[R]) -> R:
        """Send `request` and wait (at most timeout_s) for its reply, which must be a `reply_type`."""
        self.connect()
        if not self._send(request.encode(), self.timeout_s):
            raise self._timeout(request.OP, sent=False)
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._receive(deadline, awaited=request.id)
            if reply is None:
                self.reconnect()
                raise self._timeout(request.OP)
            if reply.id != request.id:
                self._pending.pop(reply.id, None)  # a late infer reply: nobody waits for it now
                continue
            if isinstance(reply, ErrorReply):
                raise reply.to_exception()
            if not isinstance(reply, reply_type):
                raise ProtocolError(f"asked '{request.OP}', the server answered '{reply.OP}'")
            return reply

    def _send(self, frames: list, wait_s: float) -> bool:
        """Send when a server connection is ready within wait_s; False if none was.

        With ZMQ_IMMEDIATE the socket refuses to queue a request for a server it is not (yet)
        connected to, so a request is never delivered minutes late to a server that came back.
        """
        assert self._socket is not None
        if wait_s > 0 and not self._socket.poll(int(wait_s * 1000), zmq.POLLOUT):
            return False
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def _receive(self, deadline: float, awaited: Any = None) -> Reply | None:
        """The next reply before `deadline` (monotonic s), or None.

        A malformed reply raises ProtocolError when someone waits for it (`awaited`, a pending
        infer, or an id it does not state); one to a request given up on is dropped.
        """
        while self._socket is not None:  # closed: nothing is in flight, nothing can arrive
            timeout_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if not self._poller.poll(timeout_ms):
                return None
            frames = self._socket.recv_multipart(copy=False)
            try:
                return protocol.decode_reply(frames, self.max_message_bytes)
            except MessageError as exc:
                rid = exc.request_id
                if rid is not None and rid != awaited and rid not in self._pending:
                    log.debug("dropped a malformed reply to request %s: %s", rid, exc)
                    continue
                self._pending.pop(rid, None)
                raise ProtocolError(f"malformed reply from {self.address}: {exc}") from None
        return None

    def _chunk_reply(self, reply: InferReply, t_sent: float, tag: Any) -> ChunkReply:
        t_received = time.monotonic()
        action_dim = reply.action.shape[1]
        if self._info is not None and action_dim != self._info.spec.action_dim:
            raise ProtocolError(
                f"reply {reply.id} has action_dim {action_dim}, the server's info says "
                f"{self._info.spec.action_dim}"
            )
        assert isinstance(reply.id, int)
        return ChunkReply(
            actions=np.array(reply.action, dtype=np.float32),  # a writable copy of the frame
            request_id=reply.id,
            tag=tag,
            t_sent=t_sent,
            t_received=t_received,
            t_server_recv=reply.t_recv,
            t_server_reply=reply.t_reply,
            queue_ms=reply.queue_ms,
            infer_ms=reply.infer_ms,
        )

    def _timeout(self, op: str, sent: bool = True) -> ServerTimeout:
        hint = (
            " The server may be refusing this client's CURVE key; check --keys on both sides."
            if self.keys_dir is not None
            else ""
        )
        what = "reply" if sent else "connection (request not sent)"
        return ServerTimeout(
            f"no '{op}' {what} from {self.address} within {self.timeout_s:.2f} s. Is `tether "
            f"serve` running there and reachable?{hint}"
        )


def _terminate(context: zmq.Context, timeout_s: float) -> None:
    """Context.term() in a helper thread, waited for at most timeout_s.

    term() blocks while any socket of the context is open; every path here closes its socket
    with linger 0 first, so this is a guard, not the plan: a leak logs instead of hanging.
    """
    done = threading.Thread(target=context.term, name="tether-client-term", daemon=True)
    try:
        done.start()
    except RuntimeError:  # interpreter shutdown: no new threads; the process is ending anyway
        return
    done.join(timeout_s)
    if done.is_alive():
        log.warning("ZMQ context still busy after %.1f s at close; leaving it", timeout_s)


def spec_mismatches(
    spec: PolicySpec, observation: Sequence[ArraySpec], action_dim: int
) -> list[str]:
    """Human-readable differences between a policy's needs and what a robot provides."""
    have = {a.name: a for a in observation}
    problems = []
    for need in spec.observation:
        got = have.get(need.name)
        if got is None:
            problems.append(
                f"policy needs '{need.name}' ({need.dtype} {tuple(need.shape)}), the robot has "
                f"only {', '.join(have) or 'nothing'}"
            )
        elif got.dtype != need.dtype or tuple(got.shape) != tuple(need.shape):
            problems.append(
                f"'{need.name}': policy needs {need.dtype} {tuple(need.shape)}, robot gives "
                f"{got.dtype} {tuple(got.shape)}"
            )
    if spec.action_dim != action_dim:
        problems.append(
            f"policy outputs {spec.action_dim} actions per step, the robot takes {action_dim}"
        )
    return problems
