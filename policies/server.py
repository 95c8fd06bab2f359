"""The inference server: a ZMQ ROUTER that serves one Policy to one or more robot clients.

Two threads with one job each:

- the I/O thread owns the sockets. It stamps every message with its receive time, validates it
  (protocol.decode_request + the policy's observation spec), answers `ping`, `info` and every
  error at once, and queues `reset` / `infer` per client. Replies from the worker come back to it over an
  inproc socket, because ZMQ sockets must not be shared between threads.
- the worker thread runs the policy. It takes the next request round-robin over the clients
  that have one queued, so a client that floods the server, or whose requests are slow, delays
  every other client by at most one inference; each client may queue only
  `max_queued_per_client` requests (more get a `busy` error).

Each client (ZMQ routing id) gets its own fork of the policy (`Policy.fork()`: shared weights,
its own observation history and RNG), so one robot's `reset` or history never changes what
another receives. At most `max_client_states` are kept; the least recently used is dropped
(logged) and starts afresh if it comes back.

Nothing that arrives is trusted: a malformed message gets an error reply with a code naming the
problem, a frame over the size limit makes ZMQ drop the connection (it cannot be answered
without buffering it), a message with too many frames or bytes in total is refused as soon as
it can be read, and the server keeps serving either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from tether.core.errors import ConfigError, TetherError
from tether.policies import protocol
from tether.policies.base import Policy
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
    is_local_address,
)

log = logging.getLogger(__name__)

__all__ = ["PolicyServer", "ServerConfig", "ServerStats", "is_local_address", "warn_if_exposed"]


@dataclass
class ServerConfig:
    """How the server listens and how much it will hold for its clients.

    address: ZMQ endpoint, `tcp://127.0.0.1:5555` or `ipc:///tmp/tether.sock`; tcp port 0 picks a
        free port (see PolicyServer.endpoint).
    keys_dir: a directory from `tether keys generate`; enables CURVE encryption and refuses
        clients whose public key is not in `<keys_dir>/authorized_clients/`.
    max_message_bytes: larger requests get `too_large`; a single frame larger than this makes
        ZMQ drop the sender's connection.
    max_queued_per_client / max_clients: bound the memory the server holds for requests.
    max_client_states: per-client policy states (history, RNG) kept; the least recently used
        beyond it is dropped and starts afresh.
    hwm: ZMQ send/receive high-water marks (messages per peer).
    """

    address: str = "tcp://127.0.0.1:5555"
    keys_dir: Path | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    max_queued_per_client: int = 2
    max_clients: int = 32
    max_client_states: int = 64
    hwm: int = 32


@dataclass
class ServerStats:
    """Counters for logs and tests (read them from any thread; they only grow)."""

    received: int = 0
    inferences: int = 0
    errors: Counter = field(default_factory=Counter)
    dropped_replies: int = 0


@dataclass
class _Job:
    identity: bytes
    request: InferRequest | ResetRequest
    frames: list  # keeps the zero-copy observation arrays alive until the job is done
    t_recv: float


class PolicyServer:
    """Serve `policy` on `config.address` until `stop()`; use as a context manager in tests.

    Example:
        with PolicyServer(policy, ServerConfig("tcp://127.0.0.1:0")) as server:
            client = PolicyClient(server.endpoint)
    """

    def __init__(self, policy: Policy, config: ServerConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ServerConfig()
        if min(self.config.max_queued_per_client, self.config.max_clients,
               self.config.max_client_states) < 1:  # fmt: skip
            raise ConfigError(
                "max_queued_per_client, max_clients and max_client_states must be >= 1"
            )
        self.stats = ServerStats()
        self._context: zmq.Context | None = None
        self._auth = None
        self._router: zmq.Socket | None = None
        self._endpoint: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler = _RoundRobin(self.config.max_queued_per_client, self.config.max_clients)
        self._wake_address = f"inproc://tether-server-{id(self)}"
        self._max_steps = protocol.max_steps_of(policy.spec.extra)
        self.client_policies = _ClientPolicies(policy, self.config.max_client_states)
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The bound endpoint (with the real port when the address asked for port 0)."""
        if self._endpoint is None:
            raise TetherError("the server is not started; call start() first")
        return self._endpoint

    def start(self) -> PolicyServer:
        """Bind and start the I/O and worker threads; returns once the socket is bound."""
        if self._threads:
            return self
        warn_if_exposed(self.config.address, self.config.keys_dir)
        self._stop.clear()
        self._scheduler = _RoundRobin(self.config.max_queued_per_client, self.config.max_clients)
        self.client_policies = _ClientPolicies(self.policy, self.config.max_client_states)
        self._context = zmq.Context()
        try:
            self._router = self._make_router()
        except BaseException:
            self.stop()
            raise
        io_thread = threading.Thread(target=self._io_loop, name="tether-server-io", daemon=True)
        worker = threading.Thread(target=self._work_loop, name="tether-server-worker", daemon=True)
        self._threads = [io_thread, worker]
        # The inproc PULL must be bound before the worker connects, and only the I/O thread
        # may touch its sockets: it binds, then signals.
        io_thread.start()
        self._started.wait(5.0)
        if self._start_error is not None:
            self.stop()
            raise self._start_error
        worker.start()
        engine = getattr(self.policy, "engine", None)  # set by tether.policies.engines
        log.info("policy server (%s%s) listening on %s", self.policy.spec.policy_type,
                 f", engine {engine}" if engine is not None else "", self._endpoint)
        return self

    def stop(self) -> None:
        """Stop both threads and close every socket (idempotent)."""
        self._stop.set()
        self._scheduler.close()
        stuck = []
        for thread in self._threads:
            thread.join(timeout=5.0)
            if thread.is_alive():
                stuck.append(thread.name)
        self._threads = []
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._context is not None:
            if stuck:  # a policy call that never returns: leave its socket to the daemon thread
                log.warning("server threads still busy at stop: %s", ", ".join(stuck))
            else:
                self._context.term()
            self._context = None
        self._started.clear()

    def serve_forever(self) -> None:
        """Block until interrupted (Ctrl-C) or stop() from another thread."""
        self.start()
        try:
            while not self._stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            log.info("interrupted; shutting the server down")
        finally:
            self.stop()

    # --- sockets -------------------------------------------------------------------------------
    def _make_router(self) -> zmq.Socket:
        assert self._context is not None
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.config.hwm)
        sock.setsockopt(zmq.SNDHWM, self.config.hwm)
        # Per frame: a larger frame makes ZMQ drop the connection before buffering it.
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        # A client keeps its routing id across reconnects (and so its policy state); the new
        # connection takes over from the old one the server may not have seen close yet.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.config.keys_dir is not None:
            from tether.policies.keys import configure_server

            try:
                self._auth = configure_server(self._context, sock, Path(self.config.keys_dir))
            except BaseException:
                sock.close()  # an open socket would make stop()'s context.term() wait forever
                raise
        try:
            sock.bind(self.config.address)
        except zmq.ZMQError as exc:
            sock.close()
            raise TetherError(
                f"cannot bind the policy server to {self.config.address}: {exc}. Is another "
                "server using it? Choose another port with --bind tcp://127.0.0.1:<port>."
            ) from None
        self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    # --- I/O thread ----------------------------------------------------------------------------
    def _io_loop(self) -> None:
        assert self._context is not None and self._router is not None
        router = self._router
        replies = self._context.socket(zmq.PULL)
        replies.setsockopt(zmq.LINGER, 0)
        try:
            replies.bind(self._wake_address)
        except zmq.ZMQError as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if replies in events:
                    while True:
                        try:
                            frames = replies.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._send(frames[0].bytes, frames[1:])
                if router in events:
                    for _ in range(64):  # bounded burst, then serve replies again
                        try:
                            frames, refusal = self._receive(router)
                        except zmq.Again:
                            break
                        try:
                            if refusal is not None:
                                self._refuse(frames, refusal)
                            else:
                                self._handle(frames, time.monotonic())
                        except Exception:  # a bug here must not take the server down
                            self.stats.errors["internal"] += 1
                            log.exception("internal error while handling a message; serving on")
        finally:
            replies.close()
            router.close()

    def _receive(self, router: zmq.Socket) -> tuple[list, MessageError | None]:
        """One message, frame by frame, refusing it at the first frame over the limits.

        ZMQ hands over a multipart message only once all of it has arrived (MAXMSGSIZE bounds
        each frame, nothing bounds their number), so this is the earliest the count and the
        total can be checked: past a limit, the rest is released unread instead of kept.
        Returns (identity + body frames, None), or (identity + header frame, the refusal).
        """
        frames = [router.recv(zmq.NOBLOCK, copy=False)]  # the routing id; raises zmq.Again
        more = frames[0].more
        total = 0
        refusal: MessageError | None = None
        while more:
            frame = router.recv(copy=False)  # the rest of the message is already queued
            more = frame.more
            if refusal is not None:
                continue  # released at once
            total += len(frame)
            if len(frames) > protocol.MAX_FRAMES:
                refusal = MessageError(
                    "too_large",
                    f"message has more than {protocol.MAX_FRAMES} frames (a header and at most "
                    f"{protocol.MAX_ARRAYS} arrays)",
                )
            elif total > self.config.max_message_bytes:
                refusal = MessageError(
                    "too_large",
                    f"message is over {self.config.max_message_bytes} bytes; the server's limit "
                    "is --max-message-mb",
                )
            else:
                frames.append(frame)
        if refusal is not None:
            del frames[2:]
        return frames, refusal

    def _refuse(self, frames: list, refusal: MessageError) -> None:
        self.stats.received += 1
        self.stats.errors[refusal.code] += 1
        rid = protocol.peek_id(frames[1]) if len(frames) > 1 else None
        self._send(frames[0].bytes, ErrorReply.from_error(rid, refusal).encode())

    def _handle(self, frames: list, t_recv: float) -> None:
        self.stats.received += 1
        identity, body = frames[0].bytes, frames[1:]
        if not body:
            self.stats.errors["empty"] += 1  # nothing to answer to
            return
        try:
            request = protocol.decode_request(body, self.config.max_message_bytes)
            if isinstance(request, InferRequest):
                protocol.check_steps(request.steps, self._max_steps)
                protocol.check_arrays(request.observation, self.policy.spec.observation)
        except MessageError as exc:
            self.stats.errors[exc.code] += 1
            rid = exc.request_id if exc.request_id is not None else protocol.peek_id(body[0])
            self._send(identity, ErrorReply.from_error(rid, exc).encode())
            return
        if isinstance(request, PingRequest):
            self._send(identity, PingReply(request.id, t_recv, time.monotonic()).encode())
        elif isinstance(request, InfoRequest):
            self._send(identity, self._info(request, t_recv).encode())
        else:
            assert isinstance(request, (InferRequest, ResetRequest))
            refusal = self._scheduler.put(_Job(identity, request, body, t_recv))
            if refusal is not None:
                code, text = refusal
                self.stats.errors[code] += 1
                self._send(identity, ErrorReply(request.id, code, text).encode())

    def _send(self, identity: bytes, frames: list) -> None:
        assert self._router is not None
        try:
            self._router.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:  # the client stopped reading and its queue is full: drop, keep serving
            self.stats.dropped_replies += 1
        except zmq.ZMQError as exc:
            self.stats.dropped_replies += 1
            log.debug("reply dropped: %s", exc)

    # --- worker thread -------------------------------------------------------------------------
    def _work_loop(self) -> None:
        assert self._context is not None
        out = self._context.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self._wake_address)
        try:
            while not self._stop.is_set():
                job = self._scheduler.get(timeout=0.1)
                if job is None:
                    continue
                try:
                    reply = self._run(job)
                except Exception:  # encoding a reply failed: answer, keep the worker alive
                    log.exception("internal error while running a request; serving on")
                    reply = ErrorReply(job.request.id, "policy_error", "internal error").encode()
                out.send_multipart([job.identity, *reply], copy=False)
        finally:
            out.close()

    def _run(self, job: _Job) -> list:
        request = job.request
        t_start = time.monotonic()
        queue_ms = (t_start - job.t_recv) * 1e3
        try:
            if isinstance(request, ResetRequest):
                self.client_policies.reset(job.identity)
                return ResetReply(request.id, job.t_recv, time.monotonic()).encode()
            policy = self.client_policies.get(job.identity)
            chunk = policy.predict_chunk(request.observation, **request.policy_options())
            infer_ms = (time.monotonic() - t_start) * 1e3
            if not np.isfinite(chunk).all():
                raise TetherError("the policy produced NaN or inf actions")
        except Exception as exc:  # a policy bug must not take the server down
            self.stats.errors["policy_error"] += 1
            log.warning("policy failed on '%s': %s: %s", request.OP, type(exc).__name__, exc)
            return ErrorReply(request.id, "policy_error", f"{type(exc).__name__}: {exc}").encode()
        finally:
            job.frames = []
        self.stats.inferences += 1
        reply = InferReply(
            request.id,
            action=chunk,
            t_recv=job.t_recv,
            t_reply=time.monotonic(),
            queue_ms=queue_ms,
            infer_ms=infer_ms,
        )
        return reply.encode()

    def _info(self, request: InfoRequest, t_recv: float) -> InfoReply:
        return InfoReply(
            request.id,
            spec=self.policy.spec,
            protocol=protocol.PROTOCOL_VERSION,
            max_message_bytes=self.config.max_message_bytes,
            max_queued_per_client=self.config.max_queued_per_client,
            t_recv=t_recv,
        )


class _RoundRobin:
    """Per-client FIFO queues; the client served least recently goes next (thread-safe).

    Each client has a rank: the service counter when it was last served, or, for a client not
    seen before, the counter when it arrived minus one half (as if it had been served just
    before the most recent request). Always serving the lowest rank means a waiting client is
    passed by each other client at most once, and a new client never waits behind a client
    that was served while it was already waiting: a flooding client delays it by at most the
    inference in progress.
    """

    MAX_RANKS = 4096

    def __init__(self, max_per_client: int, max_clients: int) -> None:
        self._queues: dict[bytes, deque[_Job]] = {}
        self._rank: dict[bytes, float] = {}
        self._counter = 0
        self._cond = threading.Condition()
        self._max_per_client = max_per_client
        self._max_clients = max_clients
        self._closed = False

    def put(self, job: _Job) -> tuple[str, str] | None:
        """Queue `job`; returns (code, message) when it is refused."""
        with self._cond:
            queue = self._queues.get(job.identity)
            if queue is None:
                if len(self._queues) >= self._max_clients:
                    return (
                        "too_many_clients",
                        f"the server already has requests from {self._max_clients} clients; "
                        "retry later",
                    )
                queue = self._queues[job.identity] = deque()
                if job.identity not in self._rank:
                    self._forget_idle()
                    self._rank[job.identity] = self._counter - 0.5
            if len(queue) >= self._max_per_client:
                return (
                    "busy",
                    f"{len(queue)} of your requests are already queued (limit "
                    f"{self._max_per_client}); wait for a reply before sending more",
                )
            queue.append(job)
            self._cond.notify()
            return None

    def get(self, timeout: float) -> _Job | None:
        """The oldest job of the client served least recently."""
        with self._cond:
            if not self._queues and not self._closed:
                self._cond.wait(timeout)
            if not self._queues:
                return None
            identity = min(self._queues, key=self._rank.__getitem__)
            queue = self._queues[identity]
            job = queue.popleft()
            if not queue:
                del self._queues[identity]
            self._counter += 1
            self._rank[identity] = self._counter
            return job

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queues.clear()
            self._cond.notify_all()

    def _forget_idle(self) -> None:
        """Bound the rank table: drop the least recently served idle clients."""
        if len(self._rank) < self.MAX_RANKS:
            return
        idle = sorted((r, i) for i, r in self._rank.items() if i not in self._queues)
        for _, identity in idle[: len(idle) // 2 + 1]:
            del self._rank[identity]


class _ClientPolicies:
    """One fork of the served policy per client identity, least recently used first out.

    Used by the worker thread only. A memoryless policy forks to itself, so this costs nothing
    for ACT; diffusion gets its own history and generator per robot.
    """

    def __init__(self, policy: Policy, max_states: int) -> None:
        self._template = policy
        self._max_states = max_states
        self._states: OrderedDict[bytes, Policy] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._states)

    def get(self, identity: bytes) -> Policy:
        """The client's policy, created (fresh, as after reset) on first use."""
        policy = self._states.get(identity)
        if policy is not None:
            self._states.move_to_end(identity)
            return policy
        policy = self._template.fork()
        self._states[identity] = policy
        while len(self._states) > self._max_states:
            dropped, _ = self._states.popitem(last=False)
            self.evictions += 1
            log.warning(
                "dropped the policy state (history, RNG) of client %s: more than %d clients; "
                "it starts afresh if it comes back (raise max_client_states to keep more)",
                _name(dropped), self._max_states,
            )  # fmt: skip
        return policy

    def reset(self, identity: bytes) -> None:
        self.get(identity).reset()


def _name(identity: bytes) -> str:
    """A routing id for logs: the client's readable name, or hex."""
    try:
        text = identity.decode("ascii")
    except UnicodeDecodeError:
        return identity.hex()
    return text if text.isprintable() else identity.hex()


def warn_if_exposed(address: str, keys_dir: Path | None) -> bool:
    """Log a warning when binding beyond loopback without CURVE keys; returns True if it warned."""
    if keys_dir is None and not is_local_address(address):
        log.warning(
            "binding the policy server to %s without CURVE keys: anyone who can reach this "
            "address can drive the robot's policy. Create keys with `tether keys generate DIR` "
            "and pass `--keys DIR` to both `tether serve` and `tether rollout`.",
            address,
        )
        return True
    return False
