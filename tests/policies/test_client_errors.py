"""Client errors that must be clear and immediate: a malformed endpoint, a missing key folder,
steps out of range, a request the server rejects, a close that must not hang; through the
public API and through `tether rollout` (a subprocess with a timeout, so a hang fails)."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from tether.core.errors import ConfigError, PolicyError
from tether.core.schema import ArraySpec
from tether.policies import protocol
from tether.policies.client import PolicyClient, ServerTimeout
from tether.policies.keys import generate_keys
from tether.policies.server import PolicyServer, ServerConfig
from tether.policies.simple import IdentityPolicy

LOCAL = "tcp://127.0.0.1:0"
TWIN_LIFT = (ArraySpec("state", "float32", (6,)),)  # what twin:lift observes that we need


class StepsPolicy(IdentityPolicy):
    """Holds the state; states 100 training steps like a diffusion checkpoint; may raise."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__(TWIN_LIFT, action_dim=6, chunk_size=5, fps=30.0)
        self.spec = dataclasses.replace(self.spec, extra={"num_train_steps": 100})
        self.fail = fail

    def _predict_chunk(self, observation, **options):
        if self.fail:
            raise PolicyError(self.fail)
        return super()._predict_chunk(observation)


def obs() -> dict[str, np.ndarray]:
    return {"state": np.zeros(6, np.float32)}


# --- public API --------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["localhost:5555", "127.0.0.1:5555", "http://x:1", "tcp://x"])
def test_a_malformed_endpoint_fails_at_once_naming_the_form(address):
    with pytest.raises(ConfigError, match=r"tcp://host:port or ipc://path"):
        PolicyClient(address)


def test_a_missing_key_folder_fails_at_once_naming_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist.*tether keys generate"):
        PolicyClient("tcp://127.0.0.1:5555", keys_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"server public key not found"):
        PolicyClient("tcp://127.0.0.1:5555", keys_dir=tmp_path / "empty")


def test_a_non_loopback_endpoint_without_curve_warns_once(caplog, tmp_path):
    address = "tcp://192.0.2.7:5555"  # TEST-NET-1: never routed, never connected to here
    with caplog.at_level(logging.WARNING, logger="tether.policies.client"):
        for _ in range(2):
            PolicyClient(address).close()
        PolicyClient("tcp://127.0.0.1:5555").close()
        generate_keys(tmp_path / "keys")
        PolicyClient("tcp://192.0.2.8:5555", keys_dir=tmp_path / "keys").close()
    warnings = [r for r in caplog.records if "without CURVE" in r.getMessage()]
    assert len(warnings) == 1 and address in warnings[0].getMessage()
    assert "tether keys generate" in warnings[0].getMessage()


def test_close_returns_for_every_state_of_the_client():
    def closes(make) -> None:
        client = make()
        done = threading.Event()
        threading.Thread(target=lambda: (client.close(), done.set()), daemon=True).start()
        assert done.wait(10.0), "close() hung"

    closes(lambda: PolicyClient("tcp://127.0.0.1:9"))  # never connected

    def after_timeout():
        client = PolicyClient("tcp://127.0.0.1:9", timeout_s=0.1)
        with pytest.raises(ServerTimeout):
            client.info()
        return client

    closes(after_timeout)

    def with_unsent():
        client = PolicyClient("tcp://127.0.0.1:9", timeout_s=0.1)  # nothing listens on port 9
        client.connect()
        return client

    closes(with_unsent)


def test_steps_out_of_range_are_refused_by_the_client_before_sending():
    with PolicyServer(StepsPolicy(), ServerConfig(LOCAL)) as server:
        with PolicyClient(server.endpoint, timeout_s=5.0) as client:
            client.info()
            for steps in (0, -1, 101, 2.5):
                with pytest.raises(protocol.MessageError, match=r"from 1 to 100") as err:
                    client.send_infer(obs(), steps=steps)
                assert err.value.retryable is False and err.value.code == "bad_field"
            assert client.pending == 0
            assert client.infer(obs(), steps=100).actions.shape == (5, 6)
        assert server.stats.received == 2  # info and the one valid infer: nothing else was sent


def test_a_rejected_request_is_a_non_retryable_remote_error_naming_the_range():
    with PolicyServer(StepsPolicy(), ServerConfig(LOCAL)) as server:
        with PolicyClient(server.endpoint, timeout_s=5.0) as client:
            # Without info() the client knows only the protocol's bound; the server knows 100.
            with pytest.raises(protocol.RemoteError, match=r"from 1 to 100") as err:
                client.infer(obs(), steps=150)
            assert err.value.code == "bad_field" and err.value.retryable is False
            assert client.infer(obs()).actions.shape == (5, 6)


def test_only_busy_and_full_errors_are_retryable():
    assert protocol.RemoteError("busy", "x").retryable
    assert protocol.RemoteError("too_many_clients", "x").retryable
    for code in ("bad_field", "bad_shape", "missing_array", "policy_error", "too_large"):
        assert not protocol.RemoteError(code, "x").retryable
    assert ServerTimeout("x").retryable


# --- through `tether rollout` ------------------------------------------------------------------


def rollout(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tether.cli", "rollout", "--robot", "twin:lift", "--lockstep",
           "--max-steps", "10", *args]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "egl"}
    # The timeout is the hang detector; a clear error comes long before it.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def _output(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines


def test_rollout_with_an_endpoint_without_scheme_errors_at_once():
    proc = rollout("--server", "localhost:5555")
    assert proc.returncode == 2, _output(proc)
    assert "tcp://host:port or ipc://path" in _output(proc) and "Traceback" not in _output(proc)


def test_rollout_with_a_missing_key_folder_errors_at_once(tmp_path):
    proc = rollout("--server", "tcp://127.0.0.1:5555", "--keys", str(tmp_path / "missing"))
    assert proc.returncode == 2, _output(proc)
    assert "does not exist" in _output(proc) and "tether keys generate" in _output(proc)


def test_rollout_steps_zero_names_the_range_and_sends_nothing():
    with PolicyServer(StepsPolicy(), ServerConfig(LOCAL)) as server:
        proc = rollout("--server", server.endpoint, "--steps", "0")
    text = _output(proc)
    assert proc.returncode == 2, text
    assert "from 1 to 100" in text and "check that the policy server is running" not in text
    assert server.stats.inferences == 0 and "Traceback" not in text


def test_rollout_raises_the_servers_policy_error_without_retrying():
    policy = StepsPolicy(fail="the model exploded on purpose")
    with PolicyServer(policy, ServerConfig(LOCAL)) as server:
        proc = rollout("--server", server.endpoint)
    text = _output(proc)
    assert proc.returncode == 2, text
    assert "the model exploded on purpose" in text and "policy_error" in text
    assert server.stats.errors["policy_error"] == 1  # raised at the first rejection


def test_rollout_to_nothing_listening_times_out_naming_the_address():
    proc = rollout("--server", "tcp://127.0.0.1:9", "--timeout", "0.3", "--connect-timeout", "1")
    text = _output(proc)
    assert proc.returncode == 2, text
    assert "tcp://127.0.0.1:9" in text and "tether serve" in text and "Traceback" not in text


# The warning for endpoints beyond loopback is checked through the API above, on a client that
# never connects: tests send traffic only to this machine's loopback addresses.


def test_the_first_contact_waits_for_a_server_that_is_still_starting(tmp_path):
    """`tether serve ... &` then `tether rollout`: the server binds seconds later (torch import,
    checkpoint load); the client's first contact must wait for it, not give up after --timeout."""
    address = f"ipc://{tmp_path / 'late.sock'}"
    result: dict = {}
    with PolicyClient(address, timeout_s=0.2) as client:
        waiter = threading.Thread(
            target=lambda: result.update(info=client.wait_for_server(deadline_s=60.0)), daemon=True
        )
        waiter.start()
        waiter.join(1.0)  # the client is now waiting (past several --timeout periods)
        assert waiter.is_alive() and "info" not in result
        with PolicyServer(StepsPolicy(), ServerConfig(address)):
            waiter.join(60.0)
            assert not waiter.is_alive(), "wait_for_server did not return once the server was up"
    assert result["info"].spec.extra["num_train_steps"] == 100


def test_the_first_contact_gives_up_at_its_deadline_naming_the_address():
    with PolicyClient("tcp://127.0.0.1:9", timeout_s=0.1) as client:
        with pytest.raises(ServerTimeout, match=r"tcp://127.0.0.1:9 within 1 s.*tether serve"):
            client.wait_for_server(deadline_s=1.0)
