"""Pieces of the bad-input work that need no model: strict dataset reading, the SQL sandbox, the
store's short-lived connections and foreign-database refusal, asr chunk keys."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shb import datasets
from shb.cli import main
from shb.errors import UsageError
from shb.store import Store

ROW = {"unit_id": "u1", "model_id": "m", "dataset_id": "d", "prompt_id": 0, "ablation_id": "a",
       "layer": 0, "head": 1, "score": 0.5}


def test_bad_rows_are_reported_with_file_line_column_or_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "ok"}\n{"q": 42}\n\n{"q": "  "}\n{"q": "fine"}\n')
    with pytest.raises(UsageError) as err:
        datasets.load({"id": "d", "kind": "jsonl", "path": str(path), "column": "q"})
    assert f"{path}:2:1: field 'q' is 42 (int)" in str(err.value) and f"{path}:4:1: field 'q' is blank" in str(err.value)
    kept = datasets.load({"id": "d", "kind": "jsonl", "path": str(path), "column": "q", "bad_rows": "skip"})
    assert [(p.prompt_id, p.text) for p in kept] == [(0, "ok"), (4, "fine")]  # ids stay the file's rows


def test_undecodable_csv_lines_are_skipped_only_when_asked(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("prompt\nfirst\ncaf\xe9\nthird\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"d.csv:3:4: not UTF-8 \(byte 0xe9\)"):
        datasets.load({"id": "d", "kind": "csv", "path": str(path), "column": "prompt"})
    kept = datasets.load({"id": "d", "kind": "csv", "path": str(path), "column": "prompt", "bad_rows": "skip"})
    assert [p.text for p in kept] == ["first", "third"]


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "r.duckdb"
    with Store(path) as store:
        store.commit_chunk("u1", "c", "r", {"ships": [ROW]}, 0.1)
    return path


@pytest.mark.parametrize("query", [
    "COPY ships TO '{out}'", "SELECT * FROM read_csv('{secret}')", "SELECT * FROM read_text('{secret}')",
    "ATTACH '{out}' AS other", "INSTALL httpfs", "EXPORT DATABASE '{outdir}'", "SET enable_external_access = true",
])
def test_shb_sql_reads_only_the_database(db, tmp_path, query):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\nsecret-value\n")
    out, outdir = tmp_path / "out.csv", tmp_path / "exported"
    result = CliRunner().invoke(main, ["sql", query.format(out=out, secret=secret, outdir=outdir), "--db", str(db)])
    assert result.exit_code == 2, result.output
    assert "reads only the results database" in result.output and "secret-value" not in result.output
    assert not out.exists() and not outdir.exists()
    ok = CliRunner().invoke(main, ["sql", "SELECT count(*) AS n FROM ships", "--db", str(db), "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.output) == [{"n": 1}]


def test_a_store_that_does_not_hold_lets_others_open_between_commits(tmp_path):
    path = tmp_path / "r.duckdb"
    writer = Store(path, hold=False)
    writer.commit_chunk("u1", "c", "r", {"ships": [ROW]}, 0.1)
    with Store(path, read_only=True) as reader:  # would fail with a held read-write connection open
        assert reader.con.execute("SELECT count(*) FROM ships").fetchall() == [(1,)]
    # store.con outside a transaction: one statement on a short-lived connection, results materialised
    assert writer.con.execute("SELECT layer, head FROM ships").fetchall() == [(0, 1)]
    assert writer.query("SELECT score FROM ships").rows() == [(0.5,)]
    with writer.transaction():
        writer.con.execute("UPDATE ships SET score = 2.0")
    assert writer.done_chunks("u1") == {"c"}
    writer.close()
    with Store(path, read_only=True) as reader:
        assert reader.con.execute("SELECT score FROM ships").fetchall() == [(2.0,)]


def test_foreign_databases_are_refused_and_empty_ones_adopted(tmp_path):
    import duckdb

    foreign = tmp_path / "other.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE ships (name VARCHAR)")
    con.close()
    for read_only in (False, True):
        with pytest.raises(UsageError, match="not an shb database"):
            Store(foreign, read_only=read_only)
    con = duckdb.connect(str(foreign), read_only=True)
    assert con.execute("SELECT table_name FROM information_schema.tables").fetchall() == [("ships",)]
    con.close()
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    Store(empty).close()
    with Store(empty, read_only=True) as store:
        assert store.version() >= 2


def test_asr_chunk_keys_round_trip_past_three_digits():
    from shb.metrics.asr import AsrMetric

    assert AsrMetric.parse_chunk("k1000-p0064-0095") == (1000, 0, 64, 96)
    assert AsrMetric.parse_chunk("k003-p0000-0031") == (3, 0, 0, 32)
