"""The policy server through real ZMQ sockets: every op, every validation error, fairness,
the fuzz test, and CURVE authentication."""

from __future__ import annotations

import logging
import random
import threading

import msgpack
import numpy as np
import pytest
import zmq

from tether.core.schema import ArraySpec
from tether.policies import protocol
from tether.policies.base import Policy
from tether.policies.client import PolicyClient, ServerTimeout
from tether.policies.keys import generate_keys
from tether.policies.server import PolicyServer, ServerConfig, is_local_address, warn_if_exposed
from tether.policies.simple import IdentityPolicy

OBS = (ArraySpec("state", "float32", (14,)), ArraySpec("image.top", "uint8", (24, 32, 3)))
LOCAL = "tcp://127.0.0.1:0"


def make_obs(value: float = 0.5) -> dict[str, np.ndarray]:
    return {
        "state": np.full(14, value, dtype=np.float32),
        "image.top": np.full((24, 32, 3), 7, dtype=np.uint8),
    }


class RecordingPolicy(IdentityPolicy):
    """Identity that records resets and per-request options, and fails on request."""

    def __init__(self) -> None:
        super().__init__(OBS, action_dim=14, chunk_size=10, fps=50)
        self.resets = 0
        self.options: list[dict] = []
        self.mode = "ok"  # "raise" | "nan"

    def reset(self) -> None:
        self.resets += 1

    def _predict_chunk(self, observation, **options):
        self.options.append(options)
        if self.mode == "raise":
            raise RuntimeError("model exploded")
        chunk = np.array(super()._predict_chunk(observation))
        if self.mode == "nan":
            chunk[0, 0] = np.nan
        return chunk


class SteppedPolicy(RecordingPolicy):
    """Each inference waits for a permit from the test, so the test decides when the model
    'finishes' and the server's queueing is checked without any timing: `served` lists the
    first state value of every observation, in the order the worker ran them."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = threading.Semaphore(0)
        self.served: list[float] = []
        self.started = 0

    def _predict_chunk(self, observation, **options):
        self.started += 1
        if not self.permits.acquire(timeout=30.0):
            raise RuntimeError("the test never released this inference")
        self.served.append(float(observation["state"][0]))
        return super()._predict_chunk(observation, **options)


@pytest.fixture
def policy():
    return RecordingPolicy()


@pytest.fixture
def server(policy):
    with PolicyServer(policy, ServerConfig(LOCAL, max_message_bytes=1_000_000)) as srv:
        yield srv


@pytest.fixture
def client(server):
    with PolicyClient(server.endpoint, timeout_s=2.0) as c:
        yield c


class RawDealer:
    """A bare DEALER socket, to send what a well-behaved client never would."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, frames: list) -> None:
        self.socket.send_multipart(frames)

    def reply(self, timeout_s: float = 2.0) -> dict | None:
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        frames = self.socket.recv_multipart()
        message = protocol.decode(frames, allowed_ops=(*protocol.OPS, protocol.ERROR_OP))
        return {**message.header, "arrays": message.arrays}

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def raw(server):
    dealer = RawDealer(server.endpoint)
    yield dealer
    dealer.close()


# --- ops -------------------------------------------------------------------------------------


def test_info_describes_the_policy(client, policy):
    info = client.info()
    assert info.protocol == protocol.PROTOCOL_VERSION
    assert info.spec == policy.spec
    assert info.spec.normalizer_hash == "none" and info.spec.chunk_size == 10


def test_ping_round_trip_bounds_the_clock_offset_on_one_clock(client, monkeypatch):
    # Server and client share time.monotonic() here, so the true offset is 0 and each ping's
    # estimate can be off by at most half its round trip: a bound that holds at any speed.
    for _ in range(5):
        rtt, offset = client.ping()
        assert rtt >= 0 and abs(offset) <= rtt / 2 + 1e-9, (rtt, offset)
    samples = []
    ping = client.ping
    monkeypatch.setattr(client, "ping", lambda: samples.append(ping()) or samples[-1])
    offset = client.estimate_clock_offset(n=5)
    best_rtt, best_offset = min(samples)
    assert len(samples) == 5 and offset == best_offset == client.clock_offset_s
    assert abs(offset) <= best_rtt / 2 + 1e-9


def test_infer_returns_the_chunk_with_server_timing(client):
    reply = client.infer(make_obs(0.25))
    assert reply.actions.shape == (10, 14) and reply.actions.dtype == np.float32
    np.testing.assert_allclose(reply.actions, 0.25)
    assert reply.actions.flags.writeable
    assert reply.t_sent <= reply.t_server_recv <= reply.t_server_reply <= reply.t_received
    assert reply.queue_ms >= 0 and reply.infer_ms >= 0
    assert 0 <= reply.overhead_ms <= reply.round_trip_ms


def test_infer_passes_steps_and_reset_reaches_the_policy(client, policy):
    client.infer(make_obs(), steps=7)
    client.infer(make_obs())
    assert policy.options == [{"steps": 7}, {}]
    client.reset()
    client.reset()
    assert policy.resets == 2


def test_the_client_sends_only_the_arrays_the_policy_needs(client):
    client.info()
    obs = {**make_obs(), "image.unused": np.zeros((2, 2, 3), np.uint8)}
    assert client.infer(obs).actions.shape == (10, 14)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_a_failing_policy_gets_policy_error_and_the_server_keeps_serving(client, policy, mode):
    policy.mode = mode
    with pytest.raises(protocol.RemoteError) as err:
        client.infer(make_obs())
    assert err.value.code == "policy_error"
    assert ("model exploded" if mode == "raise" else "NaN") in err.value.detail
    policy.mode = "ok"
    assert client.infer(make_obs()).actions.shape == (10, 14)


# --- validation, end to end --------------------------------------------------------------------


def _infer_frames(arrays: dict, **header) -> list[bytes]:
    return [bytes(f) for f in protocol.encode({"id": 1, "op": "infer", **header}, arrays)]


def _bad_messages() -> dict[str, tuple[list[bytes], str]]:
    good = make_obs()
    valid = _infer_frames(good)
    head = msgpack.unpackb(valid[0])
    nan_state = good["state"].copy()
    nan_state[0] = np.nan
    inf_state = good["state"].copy()
    inf_state[1] = np.inf
    return {
        "not msgpack": ([b"\x00\xff\xfe"], "bad_header"),
        "header not a map": ([msgpack.packb("infer")], "bad_header"),
        "old version": ([msgpack.packb({**head, "v": 0}), *valid[1:]], "bad_version"),
        "unknown op": ([msgpack.packb({**head, "op": "exec"})], "unknown_op"),
        "bad steps": ([msgpack.packb({**head, "steps": -3}), *valid[1:]], "bad_field"),
        "missing array": (_infer_frames({"state": good["state"]}), "missing_array"),
        "extra array": (_infer_frames({**good, "depth": np.zeros(3, np.uint16)}), "extra_array"),
        "arrays on reset": (
            [bytes(f) for f in protocol.encode({"id": 1, "op": "reset"}, good)],
            "extra_array",
        ),
        "wrong dtype": (
            _infer_frames({**good, "state": good["state"].astype(np.float64)}),
            "bad_dtype",
        ),
        "wrong shape": (_infer_frames({**good, "state": good["state"][:7]}), "bad_shape"),
        "nan": (_infer_frames({**good, "state": nan_state}), "non_finite"),
        "inf": (_infer_frames({**good, "state": inf_state}), "non_finite"),
        "truncated frame": ([valid[0], valid[1][:-1], valid[2]], "truncated"),
        "missing frame": (valid[:2], "frame_count"),
        "extra frame": ([*valid, b"junk"], "frame_count"),
        "object dtype": (
            [
                msgpack.packb(
                    {
                        **head,
                        "arrays": [{**head["arrays"][0], "dtype": "object"}, *head["arrays"][1:]],
                    }
                ),
                *valid[1:],
            ],
            "bad_dtype",
        ),
        "duplicate names": (
            [msgpack.packb({**head, "arrays": [head["arrays"][0]] * 2}), valid[1], valid[1]],
            "bad_arrays",
        ),
        "negative shape": (
            [
                msgpack.packb(
                    {**head, "arrays": [{**head["arrays"][0], "shape": [-1]}, *head["arrays"][1:]]}
                ),
                *valid[1:],
            ],
            "bad_shape",
        ),
        "oversize total": (
            [msgpack.packb({**head, "arrays": []}), *[b"\0" * 400_000] * 3],
            "too_large",
        ),
    }


BAD = _bad_messages()


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_malformed_message_gets_a_coded_error_and_serving_continues(raw, client, case):
    frames, code = BAD[case]
    raw.send(frames)
    reply = raw.reply()
    assert reply is not None, f"no reply to '{case}'"
    assert reply["op"] == "error" and reply["code"] == code, reply
    assert reply["message"]
    if case not in ("not msgpack", "header not a map"):
        assert reply["id"] == 1  # the error names the request it answers
    assert client.infer(make_obs()).actions.shape == (10, 14)


def test_a_frame_over_the_size_limit_is_dropped_without_hurting_others(server, client):
    abuser = RawDealer(server.endpoint)
    try:
        abuser.send([msgpack.packb({"v": 1, "id": 1, "op": "infer"}), b"\0" * 2_000_000])
        assert abuser.reply(timeout_s=0.5) is None  # ZMQ dropped the connection; nobody to answer
    finally:
        abuser.close()
    assert client.infer(make_obs()).actions.shape == (10, 14)


def test_a_client_that_floods_requests_gets_busy_errors(wait_until):
    stepped = SteppedPolicy()
    with PolicyServer(stepped, ServerConfig(LOCAL, max_queued_per_client=2)) as server:
        dealer = RawDealer(server.endpoint)
        try:
            for i in range(6):
                dealer.send(_infer_frames(make_obs()) if i == 0 else _retag(i))
            # The first inference cannot finish until released: everything beyond one running
            # and two queued requests must be refused meanwhile.
            wait_until(lambda: server.stats.received >= 6, what="the server to read all 6")
            busy = [dealer.reply() for _ in range(3)]
            stepped.permits.release(6)
            replies = busy + [dealer.reply() for _ in range(3)]
            assert dealer.reply(timeout_s=0.2) is None  # one reply per request, no more
        finally:
            dealer.close()
    codes = [r["code"] if r["op"] == "error" else "ok" for r in replies]
    assert codes[:3] == ["busy"] * 3, codes
    assert codes.count("busy") in (3, 4) and codes.count("ok") == 6 - codes.count("busy"), codes
    assert server.stats.errors["busy"] == codes.count("busy")
    assert len(stepped.served) == codes.count("ok")


def test_clients_beyond_max_clients_are_told_to_retry_later(wait_until):
    stepped = SteppedPolicy()
    config = ServerConfig(LOCAL, max_clients=1, max_queued_per_client=2)
    with PolicyServer(stepped, config) as server:
        first, second = RawDealer(server.endpoint), RawDealer(server.endpoint)
        try:
            first.send(_retag(1))
            first.send(_retag(2))  # one running, one queued: the first client holds the slot
            wait_until(lambda: server.stats.received >= 2, what="the first client's 2 requests")
            second.send(_retag(3))
            refusal = second.reply()
            assert refusal["op"] == "error" and refusal["code"] == "too_many_clients"
            assert refusal["id"] == 3 and "retry later" in refusal["message"]
            stepped.permits.release(2)
            assert [first.reply()["op"] for _ in range(2)] == ["infer", "infer"]
            second.send(_retag(4))  # the slot is free again
            stepped.permits.release(1)
            assert second.reply()["op"] == "infer"
        finally:
            first.close()
            second.close()


def _retag(request_id: int) -> list[bytes]:
    return [bytes(f) for f in protocol.encode({"id": request_id, "op": "infer"}, make_obs())]


def test_a_flooding_client_delays_others_by_at_most_one_inference(wait_until):
    """Round robin, checked by the order the worker ran requests in (the test releases each
    inference): while a flooder keeps its queue full, each request of another client runs
    right after the inference in progress when it arrived, never behind the flooder's queue."""
    stepped = SteppedPolicy()
    flood_value, victim_value, rounds = 0.5, 0.875, 6
    with PolicyServer(stepped, ServerConfig(LOCAL, max_queued_per_client=2)) as server:
        flooder, victim = RawDealer(server.endpoint), RawDealer(server.endpoint)
        try:
            received = 0

            def send(dealer: RawDealer, request_id: int, value: float) -> None:
                nonlocal received
                frames = protocol.encode({"id": request_id, "op": "infer"}, make_obs(value))
                dealer.send([bytes(f) for f in frames])
                received += 1
                wait_until(lambda: server.stats.received >= received, what=f"request {request_id}")

            send(flooder, 1, flood_value)  # runs (blocked until released)
            wait_until(lambda: stepped.started >= 1, what="the first inference to start")
            send(flooder, 2, flood_value)
            send(flooder, 3, flood_value)  # the flooder's queue is full
            next_id = 4
            for r in range(rounds):
                send(victim, 100 + r, victim_value)
                stepped.permits.release(1)  # the flooder's inference in progress finishes
                stepped.permits.release(1)  # then the next one runs: must be the victim's
                reply = victim.reply(timeout_s=20.0)
                assert reply is not None and reply["op"] == "infer" and reply["id"] == 100 + r
                # the flooder got its reply and tops its queue up again
                assert flooder.reply(timeout_s=20.0)["op"] == "infer"
                wait_until(lambda runs=2 * r + 3: stepped.started >= runs,
                           what="the flooder's next run")
                send(flooder, next_id, flood_value)
                next_id += 1
            stepped.permits.release(10)
            for _ in range(next_id - 1 - rounds):  # the flooder's requests still outstanding
                assert flooder.reply(timeout_s=20.0)["op"] == "infer"
        finally:
            stepped.permits.release(100)
            flooder.close()
            victim.close()
    order = stepped.served[: 2 * rounds]
    assert order == [flood_value, victim_value] * rounds, order  # one flooder run, then the victim
    assert stepped.served.count(victim_value) == rounds  # every victim request was served
    assert server.stats.errors.get("busy", 0) == 0  # the flooder stayed within its queue


# --- fuzz ------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _mutations(rng: random.Random, valid: list[bytes], n: int):
    head = msgpack.unpackb(valid[0])
    junk_values = [None, -1, 2**40, 1.5, "x", "", [], {}, [1, "a"], {"k": 1}, True, b"\0\1"]
    for _ in range(n):
        kind = rng.randrange(8)
        if kind == 0:  # random bytes, random frame count
            yield [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 5))]
        elif kind == 1:  # random msgpack values as the header
            yield [msgpack.packb(rng.choice(junk_values)), *valid[1 : rng.randrange(1, 4)]]
        elif kind == 2:  # a header field replaced by junk
            h = dict(head)
            h[rng.choice(["v", "id", "op", "arrays", "steps", "t_sent"])] = rng.choice(junk_values)
            yield [msgpack.packb(h), *valid[1:]]
        elif kind == 3:  # an array descriptor field replaced by junk
            h = dict(head)
            h["arrays"] = [dict(d) for d in head["arrays"]]
            d = rng.choice(h["arrays"])
            d[rng.choice(["name", "dtype", "shape"])] = rng.choice(junk_values + ["float64", [3]])
            yield [msgpack.packb(h), *valid[1:]]
        elif kind == 4:  # frames truncated, extended, dropped or duplicated
            frames = list(valid)
            i = rng.randrange(1, len(frames))
            op = rng.randrange(4)
            if op == 0:
                frames[i] = frames[i][: rng.randrange(len(frames[i]))]
            elif op == 1:
                frames[i] = frames[i] + rng.randbytes(rng.randrange(1, 16))
            elif op == 2:
                del frames[i]
            else:
                frames.insert(i, frames[i])
            yield frames
        elif kind == 5:  # bit flips in the header
            h = bytearray(valid[0])
            for _ in range(rng.randrange(1, 4)):
                h[rng.randrange(len(h))] ^= 1 << rng.randrange(8)
            yield [bytes(h), *valid[1:]]
        elif kind == 6:  # NaN/inf written into the state bytes
            state = np.frombuffer(valid[1], dtype=np.float32).copy()
            state[rng.randrange(14)] = rng.choice([np.nan, np.inf, -np.inf])
            yield [valid[0], state.tobytes(), valid[2]]
        else:  # valid requests, pings and infos mixed in (some with random image bytes)
            choice = rng.randrange(3)
            if choice == 0:
                yield [valid[0], valid[1], rng.randbytes(len(valid[2]))]
            else:
                yield [msgpack.packb({"v": 1, "id": 1, "op": ["ping", "info"][choice - 1]})]


def run_fuzz(server: PolicyServer, n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    valid = _infer_frames(make_obs())
    dealer = RawDealer(server.endpoint)
    outcomes: dict[str, int] = {}
    try:
        batch: list[list[bytes]] = []
        messages = list(_mutations(rng, valid, n))
        for i in range(0, n, 16):
            batch = messages[i : i + 16]
            for frames in batch:
                dealer.send(frames)
            for _ in batch:
                reply = dealer.reply(timeout_s=5.0)
                assert reply is not None, "the server stopped answering during the fuzz"
                key = reply["code"] if reply["op"] == "error" else reply["op"]
                outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        dealer.close()
    return outcomes


def _fuzz_and_check(n: int, seed: int) -> None:
    policy = RecordingPolicy()
    with PolicyServer(policy, ServerConfig(LOCAL, max_queued_per_client=64)) as server:
        run_fuzz(server, 200, seed + 1)  # warm up allocators before measuring memory
        rss0 = _rss_mb()
        outcomes = run_fuzz(server, n, seed)
        rss1 = _rss_mb()
        with PolicyClient(server.endpoint, timeout_s=2.0) as client:
            np.testing.assert_allclose(client.infer(make_obs(0.125)).actions, 0.125)
    assert sum(outcomes.values()) == n  # every message was answered exactly once
    assert len([k for k in outcomes if k not in ("infer", "ping", "info")]) >= 8, outcomes
    assert outcomes.get("infer", 0) > 0  # valid messages in the mix were served
    assert rss1 - rss0 < 30, f"memory grew by {rss1 - rss0:.1f} MB over {n} fuzz messages"
    assert server.stats.received >= n + 200


def test_fuzz_2000_random_and_mutated_messages():
    _fuzz_and_check(2000, seed=1)


@pytest.mark.slow
def test_fuzz_50000_messages():
    _fuzz_and_check(50000, seed=2)


# --- CURVE and binding -----------------------------------------------------------------------


def test_curve_accepts_the_authorized_key_and_refuses_others(tmp_path):
    good = tmp_path / "keys"
    generate_keys(good)
    stranger = tmp_path / "stranger"
    generate_keys(stranger)
    # The stranger knows the server's public key but holds a key pair the server never authorized.
    (stranger / "server.key").write_bytes((good / "server.key").read_bytes())
    with PolicyServer(RecordingPolicy(), ServerConfig(LOCAL, keys_dir=good)) as server:
        with PolicyClient(server.endpoint, timeout_s=2.0, keys_dir=good) as ok:
            assert ok.infer(make_obs()).actions.shape == (10, 14)
        with PolicyClient(server.endpoint, timeout_s=0.5, keys_dir=stranger) as refused:
            with pytest.raises(ServerTimeout, match="CURVE"):
                refused.info()
        with PolicyClient(server.endpoint, timeout_s=0.5) as plain:
            with pytest.raises(ServerTimeout):
                plain.info()
        assert server.stats.received == 1  # only the authorized client's request got through


def test_generate_keys_refuses_to_overwrite_and_names_the_fix(tmp_path):
    generate_keys(tmp_path)
    with pytest.raises(Exception, match="--overwrite"):
        generate_keys(tmp_path)
    assert (tmp_path / "client.key_secret").stat().st_mode & 0o077 == 0


def test_binding_beyond_loopback_without_keys_warns(caplog, tmp_path):
    assert is_local_address("tcp://127.0.0.1:5555") and is_local_address("ipc:///tmp/x")
    assert not is_local_address("tcp://0.0.0.0:5555")
    with caplog.at_level(logging.WARNING):
        assert warn_if_exposed("tcp://0.0.0.0:5555", None)
    assert "tether keys generate" in caplog.text
    assert not warn_if_exposed("tcp://0.0.0.0:5555", tmp_path)
    assert not warn_if_exposed("tcp://127.0.0.1:5555", None)


def test_a_busy_port_gives_a_clear_error(server):
    from tether.core.errors import TetherError

    with pytest.raises(TetherError, match="cannot bind"):
        PolicyServer(RecordingPolicy(), ServerConfig(server.endpoint)).start()


def _unused(policy: Policy) -> None:  # keep the Policy import meaningful for type checkers
    del policy
