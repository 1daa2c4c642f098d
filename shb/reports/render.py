"""Render a polars frame as a rich table, JSON or CSV.

The table format is for reading at a terminal, so it rearranges what it prints (never the frame):
columns constant over the frame (model, dataset, judge, ...) move into the title, ``x_lo``/``x_hi``
beside ``x`` (as made by ``shb.reports.stats.with_wilson``) print as one ``0.72 [0.65, 0.78]``
cell, numbers print to a few significant digits, and when the table is wider than the terminal the
rows are grouped by their leading label columns and the least important columns are left out (the
caption names them; ``--wide``, json and csv give everything). Numbers are never cut.
"""

from __future__ import annotations

import json
import math
import os
import re

import polars as pl

FORMATS = ("table", "json", "csv")
FOLD = 16                                 # a text column may wrap down to this width
SIG = 3                                   # significant digits of a printed float
# label columns a reader compares rows by; constant ones go to the title, varying ones may group rows
LABEL_NAMES = ("model", "dataset", "ablation", "judge", "decoding", "format", "metric", "source", "suite",
               "head_source", "method", "result", "intervention", "status")
# columns whose name says they count things: whole values print without decimals (n = 32, not 32.0)
COUNT = re.compile(r"(^n$|^n_|_n$|count|tokens|params|prompts|steps?$|^k$)")
# columns that tell rows apart (which k, head set, method, task, measure): never left out to fit
KEY = re.compile(r"^(k|head_set|heads|method|task|measure|part|metric|metric_id|intervention|intervention_id|layer|"
                 r"head|step|draw|source|head_source)$")
# columns whose name says they are detail: left out first when a table does not fit
DETAIL = re.compile(r"(^n_|_n$|median|(^|_)max($|_)|(^|_)min($|_)|std|spread|seconds|version|commit|host|device|dtype|argv|path|"
                    r"sha|hash|started|ended|finished|created|error|spec|^unit_id$|^run_id$|chunks)")


def to_text(frame: pl.DataFrame, fmt: str, title: str | None = None, console=None, wide: bool = False) -> str | None:
    """Return JSON/CSV text (every column, full precision), or print a table fitted to the terminal
    (returns None). ``wide``: print every column as it is in the frame, however wide."""
    if fmt == "json":
        return json.dumps(frame.to_dicts(), indent=1, default=str)
    if fmt == "csv":
        return flat(frame).write_csv()
    if console is None:
        console = make_console()
    for renderable in tables(frame, title, width=None if wide else console.width, wide=wide):
        if wide:  # a console as wide as this table, writing where the caller's writes
            from rich.console import Console
            from rich.measure import Measurement

            probe = Console(width=100_000, file=console.file, color_system=console.color_system)
            need = Measurement.get(probe, probe.options, renderable).maximum
            Console(width=max(need, console.width), file=console.file, color_system=console.color_system,
                    force_terminal=console.is_terminal).print(renderable)
        else:
            console.print(renderable)
    return None


PIPE_WIDTH = 80                           # output to a pipe or file without COLUMNS: a page this wide


def make_console(stderr: bool = False):
    """A rich Console; output to a pipe or file without COLUMNS fits PIPE_WIDTH columns (as a terminal
    of the usual width would), so `shb report ... > file` reads the same; COLUMNS=N or --wide widen it."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH, stderr=stderr)
    return console


# -- numbers ---------------------------------------------------------------------------------------
def number(value, style: str | None = None) -> str:
    """A number as a reader wants it: ints whole (thousands separated from 100,000), floats to SIG
    significant digits without scientific notation between 0.001 and 100,000.

    ``style`` makes a column read alike (``column_style``): "grouped" separates thousands of every int,
    "plain" none, "sci" prints every float in scientific notation, "fixed" none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        grouped = style == "grouped" or (style is None and abs(value) >= 100_000)
        return f"{value:,}" if grouped else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        size = abs(value)
        if size == 0:
            return "0"
        if style == "sci" or (style != "fixed" and (size < 1e-3 or size >= 1e5)):
            return f"{value:.{SIG - 1}e}"
        digits = max(0, SIG - 1 - math.floor(math.log10(size)))
        return f"{value:.{digits}f}"
    return str(value)


def column_style(values) -> str | None:
    """One number format for a whole column: thousands grouped in every int when one needs it
    (212,992 beside 53,376, not 53376), and scientific notation for every float when one needs it."""
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    floats = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v) and v != 0]
    if ints and max(abs(v) for v in ints) >= 100_000:
        return "grouped"
    if floats and any(v < 1e-3 or v >= 1e5 for v in floats):
        return "sci"
    return "fixed" if floats else None


def _cell(value, style: str | None = None) -> str:
    import datetime
    import decimal

    if value is None:
        return "-"
    if isinstance(value, pl.Series):  # one cell of a list column (frame[name][0])
        value = value.to_list()
    if isinstance(value, (int, float)):
        return number(value, style)
    if isinstance(value, decimal.Decimal):
        return number(float(value))
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


# -- what a table shows ----------------------------------------------------------------------------
class Shown:
    """One printed column: its name, its cells as text, whether it is a number, its raw values."""

    def __init__(self, name: str, cells: list[str], numeric: bool, keys: list):
        self.name, self.cells, self.numeric, self.keys = name, cells, numeric, keys


def is_label(name: str, dtype) -> bool:
    """A column that names what a row is about (model, dataset, ...), not a measurement."""
    if dtype.is_numeric() or dtype == pl.Boolean:
        return False
    stem = name[:-3] if name.endswith("_id") else name
    return name.endswith("_id") or stem in LABEL_NAMES or stem.split("_")[0] in LABEL_NAMES


def intervals(frame: pl.DataFrame) -> dict[str, tuple[str, str]]:
    """{x: (lo, hi)}: ``x_lo``/``x_hi`` beside a numeric ``x``; bounds named by another prefix p
    (``with_wilson(..., prefix=p)``) go with the one numeric column named ``p_...`` or ``..._p``."""
    numeric = [name for name, dtype in frame.schema.items() if dtype.is_numeric()]
    out = {}
    if {"value", "lo", "hi"} <= set(numeric):  # bare bounds belong to the frame's `value` (shb report utility)
        out["value"] = ("lo", "hi")
    for lo in [n for n in numeric if n.endswith("_lo")]:
        prefix = lo[:-3]
        hi = f"{prefix}_hi"
        if hi not in numeric:
            continue
        if prefix in numeric:
            out[prefix] = (lo, hi)
            continue
        owners = [n for n in numeric if n not in (lo, hi) and not n.endswith(("_lo", "_hi"))
                  and (n.startswith(prefix + "_") or n.endswith("_" + prefix))]
        if len(owners) == 1 and owners[0] not in out:
            out[owners[0]] = (lo, hi)
    return out


def constant_columns(frame: pl.DataFrame) -> list[str]:
    """Columns with one value over every row (two rows at least, so a one-row table stays a table)."""
    if frame.height < 2:
        return []
    out = []
    for name in frame.columns:
        try:
            if frame[name].n_unique() == 1:
                out.append(name)
        except Exception:  # nested values polars cannot hash: leave them in the table
            pass
    return out


def shown_columns(frame: pl.DataFrame, lift: bool = True) -> tuple[list[Shown], list[tuple[str, str]]]:
    """The columns to print and the (name, value) pairs lifted into the title."""
    pairs = intervals(frame)
    bounds = {b for pair in pairs.values() for b in pair}
    # Only what names the rows (labels) and counts move to the title: a measurement stays in its column
    # even where every row has the same value (the demo's ablated ASR is 1.0 at k = 1 and k = 2).
    lifted_names = [n for n in constant_columns(frame) if n not in bounds and n not in pairs
                    and (is_label(n, frame.schema[n]) or COUNT.search(n) or not frame.schema[n].is_numeric()
                         and not n.endswith("]"))] if lift else []
    if len(lifted_names) >= len([n for n in frame.columns if n not in bounds]):
        lifted_names = lifted_names[:-1]  # never lift every column: something must stay in the table
    lifted = [(n, _cell(_as_count(frame[n][0]) if COUNT.search(n) or isinstance(frame.schema[n], pl.Decimal)
                        else frame[n][0])) for n in lifted_names]
    shown = []
    for name, dtype in frame.schema.items():
        if name in bounds or name in lifted_names:
            continue
        values = frame[name].to_list()
        if name in pairs:
            lo, hi = (frame[b].to_list() for b in pairs[name])
            style = column_style([*values, *lo, *hi])
            cells = [_cell(v, style) if v is None or a is None or b is None
                     else f"{_cell(v, style)} [{_cell(a, style)}, {_cell(b, style)}]" for v, a, b in zip(values, lo, hi)]
        elif (isinstance(dtype, pl.Decimal) or COUNT.search(name)) and _whole(values):  # n = 32.0 is a count
            counts = [None if v is None else int(v) for v in values]
            cells = [_cell(v, column_style(counts)) for v in counts]
        else:
            style = column_style(values)
            cells = [_cell(v, style) for v in values]
        shown.append(Shown(name, cells, dtype.is_numeric(), values))
    return shown, lifted


def _whole(values) -> bool:
    """Every value a whole number of modest size (and at least one is given)."""
    import decimal

    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (float, decimal.Decimal)) and v == v and abs(v) < 1e15 and v == int(v)
                                 for v in present)


def _as_count(value):
    return int(value) if _whole([value]) else value


def title_lines(title: str | None, lifted: list[tuple[str, str]], width: int | None = 80) -> list[str]:
    """The title, then the lifted ``name: value`` pairs packed into lines (an item is never split;
    all-missing columns are not worth a line)."""
    lines = [title] if title else []
    return lines + pack([f"{name}: {value}" for name, value in lifted if value not in ("-", "")], width)


def pack(items: list[str], width: int | None, sep: str = " · ") -> list[str]:
    """Join ``items`` with ``sep`` into lines no wider than ``width`` (an item longer stays whole)."""
    lines: list[str] = []
    for item in items:
        if lines and (width is None or len(lines[-1]) + len(sep) + len(item) <= width):
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines


def tables(frame: pl.DataFrame, title: str | None = None, width: int | None = 80, wide: bool = False) -> list:
    """The rich renderables that show ``frame``: a heading, then one table per group of rows.

    ``width`` None: every column at full width (``--wide``). Otherwise, in order, until it fits:
    headers break at underscores, rows are grouped by leading label columns (a heading per group),
    detail columns then trailing columns are left out (named in a caption)."""
    from rich.text import Text

    shown, lifted = shown_columns(frame, lift=not wide)
    out = [Text(line, style="bold" if i == 0 and title else "")
           for i, line in enumerate(title_lines(title, lifted, width))]
    if frame.is_empty():
        return out + [Text("(no rows)")]
    if width is None:
        return out + [_table(shown, range(frame.height), split_headers=False)]
    split = not _fits(shown, range(frame.height), width, False)
    groups, shown = _group(frame, shown, width, split)
    dropped = []
    while not all(_fits(shown, rows, width, split) for _, rows in groups) and len(shown) > 2:
        victim = _least_important(shown, groups)
        if victim is None:  # only what tells rows apart is left: it stays, and text wraps instead
            break
        dropped.append(victim.name)
        shown = [c for c in shown if c is not victim]
    for heading, rows in groups:
        for line in pack(heading, width):
            out.append(Text(line, style="bold"))
        out.append(_table(shown, rows, split))
    if dropped:
        out.append(Text(f"left out to fit {width} columns: {', '.join(dropped)} ({_how_to_see_all()})", style="dim"))
    return out


def _table(shown: list[Shown], rows, split_headers: bool):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in shown:
        header = col.name.replace("_", "\n") if split_headers else col.name
        if col.numeric:
            longest = max((len(col.cells[r]) for r in rows), default=1)
            table.add_column(header, justify="right", no_wrap=True, overflow="ignore", min_width=longest)
        else:
            table.add_column(header, justify="left", overflow="fold")
    for r in rows:
        table.add_row(*[col.cells[r] for col in shown])
    return table


def _fits(shown: list[Shown], rows, width: int, split: bool) -> bool:
    """Whether the table needs no more than ``width`` columns with no cell folded."""
    rows = list(rows)
    need = 0
    for col in shown:
        head = max(len(w) for w in col.name.split("_")) if split else len(col.name)
        cells = [col.cells[r] for r in rows]
        if col.numeric:
            body = max(len(c) for c in cells)
        else:  # text may wrap between words, down to FOLD characters a line
            body = min(max(len(c) for c in cells), max([FOLD] + [len(w) for c in cells for w in c.split()]))
        need += max(head, body) + 3
    return need - 3 <= width


def _group(frame: pl.DataFrame, shown: list[Shown], width: int, split: bool):
    """Group rows by label columns (fewest distinct values first) while the table does not fit and
    groups keep 2+ rows."""
    all_rows = range(frame.height)
    if _fits(shown, all_rows, width, split):
        return [([], all_rows)], shown
    keys: list[Shown] = []
    # Label columns with the fewest distinct values first (decoding, format, ...), wherever they stand.
    labels = [c for c in shown if is_label(c.name, frame.schema[c.name])]
    labels.sort(key=lambda c: len(set(c.cells)))
    for col in labels:
        trial = keys + [col]
        n_groups = len({tuple(c.cells[r] for c in trial) for r in all_rows})
        if n_groups > max(1, frame.height // 2):
            break
        keys = trial
        if _fits([c for c in shown if c not in keys], all_rows, width, split):
            break
    if not keys:
        return [([], all_rows)], shown
    groups: dict[tuple, list[int]] = {}
    for r in all_rows:
        groups.setdefault(tuple(c.cells[r] for c in keys), []).append(r)
    named = [([f"{c.name}: {v}" for c, v in zip(keys, key) if v not in ("-", "")], rows) for key, rows in groups.items()]
    return named, [c for c in shown if c not in keys]


def _how_to_see_all() -> str:
    """Name --wide only where the running command has it."""
    try:
        import click

        ctx = click.get_current_context(silent=True)
    except ImportError:
        ctx = None
    has_wide = ctx is not None and any(p.name == "wide" for p in ctx.command.params)
    return ("--wide or " if has_wide else "") + "--format json/csv show every column"


def _identifies(col: Shown, shown: list[Shown], groups) -> bool:
    """Whether leaving ``col`` out would make two rows of a group look alike in what names them
    (the key and label columns that stay)."""
    names = [c for c in shown if c is not col and (KEY.match(c.name) or not c.numeric)]
    for _, rows in groups:
        with_col = {tuple(c.cells[r] for c in [*names, col]) for r in rows}
        without = {tuple(c.cells[r] for c in names) for r in rows}
        if len(without) < len(with_col):
            return True
    return False


def _least_important(shown: list[Shown], groups=None) -> Shown | None:
    """What a too-wide table gives up first: detail columns (counts, medians, versions, ...), then labels
    after the first two columns, then other numbers, rightmost first. Never the measurements with an
    interval (the numbers a table is for), nor a column that tells rows apart (``KEY``: k, head set,
    method, task, measure, ...; or a label without which two rows would read alike): None when only
    those are left."""
    groups = groups if groups is not None else [([], range(len(shown[0].cells) if shown else 0))]
    allowed = [c for c in shown if not KEY.match(c.name) and not (not c.numeric and _identifies(c, shown, groups))]
    detail = [c for c in allowed if DETAIL.search(c.name) or c.name in ("se", "sd")]
    if detail:
        return detail[-1]
    primary = [c for c in allowed if any(" [" in cell for cell in c.cells)]
    first = shown[:1]
    labels = [c for c in allowed if c not in shown[:2] and not c.numeric and c not in primary]
    rest = [c for c in allowed if c not in first and c not in primary]
    pick = labels or rest
    return pick[-1] if pick else None


def flat(frame: pl.DataFrame) -> pl.DataFrame:
    """CSV has no nested values: lists become comma-joined text, structs JSON."""
    columns = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, (pl.List, pl.Array)):
            columns.append(pl.col(name).cast(pl.List(pl.String)).list.join(",").alias(name))
        elif isinstance(dtype, pl.Struct):
            columns.append(pl.col(name).struct.json_encode().alias(name))
    return frame.with_columns(columns) if columns else frame


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
    """Raise a UsageError (exit 2) naming what is missing and what to run when ``frame`` is empty.

    ``params``: the filters given, as {flag: value} (named in the message as ``--flag value``) or a
    list of values; filters not given (None, empty) are not mentioned."""
    if frame.is_empty():
        from shb.errors import UsageError

        def given(value):
            return value is not None and not (isinstance(value, (list, tuple)) and not value)

        def text(value):
            return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

        if isinstance(params, dict):
            shown = [f"{flag} {text(v)}" for flag, v in params.items() if given(v)]
        else:
            shown = [text(v) for v in params if given(v)]
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
    # Parameters at their neutral value say nothing (temperature 1, top_p 1, top_k 0, one sample).
    neutral = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "n": 1}
    shown = {k: v for k, v in spec.items() if k not in neutral or v != neutral[k]}
    return " ".join([mode] + [f"{k}={v}" for k, v in sorted(shown.items())])


def with_decoding_label(frame: pl.DataFrame, column: str = "decoding") -> pl.DataFrame:
    """Replace a JSON decoding column by its short label (see decoding_label)."""
    if column not in frame.columns:
        return frame
    labels = {v: decoding_label(v) for v in frame[column].unique().to_list()}
    return frame.with_columns(pl.col(column).replace_strict(labels, return_dtype=pl.String))
