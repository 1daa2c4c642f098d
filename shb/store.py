"""The results database (DuckDB). This module holds the only SQL in shb that writes.

Long tables, one row per observation. A unit's work is committed chunk by chunk: the rows of
one chunk and its done mark go in one transaction, so a crash loses at most the chunk in
flight and a rerun neither duplicates nor misses rows. Rows are upserted on each table's
primary key, so re-emitting a row (Sahara marking its chosen head) replaces it.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from shb.errors import DatabaseBusy, UsageError

DEFAULT_DB = "results.duckdb"

# Each migration takes the database from version i to i + 1. Never edit a released one; append.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY, suite_name VARCHAR, suite_path VARCHAR, suite_sha256 VARCHAR,
            started_at TIMESTAMP, ended_at TIMESTAMP, status VARCHAR,
            shb_version VARCHAR, torch_version VARCHAR, transformers_version VARCHAR, python_version VARCHAR,
            git_commit VARCHAR, hostname VARCHAR, device VARCHAR, dtype VARCHAR, argv VARCHAR)""",
        """CREATE TABLE units (
            unit_id VARCHAR PRIMARY KEY, run_id VARCHAR, suite_name VARCHAR,
            model_id VARCHAR, dataset_id VARCHAR, ablation_id VARCHAR, metric_id VARCHAR, metric_kind VARCHAR,
            spec JSON, status VARCHAR, error VARCHAR, seconds DOUBLE, n_chunks INTEGER, updated_at TIMESTAMP)""",
        """CREATE TABLE chunks (
            unit_id VARCHAR, chunk VARCHAR, run_id VARCHAR, seconds DOUBLE, done_at TIMESTAMP,
            PRIMARY KEY (unit_id, chunk))""",
        """CREATE TABLE models (
            model_id VARCHAR PRIMARY KEY, source VARCHAR, revision VARCHAR, architecture VARCHAR,
            n_layers INTEGER, n_heads INTEGER, n_kv_heads INTEGER, head_dim INTEGER, hidden_size INTEGER,
            n_params BIGINT, spec JSON)""",
        """CREATE TABLE prompts (
            dataset_id VARCHAR, prompt_id INTEGER, text VARCHAR, dataset_hash VARCHAR,
            PRIMARY KEY (dataset_id, prompt_id))""",
        """CREATE TABLE ships (
            unit_id VARCHAR, model_id VARCHAR, dataset_id VARCHAR, prompt_id INTEGER, ablation_id VARCHAR,
            layer INTEGER, head INTEGER, score DOUBLE,
            PRIMARY KEY (unit_id, prompt_id, layer, head))""",
        """CREATE TABLE ships_dataset (
            unit_id VARCHAR, model_id VARCHAR, dataset_id VARCHAR, ablation_id VARCHAR,
            layer INTEGER, head INTEGER, score DOUBLE, rank_r INTEGER,
            PRIMARY KEY (unit_id, layer, head))""",
        """CREATE TABLE sahara_steps (
            unit_id VARCHAR, step INTEGER, layer INTEGER, head INTEGER, score DOUBLE, chosen BOOLEAN,
            PRIMARY KEY (unit_id, step, layer, head))""",
        """CREATE TABLE generations (
            generation_id VARCHAR PRIMARY KEY, unit_id VARCHAR, model_id VARCHAR, dataset_id VARCHAR,
            prompt_id INTEGER, heads VARCHAR[], head_source VARCHAR, k INTEGER, ablation_id VARCHAR,
            decoding JSON, max_new_tokens INTEGER, sample_index INTEGER, text VARCHAR,
            n_tokens INTEGER, finish_reason VARCHAR)""",
        """CREATE TABLE judgments (
            generation_id VARCHAR, unit_id VARCHAR, judge_id VARCHAR, judge_hash VARCHAR,
            harmful BOOLEAN, parsed BOOLEAN, raw VARCHAR,
            PRIMARY KEY (generation_id, judge_id))""",
        """CREATE VIEW asr AS
            SELECT g.model_id, g.dataset_id, g.ablation_id, g.head_source, g.k, j.judge_id, j.judge_hash,
                   g.decoding, g.max_new_tokens, g.unit_id,
                   count(*) AS n, avg(CASE WHEN j.harmful THEN 1.0 ELSE 0.0 END) AS asr
            FROM generations g JOIN judgments j USING (generation_id)
            GROUP BY ALL""",
    ],
    [
        # Reports never pool different interventions: each generation records which random draw it
        # belongs to, and the asr view carries a stable head-set identity (the sorted head list, or the
        # source where every prompt has its own set) and the draw, so two head sets never share a row.
        "ALTER TABLE generations ADD COLUMN draw INTEGER DEFAULT 0",
        """CREATE OR REPLACE VIEW asr AS
            SELECT g.model_id, g.dataset_id, g.ablation_id, g.head_source,
                   CASE WHEN g.head_source = 'ships_per_prompt' THEN 'ships_per_prompt'
                        ELSE array_to_string(list_sort(g.heads), ',') END AS head_set,
                   g.k, coalesce(g.draw, 0) AS draw, j.judge_id, j.judge_hash,
                   g.decoding, g.max_new_tokens, g.unit_id,
                   count(*) AS n, avg(CASE WHEN j.harmful THEN 1.0 ELSE 0.0 END) AS asr
            FROM generations g JOIN judgments j USING (generation_id)
            GROUP BY ALL""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

TABLE_KEYS = {
    "ships": ("unit_id", "prompt_id", "layer", "head"),
    "ships_dataset": ("unit_id", "layer", "head"),
    "sahara_steps": ("unit_id", "step", "layer", "head"),
    "generations": ("generation_id",),
    "judgments": ("generation_id", "judge_id"),
    "prompts": ("dataset_id", "prompt_id"),
    "models": ("model_id",),
}


def db_path(path=None) -> Path:
    return Path(path or os.environ.get("SHB_DB") or DEFAULT_DB)


def _connect(path: Path, read_only: bool):
    import duckdb

    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise DatabaseBusy(
                f"{path} is in use by another process (probably a running `shb run`); "
                f"wait for it to finish, or use another database with --db PATH.\n  ({text.splitlines()[0]})"
            ) from None
        raise UsageError(f"cannot open database {path}: {text}") from None


class Store:
    """A connection to a results database with shb's schema."""

    def __init__(self, path=None, read_only: bool = False):
        self.path = db_path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise UsageError(f"no results database at {self.path.resolve()}: run `shb run SUITE` first, or pass --db PATH")
        self.con = _connect(self.path, read_only)
        if not read_only:
            self._migrate()
        elif self.version() > SCHEMA_VERSION:
            raise UsageError(f"{self.path} has schema version {self.version()}, newer than this shb ({SCHEMA_VERSION}): upgrade shb")

    # -- schema ---------------------------------------------------------------------------------
    def version(self) -> int:
        # fetchall, not fetchone: DuckDB 2 refuses new work on a connection with an unfinished result.
        has_meta = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'shb_meta'").fetchall()[0][0]
        if not has_meta:
            return 0
        rows = self.con.execute("SELECT value FROM shb_meta WHERE key = 'schema_version'").fetchall()
        return int(rows[0][0]) if rows else 0

    def _migrate(self) -> None:
        current = self.version()
        if current > SCHEMA_VERSION:
            raise UsageError(f"{self.path} has schema version {current}, newer than this shb ({SCHEMA_VERSION}): upgrade shb")
        for version in range(current, SCHEMA_VERSION):
            with self.transaction():
                if version == 0:
                    self.con.execute("CREATE TABLE shb_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
                for statement in MIGRATIONS[version]:
                    self.con.execute(statement)
                self.con.execute("INSERT OR REPLACE INTO shb_meta VALUES ('schema_version', ?)", [str(version + 1)])

    # -- writing --------------------------------------------------------------------------------
    @contextmanager
    def transaction(self):
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def insert(self, table: str, rows: list[dict]) -> None:
        """Upsert rows (dicts keyed by column name) into ``table``; call inside a transaction."""
        if not rows:
            return
        import polars as pl

        frame = pl.DataFrame(_jsonable(rows), infer_schema_length=None)  # noqa: F841 (read by DuckDB below)
        self.con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM frame")

    def commit_chunk(self, unit_id: str, chunk: str, run_id: str, rows: dict[str, list[dict]], seconds: float) -> None:
        """Write one chunk's rows and its done mark atomically."""
        with self.transaction():
            for table, table_rows in rows.items():
                self.insert(table, table_rows)
            self.con.execute(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, now())", [unit_id, chunk, run_id, seconds])

    def start_run(self, row: dict) -> None:
        with self.transaction():
            self.insert("runs", [row])

    def end_run(self, run_id: str, status: str) -> None:
        self.con.execute("UPDATE runs SET ended_at = now(), status = ? WHERE run_id = ?", [status, run_id])

    def upsert_unit(self, row: dict) -> None:
        with self.transaction():
            self.insert("units", [{**row, "updated_at": None}])
            self.con.execute("UPDATE units SET updated_at = now() WHERE unit_id = ?", [row["unit_id"]])

    # -- reading --------------------------------------------------------------------------------
    def done_chunks(self, unit_id: str) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT chunk FROM chunks WHERE unit_id = ?", [unit_id]).fetchall()}

    def unit_status(self) -> dict[str, str]:
        if not self.version():
            return {}
        return dict(self.con.execute("SELECT unit_id, status FROM units").fetchall())

    def query(self, sql: str, params=None):
        """Run a query and return a polars DataFrame."""
        return self.con.sql(sql, params=params or None).pl()

    def read(self, sql: str):
        """A user's query: errors become a clear message (the connection is read-only for `shb sql`)."""
        import duckdb

        try:
            return self.query(sql)
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0]
            if self.read_only and ("read-only" in first.lower() or "read only" in first.lower()):
                raise UsageError(f"the database is opened read-only here; shb sql does not write ({first})") from None
            raise UsageError(f"SQL error: {first}") from None

    def export(self, source: str, out, fmt: str) -> int:
        """Write a table, view or SELECT query to ``out`` as parquet, jsonl or csv; returns the row count."""
        frame = self.read(source if " " in source.strip() else f'SELECT * FROM "{source}"')
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        if fmt == "parquet":
            frame.write_parquet(tmp)
        elif fmt == "jsonl":
            frame.write_ndjson(tmp)
        elif fmt == "csv":
            from shb.reports.render import flat

            flat(frame).write_csv(tmp)
        else:
            raise UsageError(f"unknown export format '{fmt}'; known: parquet, jsonl, csv")
        tmp.replace(out)  # never leave a half-written export behind
        return frame.height

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonable(rows: list[dict]) -> list[dict]:
    """dict/tuple values that belong in JSON columns become JSON text; lists stay lists."""
    out = []
    for row in rows:
        out.append({k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in row.items()})
    return out


def open_store(path=None, read_only: bool = False) -> Store:
    return Store(path, read_only=read_only)
