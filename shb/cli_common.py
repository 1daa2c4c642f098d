"""Options and error handling shared by every shb command."""

from __future__ import annotations

import functools
import sys

import click

from shb.errors import ShbError

DB_OPTION = click.option("--db", "db", envvar="SHB_DB", default=None, metavar="PATH",
                         help="results database (default: results.duckdb here, or $SHB_DB)")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def friendly(fn):
    """Turn shb's own errors into a message and an exit code (2 for usage errors), no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ShbError as exc:
            from rich.markup import escape

            # escape: messages quote user text and pip extras such as 'shb[figures]', which are not markup.
            _console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)

    return wrapper
