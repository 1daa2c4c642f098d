"""Options and error handling shared by every shb command.

One error path: every ``ShbError`` and every expected operating-system or library failure becomes a
one-line ``error: ...`` on stderr and an exit code (2: usage, 1: runtime). The traceback is shown only
with ``shb -v`` (or ``SHB_TRACEBACK=1``); a user's mistake never prints Python's or transformers' stack.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from shb.errors import ShbError

DB_OPTION = click.option("--db", "db", envvar="SHB_DB", default=None, metavar="PATH",
                         help="results database (default: results.duckdb here, or $SHB_DB)")

# Set by ``shb -v`` (the group option); commands with their own -v/--verbose also turn it on.
TRACEBACKS = {"on": False}
# OS errors that mean a path the user gave is wrong: usage errors.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def error_line(exc: BaseException) -> tuple[str, int]:
    """(message, exit code) for an exception that reached the command line."""
    if isinstance(exc, ShbError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc) or type(exc).__name__
        where = f": {exc.filename}" if exc.filename else ""
        extra = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
        return f"{what}{where}{extra}", 2 if isinstance(exc, _PATH_ERRORS) else 1
    if isinstance(exc, MemoryError):
        return "out of memory: lower batch_size in the suite's defaults, or use a smaller model", 1
    first = (str(exc).strip().splitlines() or [""])[0]
    module = type(exc).__module__.split(".")[0]
    if module == "duckdb":
        return f"database error: {first}", 1
    if isinstance(exc, ImportError):
        return f"{first} (a dependency is missing: reinstall shb, e.g. pip install -e '.[dev]')", 1
    name = type(exc).__name__
    return f"unexpected {name}: {first} (rerun as `shb -v ...` for the traceback, and please report it)", 1


def _print_error(message: str) -> None:
    from rich.markup import escape

    # escape: messages quote user text and pip extras such as 'shb[figures]', which are not markup.
    console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)


def friendly(fn):
    """Turn errors into a message and an exit code, with the traceback only when asked for."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            _print_error("interrupted")
            sys.exit(130)
        except SystemExit:
            raise
        except Exception as exc:  # noqa: BLE001 (the one place that turns any failure into a message)
            if TRACEBACKS["on"] or kwargs.get("verbose") or os.environ.get("SHB_TRACEBACK"):
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            message, code = error_line(exc)
            _print_error(message)
            sys.exit(code)

    return wrapper
