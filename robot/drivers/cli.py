"""CLI commands for hardware discovery: find-ports, find-cameras (wired by tether/cli.py)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
