"""What the report commands print: tables that fit 80 columns with every number whole, intervals
and constant columns folded into the layout, consistent options, and the HTML pages.

The database is the synthetic one of test_reports (real DuckDB, schema-correct rows, no model)."""

from __future__ import annotations

import json
import os
import re

import polars as pl
import pytest
from click.testing import CliRunner

from shb.reports import render
from shb.reports.cli import report
from shb.store import Store
from tests.unit.test_reports import fill

REPORTS = sorted(n for n in report.commands if n != "html")
ARGS = {"overlap": ["--top", "4"]}
# reports whose terminal view shows only some of the JSON's numbers (the rest: --format json/csv)
TABLE_FIELDS = {"utility": ("value", "change")}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("render") / "results.duckdb"
    with Store(path) as store:
        fill(store)
    return path


def _cli(*args, columns=80):
    from shb.cli import main

    result = CliRunner().invoke(main, list(args), env={"COLUMNS": str(columns)}, catch_exceptions=False)
    return result


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]\d+)?", text))


@pytest.mark.parametrize("name", REPORTS)
def test_every_report_fits_80_columns_with_whole_numbers(db, name):
    out = _cli("report", name, "--db", str(db), *ARGS.get(name, []))
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, "\n".join(l for l in lines if len(l) > 80)
    assert "…" not in out.output
    # every number of the json rows that the table shows is printed whole (as render.number writes it)
    rows = json.loads(_cli("report", name, "--db", str(db), *ARGS.get(name, []), "--format", "json").output)
    rows = next(iter(rows.values())) if isinstance(rows, dict) else rows
    printed = _numbers(out.output)
    fields = TABLE_FIELDS.get(name)
    floats = [v for r in rows for key, v in r.items()
              if isinstance(v, float) and v == v and (fields is None or key in fields)]
    # a column prints in one format (render.column_style): plain, or scientific for every value of it
    shown = [{render.number(v, style) for style in (None, "sci", "fixed")} for v in floats]
    if shown:  # most values are in the default table; a whole number never shows as a prefix of itself
        assert sum(bool(s & printed) for s in shown) >= len(shown) // 2, (name, shown[:10], sorted(printed)[:30])


def test_wide_shows_every_column(db):
    narrow = _cli("report", "runs", "--db", str(db)).output
    wide = _cli("report", "runs", "--db", str(db), "--wide").output
    for column in ("suite_sha256", "hostname", "torch_version"):
        assert column in wide
    assert "suite_sha256" not in narrow


def test_number_formatting():
    assert render.number(0.723456) == "0.723"
    assert render.number(1.3912) == "1.39"
    assert render.number(123.456) == "123"
    assert render.number(3.2e-06) == "3.20e-06"
    assert render.number(0.0) == "0"
    assert render.number(6_738_415_616) == "6,738,415,616"
    assert render.number(42) == "42"


def test_intervals_and_constants_fold_into_the_layout():
    frame = pl.DataFrame({"model_id": ["m", "m"], "judge_id": ["j", "j"], "k": [1, 2], "asr": [0.72, 0.5],
                          "asr_lo": [0.65, 0.41], "asr_hi": [0.78, 0.59]})
    shown, lifted = render.shown_columns(frame)
    assert lifted == [("model_id", "m"), ("judge_id", "j")]
    assert [c.name for c in shown] == ["k", "asr"]
    assert shown[1].cells == ["0.720 [0.650, 0.780]", "0.500 [0.410, 0.590]"]
    one_row, lifted = render.shown_columns(frame.head(1))
    assert not lifted and len(one_row) == 4   # a single row stays a table


def test_a_wide_table_groups_rows_then_leaves_out_detail_columns():
    frame = pl.DataFrame({"model_id": ["model-" + "a" * 20] * 3 + ["model-" + "b" * 20] * 3,
                          "score": [0.123456, 0.2, 0.3, 0.4, 0.5, 0.6],
                          **{f"median_{i}": [1.23456] * 5 + [2.0] for i in range(12)}})
    from rich.console import Console

    console = Console(width=60, record=True, file=open("/dev/null", "w"))
    render.to_text(frame, "table", title="t", console=console)
    text = console.export_text()
    assert "model_id: model-aaaa" in text and "model_id: model-bbbb" in text   # group headings
    assert "left out to fit 60 columns" in text and "0.123" in text
    assert max(len(line) for line in text.splitlines()) <= 60


@pytest.mark.parametrize("name,value", [("ships", "-5"), ("overlap", "0"), ("overlap", "x")])
def test_top_is_checked_the_same_way(db, name, value):
    out = _cli("report", name, "--db", str(db), "--top", value)
    assert out.exit_code == 2 and "Invalid value for '--top'" in out.output


def test_ships_top_zero_means_every_head(db):
    rows = json.loads(_cli("report", "ships", "--db", str(db), "--top", "0", "--format", "json").output)
    assert len(rows) == 3 * 12


def test_missing_data_message_names_only_given_filters(tmp_path):
    path = tmp_path / "empty.duckdb"
    Store(path).close()
    out = _cli("report", "overlap", "--db", str(path))
    assert out.exit_code == 2 and "filters" not in out.output
    out = _cli("report", "overlap", "--db", str(path), "--model", "toy-a")
    assert "--model toy-a" in out.output and "; ;" not in out.output


def test_html_book_has_every_report_and_skips_empty_ones(db, tmp_path):
    page_path = tmp_path / "all.html"
    assert _cli("report", "html", "--db", str(db), "--out", str(page_path)).exit_code == 0
    page = page_path.read_text()
    for name in REPORTS:
        assert f'id="{name}"' in page
    assert page.count('<table class="sortable"') >= len(REPORTS)
    assert "data:image/png;base64," in page
    assert not re.search(r'(src|href)="(https?:)?//', page)   # nothing fetched from a network
    empty = tmp_path / "empty.duckdb"
    Store(empty).close()
    page_path = tmp_path / "empty.html"
    assert _cli("report", "html", "--db", str(empty), "--out", str(page_path)).exit_code == 0
    assert page_path.read_text().count("skipped: ") == len([n for n in REPORTS])


def test_surgery_messages_name_only_its_own_flags(tmp_path):
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    (model / "pytorch_model.bin").write_bytes(b"not read")
    out = _cli("surgery", "--model", str(model), "--heads", "0-0", "--out", str(tmp_path / "o"))
    assert out.exit_code != 0 and "safetensors" in out.output
    assert "allow_pickle" not in out.output and "overwrite=True" not in out.output


def test_interval_bounds_find_their_column_by_prefix():
    frame = pl.DataFrame({"asr_ablated": [0.5], "n": [10], "ablated_lo": [0.2], "ablated_hi": [0.8],
                          "other_lo": [0.1], "other_hi": [0.2]})
    assert render.intervals(frame) == {"asr_ablated": ("ablated_lo", "ablated_hi")}
    shown, _ = render.shown_columns(frame)
    assert [c.name for c in shown] == ["asr_ablated", "n", "other_lo", "other_hi"]
    assert shown[0].cells == ["0.500 [0.200, 0.800]"]


def test_one_number_format_per_column():
    frame = pl.DataFrame({"method": ["a", "b"], "params": [212_992, 53_376], "share": [3.1e-4, 0.25]})
    shown, _ = render.shown_columns(frame)
    cells = {c.name: c.cells for c in shown}
    assert cells["params"] == ["212,992", "53,376"]
    assert cells["share"] == ["3.10e-04", "2.50e-01"]


def test_key_columns_are_never_left_out_to_fit():
    """k, the head set and the method tell rows apart: a narrow table leaves out other columns first,
    and says which."""
    n = 6
    frame = pl.DataFrame({
        "intervention": ["sahara:sahara"] * 3 + ["random"] * 3, "head_set": ["2-6", "2-6,1-3", "2-6,1-3,0-1"] * 2,
        "k": [1, 2, 3] * 2, "asr": [0.5] * n, "asr_lo": [0.4] * n, "asr_hi": [0.6] * n,
        "baseline_asr": [0.03] * n, "change": [0.47] * n, "description_of_the_unit": ["a long text " * 4] * n,
        "median_tokens_generated": [31.5, 30.0, 29.5, 28.0, 27.5, 26.0]})
    from rich.console import Console

    console = Console(width=40, record=True, file=open(os.devnull, "w"))
    for renderable in render.tables(frame, "t", width=40):
        console.print(renderable)
    text = console.export_text()
    for key in ("k", "head", "2-6,1-3,0-1", "intervention"):
        assert key in text, text
    assert "left out to fit 40 columns" in text
    assert "median" not in text.split("left out")[0]


def test_the_heatmap_legend_explains_every_glyph_in_the_grid():
    from shb.reports import termheat

    grid = [[10 ** -(i % 5) * (1 + j) for j in range(8)] for i in range(6)] + [[None, 0.0] + [1e-9] * 6]
    lines = [t.plain for t in termheat.render(grid, "t", width=80)]
    n_rows = len(grid)
    rows = [line[6:6 + 16] for line in lines if line.startswith("  L")][:n_rows]
    legend = " ".join(line for line in lines if not line.startswith(" ") and line != "t")
    used = {ch for row in rows for ch in row}
    assert len(used) > 4
    for glyph in used:
        assert f"'{glyph}'" in legend, (glyph, legend)
