"""tether find-ports / find-cameras / scan-bus / emulate-bus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tether.app.commands.hardware import register
from tether.robot.emulators import DynamixelBusEmulator

TETHER = str(Path(sys.executable).parent / "tether")


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_find_ports_and_cameras_print_json(cli):
    ports = cli("find-ports", "--json")
    assert ports.exit_code == 0, ports.output
    assert isinstance(json.loads(ports.output), list)
    cameras = cli("find-cameras", "--json")
    assert cameras.exit_code == 0, cameras.output
    assert isinstance(json.loads(cameras.output), list)


def test_scan_bus_lists_the_servos_that_answer(cli):
    with DynamixelBusEmulator({1: "xl330-m288", 2: "xm430-w350", 5: "xl430-w250"}) as bus:
        result = cli("scan-bus", "--port", bus.port, "--ids", "1-5", "--json", "--timeout-ms", "150")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [
        {"id": 1, "model_number": 1200, "model": "xl330-m288"},
        {"id": 2, "model_number": 1020, "model": "xm430-w350"},
        {"id": 5, "model_number": 1060, "model": "xl430-w250"},
    ]


def test_scan_bus_at_the_wrong_baudrate_finds_nothing(cli):
    with DynamixelBusEmulator([1]) as bus:
        result = cli("scan-bus", "--port", bus.port, "--ids", "1", "--baudrate", "57600")
    assert result.exit_code == 1
    assert "57600" in result.output


def test_emulate_bus_through_the_tether_command(cli):
    proc = subprocess.Popen(
        [TETHER, "emulate-bus", "--protocol", "feetech", "--ids", "1-3", "--duration", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/pts/")
        result = cli("scan-bus", "--port", port, "--protocol", "feetech", "--ids", "1-4", "--json",
                     "--timeout-ms", "150")
        assert result.exit_code == 0, result.output
        assert [s["id"] for s in json.loads(result.output)] == [1, 2, 3]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_bad_arguments_are_named(cli):
    result = cli("scan-bus", "--port", "/dev/null", "--protocol", "canbus")
    assert result.exit_code != 0
    assert "canbus" in str(result.exception) + result.output
    result = cli("emulate-bus", "--ids", "300")
    assert "0..252" in str(result.exception) + result.output


def test_commands_have_help_with_an_example():
    result = subprocess.run([TETHER, "find-ports", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "Example: tether find-ports" in result.stdout
