"""Self-contained HTML: tables plus figures embedded as base64 PNG, sortable by a header click.

One page per report (``shb report X --format html``) or one page for a whole database (``shb report
html``). Nothing is fetched: styles, the small sorting script and the images are all inline, so the
file opens offline and can be mailed as it is. Cells print as in the terminal tables (intervals
``0.72 [0.65, 0.78]``, a few significant digits; see shb.reports.render) while sorting uses the raw
values. No torch here.
"""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone

import polars as pl

from shb.reports import render

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.3em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: nowrap; }
th:hover { background: #e2e8f0; }
.wide { max-width: 100%; overflow-x: auto; width: fit-content; margin: 0.3em 0 1.5em; }
.wide table { margin: 0; }
.scroll { max-height: 32em; max-width: 100%; overflow: auto; width: fit-content; margin: 0.3em 0 1.5em;
          border: 1px solid #ddd; }
.scroll table { margin: 0; } .scroll th { position: sticky; top: 0; }
th.asc::after { content: " \\25B2"; font-size: 0.7em; } th.desc::after { content: " \\25BC"; font-size: 0.7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
img { max-width: 100%; height: auto; display: block; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; margin: 0.5em 0 1.5em; }
figure { margin: 0; max-width: 100%; } figcaption { color: #666; font-size: 0.75em; }
.note, .constant { color: #666; font-size: 0.85em; }
.skipped { color: #a05a00; }
nav a { margin-right: 1em; }
section.report { border-top: 2px solid #ddd; margin-top: 2em; }
"""

LONG = 25   # rows beyond which a table scrolls in a box of its own

# Click a header: sort that table's rows by the column (numbers by value, text naturally; missing
# values last); click again to reverse.
SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
    var asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
    th.classList.add(asc ? 'asc' : 'desc');
    var numeric = th.classList.contains('num');
    var key = function (row) {
      var td = row.cells[i];
      return td.hasAttribute('data-v') ? td.getAttribute('data-v') : td.textContent;
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === '' || y === '') { return x === y ? 0 : (x === '' ? 1 : -1); }
      var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y, undefined, {numeric: true});
      return asc ? c : -c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def table(frame: pl.DataFrame) -> str:
    """A sortable table of ``frame``: constant columns as a line above it, intervals merged."""
    shown, lifted = render.shown_columns(frame)
    parts = []
    if lifted:
        parts.append('<p class="constant">' + " · ".join(
            f"<b>{html.escape(name)}</b>: {html.escape(value)}" for name, value in lifted) + "</p>")
    head = "".join(f'<th class="num">{html.escape(c.name)}</th>' if c.numeric else f"<th>{html.escape(c.name)}</th>"
                   for c in shown)
    rows = []
    for r in range(frame.height):
        cells = []
        for c in shown:
            text = html.escape(c.cells[r])
            if c.numeric:
                raw = c.keys[r]
                key = "" if raw is None or (isinstance(raw, float) and raw != raw) else repr(raw)
                cells.append(f'<td class="num" data-v="{key}">{text}</td>')
            else:
                cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    grid = f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    # a long table scrolls in its own box (header kept in view) so the figures stay near the top; any table
    # wider than the window scrolls sideways inside itself, never the whole page
    parts.append(f'<div class="{"scroll" if frame.height > LONG else "wide"}">{grid}</div>')
    return "".join(parts)


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _sections(sections: list[tuple[str, object]], level: int = 2) -> list[str]:
    """Tables and text one after another; consecutive figures side by side, each under its name."""
    body, figures = [], []

    def flush():
        if figures:
            body.append('<div class="figures">' + "".join(figures) + "</div>")
            figures.clear()

    for heading, content in sections:
        if isinstance(content, (bytes, bytearray)):
            figures.append(f"<figure>{image(bytes(content), heading)}<figcaption>{html.escape(heading)}"
                           "</figcaption></figure>")
            continue
        flush()
        body.append(f"<h{level}>{html.escape(heading)}</h{level}>")
        if isinstance(content, pl.DataFrame):
            body.append(table(content) if not content.is_empty() else '<p class="note">(no rows)</p>')
        else:
            body.append(f"<p>{html.escape(str(content))}</p>")
    flush()
    return body


def _stamp(note: str | None) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f'<p class="note">generated by shb report on {stamp}' + (f"; {html.escape(note)}" if note else "") + "</p>"


def _document(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}<script>{SCRIPT}</script></body></html>\n")


def page(title: str, sections: list[tuple[str, object]], note: str | None = None) -> str:
    """sections: (heading, content) where content is a polars frame, PNG bytes, or plain text."""
    return _document(title, [f"<h1>{html.escape(title)}</h1>", _stamp(note), *_sections(sections)])


def anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "report"


def book(title: str, reports: list[dict], note: str | None = None) -> str:
    """One page for many reports: a contents line, then per report its title and sections, or the
    reason it was skipped. ``reports``: dicts {name, title, sections, note, skipped}."""
    links = " ".join(f'<a href="#{anchor(r["name"])}">{html.escape(r["name"])}</a>' for r in reports)
    body = [f"<h1>{html.escape(title)}</h1>", _stamp(note), f"<nav>{links}</nav>"]
    for r in reports:
        title = r.get("title") or ""
        heading = title if title.lower().startswith(r["name"].lower()) else f'{r["name"]}: {title}'
        body.append(f'<section class="report" id="{anchor(r["name"])}"><h2>{html.escape(heading)}</h2>')
        if r.get("skipped"):
            body.append(f'<p class="skipped">skipped: {html.escape(r["skipped"])}</p>')
        else:
            if r.get("note"):
                body.append(f'<p class="note">{html.escape(r["note"])}</p>')
            body.extend(_sections(r["sections"], level=3))
        body.append("</section>")
    return _document(title, body)
