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


def test_every_command_turns_project_and_file_errors_into_one_line_and_exit_2():
    """One wrapper (tether.cli._report_project_errors) instead of an except block per command:
    it holds for commands in groups too, and without `run` (CliRunner, typer's entry point)."""
    import typer

    from tether.cli import _report_project_errors
    from tether.core.errors import ConfigError

    app = typer.Typer()
    group = typer.Typer()
    app.add_typer(group, name="group")

    @app.command()
    def config() -> None:
        raise ConfigError("fps must be a number; got 'fast'. Use --set fps=30.")

    @group.command()
    def disk() -> None:
        raise PermissionError(13, "Permission denied", "/data/x.zarr")

    _report_project_errors(app)
    _report_project_errors(app)  # idempotent: build_app may run more than once
    first = runner.invoke(app, ["config"])
    assert first.exit_code == 2 and "error: fps must be a number" in first.output
    second = runner.invoke(app, ["group", "disk"])
    assert second.exit_code == 2 and "Permission denied: /data/x.zarr" in second.output
    assert "Traceback" not in first.output + second.output
