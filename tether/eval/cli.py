"""CLI commands of this part (wired into `tether` by tether/cli.py)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `tether` app."""
