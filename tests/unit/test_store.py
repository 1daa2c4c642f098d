"""The store: migrations, atomic chunks, upserts, read-only access, a clear message when busy."""

import subprocess
import sys

import pytest

from shb.errors import DatabaseBusy, UsageError
from shb.store import SCHEMA_VERSION, Store

ROW = {"unit_id": "u1", "model_id": "m", "dataset_id": "d", "prompt_id": 0, "ablation_id": "a",
       "layer": 0, "head": 1, "score": 0.5}


def test_new_database_has_current_schema(tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
        assert store.version() == SCHEMA_VERSION
        tables = {r[0] for r in store.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"runs", "units", "chunks", "prompts", "ships", "ships_dataset", "sahara_steps", "generations",
            "judgments", "asr"} <= tables


def test_chunk_rows_and_done_mark_commit_together(tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
        store.commit_chunk("u1", "layer-000", "r", {"ships": [ROW]}, 0.1)
        with pytest.raises(Exception):
            # The second row is malformed: neither it, the first row, nor the done mark may land.
            store.commit_chunk("u1", "layer-001", "r", {"ships": [{**ROW, "layer": 1}, {**ROW, "layer": "x"}]}, 0.1)
        assert store.done_chunks("u1") == {"layer-000"}
        assert store.con.execute("SELECT count(*) FROM ships").fetchall()[0][0] == 1


def test_rewriting_a_chunk_replaces_rows(tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
        store.commit_chunk("u1", "c", "r", {"ships": [ROW]}, 0.1)
        store.commit_chunk("u1", "c", "r", {"ships": [{**ROW, "score": 0.7}]}, 0.1)
        assert store.con.execute("SELECT score FROM ships").fetchall() == [(0.7,)]


def test_read_only_refuses_writes(tmp_path):
    path = tmp_path / "r.duckdb"
    Store(path).close()
    with Store(path, read_only=True) as store:
        with pytest.raises(UsageError, match="read-only"):
            store.read("INSERT INTO shb_meta VALUES ('x', 'y')")


def test_missing_database_for_reading_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="shb run"):
        Store(tmp_path / "none.duckdb", read_only=True)


def test_busy_database_is_reported(tmp_path):
    path = tmp_path / "r.duckdb"
    holder = Store(path)
    try:
        code = f"from shb.store import Store\ntry:\n Store({str(path)!r})\nexcept Exception as e:\n print(type(e).__name__, e)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        assert out.startswith(DatabaseBusy.__name__) and "in use by another process" in out
    finally:
        holder.close()


def test_export_round_trips_through_parquet(tmp_path):
    import polars as pl

    path = tmp_path / "r.duckdb"
    with Store(path) as store:
        store.commit_chunk("u1", "c", "r", {"ships": [ROW, {**ROW, "head": 2, "score": 1.25}]}, 0.1)
    with Store(path, read_only=True) as store:
        assert store.export("ships", tmp_path / "s.parquet", "parquet") == 2
        original = store.query("SELECT * FROM ships ORDER BY ALL")
    assert pl.read_parquet(tmp_path / "s.parquet").sort(original.columns).equals(original)


def test_sql_rows_are_capped_and_one_statement_runs(tmp_path):
    from shb.errors import UsageError
    from shb.store import Store

    Store(tmp_path / "r.duckdb").close()
    with Store(tmp_path / "r.duckdb", read_only=True) as store:
        frame, cut = store.read_one("SELECT range AS i FROM range(50)", max_rows=10)
        assert cut and frame["i"].to_list() == list(range(10))
        frame, cut = store.read_one("SELECT range AS i FROM range(50)", max_rows=0)
        assert not cut and frame.height == 50
        frame, cut = store.read_one("SELECT 1 AS one;", max_rows=10)  # a trailing ';' is one statement
        assert not cut and frame.height == 1
        with pytest.raises(UsageError, match="this query has 2"):
            store.read_one("SELECT 1; SELECT 2")
