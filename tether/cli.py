"""The one `tether` command. This module only wires the command groups each part registers.

Every part owns a `cli.py` with `register(app)`; heavy imports (torch, mujoco) happen inside the
commands, so `tether --help` stays fast.
"""

from __future__ import annotations

import errno
import functools
import importlib
import logging
import sys
import traceback

import typer
from rich.console import Console
from rich.text import Text

from tether import __version__

# Each module defines register(app: typer.Typer) -> None.
COMMAND_MODULES = [
    "tether.app.commands.twin",  # tether twin view|check
    "tether.app.commands.record",  # tether record
    "tether.app.commands.data",  # tether inspect
    "tether.app.commands.train",  # tether train, serve, keys
    "tether.app.commands.rollout",  # tether rollout
    "tether.app.commands.hardware",  # tether find-ports, find-cameras
    "tether.app.commands.calibrate",  # tether calibrate ...
    "tether.app.commands.calibrate_units",  # tether calibrate units
    "tether.app.commands.calibrate_hand_eye",  # tether calibrate hand-eye
    "tether.app.commands.calibrate_twin",  # tether calibrate excite|twin
    "tether.app.commands.calibrate_latency",  # tether calibrate latency
    "tether.app.commands.eval",  # tether eval, demo
    "tether.app.commands.exchange",  # tether export, import
    "tether.app.commands.view",  # tether view (episodes in rerun, or HTML pages)
]

console = Console()
error_console = Console(stderr=True)


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
    _report_project_errors(app)
    return app


def _report_project_errors(app: typer.Typer) -> None:
    """Wrap every command (groups included) so a TetherError or OSError is one line and exit 2.

    The one place commands' project errors are turned into a message: `run` does the same for
    errors outside a command, and this also holds where the app is invoked without `run` (a
    test's CliRunner, typer's own entry point), so no command repeats an except block.
    """
    for command in app.registered_commands:
        if command.callback is not None and not hasattr(command.callback, "_tether_clean_errors"):
            command.callback = _clean_errors(command.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _report_project_errors(group.typer_instance)


def _clean_errors(command):
    from tether.core.errors import TetherError

    @functools.wraps(command)  # typer reads the signature through __wrapped__
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TetherError as exc:
            _maybe_traceback(exc, _verbose_requested())
            _print_error(str(exc))
            raise typer.Exit(2) from None
        except OSError as exc:  # permission, read-only, disk full, missing path: as in `run`
            _maybe_traceback(exc, _verbose_requested())
            _print_error(describe_os_error(exc))
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:  # an optional package imported inside the command
            from tether.core.optional import as_missing_extra

            missing = as_missing_extra(exc)
            if missing is None:
                raise
            _maybe_traceback(exc, _verbose_requested())
            _print_error(str(missing))
            raise typer.Exit(2) from None

    wrapper._tether_clean_errors = True
    return wrapper


def _verbose_requested() -> bool:
    # -v sets the root logger to DEBUG in `_root`, before any command runs.
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def main(argv: list[str] | None = None) -> None:
    """Run `tether` and turn whatever escapes a command into a message and an exit code.

    Commands raise; they do not print-and-exit. Here a project error (TetherError) and a file
    system error (OSError: permission, read-only, disk full, missing path) become one line that
    names the problem and the path, exit 2; Ctrl-C exits 130; anything else is a bug and shows
    its traceback only with -v (exit 1), so a user never has to read one to learn what to fix.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    verbose = any(arg in ("-v", "--verbose") for arg in args)
    raise SystemExit(run(args, verbose=verbose))


def run(args: list[str], verbose: bool = False, app: typer.Typer | None = None) -> int:
    """The exit code of `tether *args` (see `main`); usage errors are typer's (exit 2).

    `app` defaults to the real one; tests pass a small app to reach every branch.
    """
    from tether.core.errors import TetherError

    try:
        app = app or build_app()
        # standalone: typer formats usage errors and turns Ctrl-C into exit 130 itself.
        app(args=args, prog_name="tether", standalone_mode=True)
    except SystemExit as exc:
        if exc.code == 130:
            _print_error("interrupted (Ctrl-C).")
        if isinstance(exc.code, str):  # sys.exit("message"): show it as an error
            _print_error(exc.code)
            return 1
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        _print_error("interrupted (Ctrl-C).")
        return 130
    except TetherError as exc:
        _maybe_traceback(exc, verbose)
        _print_error(str(exc))
        return 2
    except OSError as exc:
        _maybe_traceback(exc, verbose)
        _print_error(describe_os_error(exc))
        return 2
    except Exception as exc:  # a bug: say so in one line, keep the traceback for -v
        _maybe_traceback(exc, verbose)
        cause = _file_error_cause(exc)
        if cause is not None:  # a library's own error raised `from` a file system error
            _print_error(f"{describe_os_error(cause)} ({type(exc).__name__}: {exc})")
            return 2
        hint = "" if verbose else " Run with -v for the traceback (tether -v ...)."
        _print_error(f"unexpected {type(exc).__name__}: {str(exc).rstrip('.')}.{hint}")
        return 1
    return 0


_OS_ERROR_FIXES = {
    errno.EACCES: "choose a location you can write to, or fix its permissions",
    errno.EPERM: "choose a location you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENOSPC: "the disk is full: free some space or choose another disk",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another disk",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "the path is a folder: give a file",
    errno.EEXIST: "remove it or choose another path",
}


def describe_os_error(exc: OSError) -> str:
    """One line naming what failed, on which path, and what to do (exc.filename when known)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = f": {' -> '.join(paths)}" if paths else ""
    fix = _OS_ERROR_FIXES.get(exc.errno or -1)
    return f"{reason}{where}" + (f" ({fix})." if fix else ".")


def _file_error_cause(exc: BaseException) -> OSError | None:
    """The OSError with a path that `exc` was explicitly raised from, if any.

    Only `__cause__` (raise ... from ...) counts: `__context__` may be an unrelated error that
    was handled before the real one happened."""
    seen: set[int] = set()
    current = exc.__cause__
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.filename is not None:
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def _print_error(message: str) -> None:
    # Plain text (no rich markup: a message may contain [brackets]) and no wrapping, so a path
    # in the message stays whole for whoever copies it or greps the log.
    error_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def _maybe_traceback(exc: BaseException, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)


if __name__ == "__main__":
    main()
