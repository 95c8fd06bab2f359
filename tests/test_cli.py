"""The one `tether` command: version, help listing every group, clean errors."""

import subprocess
import sys

from typer.testing import CliRunner

from tether import __version__
from tether.cli import build_app

runner = CliRunner()


def test_version():
    result = runner.invoke(build_app(), ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_command_groups():
    result = runner.invoke(build_app(), ["--help"])
    assert result.exit_code == 0
    for command in ["twin", "record", "inspect", "train", "serve", "rollout", "eval", "demo"]:
        assert command in result.output, f"`tether --help` does not list '{command}'"


def test_every_command_has_help_with_an_example():
    app = build_app()
    import typer.main

    group = typer.main.get_command(app)
    missing = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None) or {name: command}
        for sub_name, sub in subcommands.items():
            if "xample" not in (sub.help or ""):
                missing.append(f"{name} {sub_name}".strip())
    assert not missing, f"commands without an example in --help: {missing}"


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "tether" in out.stdout
