"""One module per `tether` command group; each defines `register(app)` (see tether/cli.py)."""
