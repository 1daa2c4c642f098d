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
    (console or Console()).print(table)
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
