"""The one `tether` command. This module only wires the command groups each part registers.

Every part owns a `cli.py` with `register(app)`; heavy imports (torch, mujoco) happen inside the
commands, so `tether --help` stays fast.
"""

from __future__ import annotations

import importlib
import logging

import typer
from rich.console import Console

from tether import __version__

# Each module defines register(app: typer.Typer) -> None.
COMMAND_MODULES = [
    "tether.robot.twin.cli",  # tether twin view|check
    "tether.teleop.cli",  # tether record
    "tether.data.cli",  # tether inspect
    "tether.policies.cli",  # tether train, serve, keys
    "tether.robot.cli",  # tether rollout
    "tether.robot.drivers.cli",  # tether find-ports, find-cameras
    "tether.calibration.cli",  # tether calibrate ...
    "tether.eval.cli",  # tether eval, demo
]

console = Console()


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"tether {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="tether",
        help=(
            "tether: record demonstrations, train ACT / Diffusion Policy, serve them over ZMQ, "
            "and evaluate on a MuJoCo twin.\n\nExample: tether demo"
        ),
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_show_locals=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    ) -> None:
        # Progress and results are shown with rich; logs are for problems unless -v asks for more.
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if verbose:
            logging.getLogger("OpenGL").setLevel(logging.WARNING)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    return app


def main() -> None:
    from tether.errors import TetherError

    app = build_app()
    try:
        app(standalone_mode=True)
    except TetherError as exc:  # pragma: no cover - typer normally exits before this
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
