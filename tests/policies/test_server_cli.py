"""`tether serve` (as a real process, stopped with Ctrl-C) and `tether keys generate`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from tether.cli import build_app
from tether.policies.client import PolicyClient


def _app() -> typer.Typer:
    return build_app()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_a_simple_policy_for_a_twin_and_stops_on_ctrl_c():
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.cli", "serve", "simple:hold", "--robot", "twin:lift",
         "--bind", endpoint, "--chunk-size", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )  # fmt: skip
    try:
        banner = ""
        while "serving" not in banner:  # the server announces itself once it listens
            line = proc.stdout.readline()
            assert line, f"tether serve exited early: {banner}"
            banner += line
        assert "serving identity" in banner and endpoint in banner
        with PolicyClient(endpoint, timeout_s=5.0) as client:
            spec = client.info().spec
            assert spec.policy_type == "identity" and spec.chunk_size == 20
            assert [a.name for a in spec.observation] == ["state", "image.top"]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert "Traceback" not in output


def test_serve_with_a_missing_checkpoint_exits_2_with_a_hint():
    result = CliRunner().invoke(_app(), ["serve", "no/such/run"])
    assert result.exit_code == 2
    assert "neither a checkpoint path nor simple:<name>" in result.output


def test_serve_simple_policy_without_robot_names_the_option():
    result = CliRunner().invoke(_app(), ["serve", "simple:hold"])
    assert result.exit_code == 2 and "--robot" in result.output


def test_keys_generate_writes_both_pairs_and_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    result = runner.invoke(_app(), ["keys", "generate", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == [
        "authorized_clients",
        "client.key",
        "client.key_secret",
        "server.key",
        "server.key_secret",
    ]
    again = runner.invoke(_app(), ["keys", "generate", str(tmp_path / "k")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    second = runner.invoke(_app(), ["keys", "generate", str(tmp_path / "k"), "--client", "robot2"])
    assert second.exit_code == 0
    assert len(list((tmp_path / "k" / "authorized_clients").glob("*.key"))) == 2


@pytest.mark.parametrize("name", ["server", "bad name"])
def test_keys_generate_rejects_bad_client_names(tmp_path, name):
    result = CliRunner().invoke(_app(), ["keys", "generate", str(tmp_path), "--client", name])
    assert result.exit_code == 2 and "identifier" in result.output
