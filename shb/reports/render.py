"""Render a polars frame as a rich table, JSON or CSV."""

from __future__ import annotations

import json

import polars as pl

FORMATS = ("table", "json", "csv")


def to_text(frame: pl.DataFrame, fmt: str, title: str | None = None, console=None) -> str | None:
    """Return JSON/CSV text, or print a rich table (returns None)."""
    if fmt == "json":
        return json.dumps(frame.to_dicts(), indent=1, default=str)
    if fmt == "csv":
        return flat(frame).write_csv()
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name, dtype in frame.schema.items():
        table.add_column(name, justify="right" if dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*[_cell(v) for v in row])
    if console is None:
        import os

        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(width=220)  # piped output: wide tables stay readable instead of folding at 80
    console.print(table)
    return None


def flat(frame: pl.DataFrame) -> pl.DataFrame:
    """CSV has no nested values: lists become comma-joined text, structs JSON."""
    columns = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, (pl.List, pl.Array)):
            columns.append(pl.col(name).cast(pl.List(pl.String)).list.join(",").alias(name))
        elif isinstance(dtype, pl.Struct):
            columns.append(pl.col(name).struct.json_encode().alias(name))
    return frame.with_columns(columns) if columns else frame


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def where(**filters) -> tuple[str, list]:
    """A SQL WHERE body and its parameters from column=value filters; a list value means IN (...).

    None (or an empty list) means no filter on that column. Column names come from code, never
    from users, so only the values are parameters.
    """
    clauses, params = [], []
    for column, value in filters.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if isinstance(value, (list, tuple)):
            clauses.append(f"{column} IN ({', '.join('?' * len(value))})")
            params.extend(value)
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" AND ".join(clauses) or "TRUE"), params


def require(frame: pl.DataFrame, what: str, how: str, params=()) -> pl.DataFrame:
    """Raise a UsageError (exit 2) naming what is missing and what to run when ``frame`` is empty."""
    if frame.is_empty():
        from shb.errors import UsageError

        shown = [", ".join(map(str, p)) if isinstance(p, (list, tuple)) else str(p) for p in params if p is not None]
        filters = f" (filters: {'; '.join(shown)})" if shown else ""
        raise UsageError(f"no {what} in the database{filters}; {how}")
    return frame


def decoding_label(text: str | None) -> str | None:
    """A short label for a stored decoding spec (JSON text): 'greedy', 'sample top_k=5 temperature=1'."""
    if text is None:
        return None
    try:
        spec = json.loads(text) if isinstance(text, str) else dict(text)
    except (TypeError, ValueError):
        return str(text)
    mode = spec.pop("mode", "?")
    spec.pop("seed", None)  # a seed changes samples, not the kind of decoding a reader compares
    return " ".join([mode] + [f"{k}={v}" for k, v in sorted(spec.items())])


def with_decoding_label(frame: pl.DataFrame, column: str = "decoding") -> pl.DataFrame:
    """Replace a JSON decoding column by its short label (see decoding_label)."""
    if column not in frame.columns:
        return frame
    labels = {v: decoding_label(v) for v in frame[column].unique().to_list()}
    return frame.with_columns(pl.col(column).replace_strict(labels, return_dtype=pl.String))
