"""The results database (DuckDB). This module holds the only SQL in shb that writes it (a chunk's
snapshot, shb.runner.Snapshot, is an in-memory copy of rows read from it).

Long tables, one row per observation. A unit's work is committed chunk by chunk: the rows of
one chunk and its done mark go in one transaction, so a crash loses at most the chunk in
flight and a rerun neither duplicates nor misses rows. Rows are upserted on each table's
primary key, so re-emitting a row (Sahara marking its chosen head) replaces it.

Readers while a run goes: DuckDB lets one process write a file and locks it against every other
process while that connection is open. ``shb run`` therefore opens its store with ``hold=False``:
the write connection exists only inside ``transaction()`` / ``session()`` (one chunk's commit, one
unit row), and ``store.con`` outside them runs each statement on a connection of its own that is
closed at once. Readers (``read_only=True``) and writers retry briefly when the file is locked.
One run at a time per database is enforced by ``shb.runlock.run_lock`` (an flock on ``<db>.run.lock``).

Read-only stores (``shb sql``, reports) open with external access, extension autoinstall/autoload
and configuration changes disabled, so a query can read only the database.
"""

from __future__ import annotations

import json
import os
import time
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
        # Screened Ships sweeps (shb.scorers.attribution): every head's estimate, and whether the
        # exact engine verified it (verified heads also have an exact row in `ships`).
        """CREATE TABLE ships_estimates (
            unit_id VARCHAR, model_id VARCHAR, dataset_id VARCHAR, prompt_id INTEGER, ablation_id VARCHAR,
            layer INTEGER, head INTEGER, estimate DOUBLE, estimator VARCHAR, verified BOOLEAN,
            PRIMARY KEY (unit_id, prompt_id, layer, head))""",
    ],
    # h-gpu: the rows per forward pass a unit's engine settled on (batch_size "auto" and out-of-memory halving).
    ["ALTER TABLE units ADD COLUMN batch_size INTEGER"],
    [   # utility (issue 12): one row per lm-eval document x metric, benign answer x judge, or benign text
        """CREATE TABLE utility_docs (
            unit_id VARCHAR, model_id VARCHAR, dataset_id VARCHAR, ablation_id VARCHAR, metric_id VARCHAR,
            part VARCHAR, task VARCHAR, measure VARCHAR, judge_id VARCHAR, judge_hash VARCHAR,
            k INTEGER, head_source VARCHAR, heads VARCHAR[], intervention JSON, intervention_kind VARCHAR,
            doc_id INTEGER, sample_index INTEGER, value DOUBLE, weight DOUBLE,
            lm_eval_version VARCHAR, task_hash VARCHAR, num_fewshot INTEGER, detail JSON,
            PRIMARY KEY (unit_id, part, task, measure, judge_id, k, doc_id, sample_index))""",
        """CREATE VIEW utility AS
            SELECT model_id, dataset_id, ablation_id, metric_id, part, task, measure, judge_id, judge_hash,
                   k, head_source, heads, CAST(intervention AS VARCHAR) AS intervention, intervention_kind,
                   lm_eval_version, task_hash, num_fewshot, unit_id,
                   count(value) AS n, avg(value) AS value, stddev_samp(value) AS sd,
                   sum(value * weight) / nullif(sum(CASE WHEN value IS NOT NULL THEN weight END), 0) AS weighted_value,
                   bool_and(value IN (0, 1)) AS is_binary
            FROM utility_docs GROUP BY ALL""",
        # Each intervention beside the unmodified model of the same unit (same model, metric config, cell).
        """CREATE VIEW utility_change AS
            SELECT x.model_id, x.dataset_id, x.ablation_id, x.metric_id, x.part, x.task, x.measure, x.judge_id,
                   x.k, x.head_source, x.heads, x.intervention, x.intervention_kind, x.unit_id,
                   x.n, x.value, b.n AS base_n, b.value AS base_value, x.value - b.value AS change
            FROM utility x JOIN utility b ON b.unit_id = x.unit_id AND b.part = x.part AND b.task = x.task
                 AND b.measure = x.measure AND b.judge_id = x.judge_id AND b.k = 0
            WHERE x.k > 0""",
    ],
    [  # identity (issue 9): what each label stands for, the formatted prompts, the model's resolved dtype
        "ALTER TABLE models ADD COLUMN fingerprint JSON",
        "ALTER TABLE models ADD COLUMN dtype VARCHAR",
        "ALTER TABLE models ADD COLUMN attn_implementation VARCHAR",
        """CREATE TABLE labels (
            kind VARCHAR, label VARCHAR, identity VARCHAR, content JSON, run_id VARCHAR,
            PRIMARY KEY (kind, label))""",
        """CREATE TABLE formatted_prompts (
            model_id VARCHAR, dataset_id VARCHAR, prompt_id INTEGER, chat_template_sha256 VARCHAR, text VARCHAR,
            PRIMARY KEY (model_id, dataset_id, prompt_id))""",
    ],
    [   # issue 10: honest run status (pid + host to detect a killed run; the error of a failed one)
        "ALTER TABLE runs ADD COLUMN pid INTEGER",
        "ALTER TABLE runs ADD COLUMN error VARCHAR",
        """CREATE TABLE truncations (
            model_id VARCHAR, dataset_id VARCHAR, prompt_id INTEGER, n_tokens INTEGER, kept_tokens INTEGER,
            PRIMARY KEY (model_id, dataset_id, prompt_id))""",
    ],
    # Interventions (issue 11): fitted artefacts, and what each generation applied and edited.
    [
        """CREATE TABLE fits (
            fit_id VARCHAR PRIMARY KEY, kind VARCHAR, intervention_id VARCHAR, model_id VARCHAR, unit_id VARCHAR,
            spec JSON, meta JSON, artefact BLOB, artefact_sha256 VARCHAR,
            params_entries BIGINT, params_dof BIGINT, n_params BIGINT, seconds DOUBLE)""",
        "ALTER TABLE generations ADD COLUMN intervention_id VARCHAR",
        "ALTER TABLE generations ADD COLUMN intervention JSON",
        "ALTER TABLE generations ADD COLUMN params_entries BIGINT",
        "ALTER TABLE generations ADD COLUMN params_dof BIGINT",
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
    [
        # Screened Sahara (issue 24): every candidate's estimate per step and whether the exact engine
        # verified it (verified candidates also have an exact row in `sahara_steps`).
        """CREATE TABLE sahara_estimates (
            unit_id VARCHAR, step INTEGER, layer INTEGER, head INTEGER, estimate DOUBLE, verified BOOLEAN,
            PRIMARY KEY (unit_id, step, layer, head))""",
    ],
    [
        # issue 26: three outcomes beside the binary verdict (refused / complied / broken, the rule that
        # fired, the hash of the outcome rules; shb.judges.outcome). ASR keeps the binary verdict; the view
        # adds each outcome's share, NULL over rows judged before outcomes were recorded.
        "ALTER TABLE judgments ADD COLUMN outcome VARCHAR",
        "ALTER TABLE judgments ADD COLUMN outcome_rule VARCHAR",
        "ALTER TABLE judgments ADD COLUMN outcome_hash VARCHAR",
        """CREATE OR REPLACE VIEW asr AS
            SELECT g.model_id, g.dataset_id, g.ablation_id, g.head_source,
                   CASE WHEN g.head_source = 'ships_per_prompt' THEN 'ships_per_prompt'
                        ELSE array_to_string(list_sort(g.heads), ',') END AS head_set,
                   g.k, coalesce(g.draw, 0) AS draw, j.judge_id, j.judge_hash,
                   g.decoding, g.max_new_tokens, g.unit_id,
                   count(*) AS n, avg(CASE WHEN j.harmful THEN 1.0 ELSE 0.0 END) AS asr,
                   count(j.outcome) AS n_outcome,
                   avg(CASE WHEN j.outcome IS NULL THEN NULL WHEN j.outcome = 'refused' THEN 1.0 ELSE 0.0 END) AS refused,
                   avg(CASE WHEN j.outcome IS NULL THEN NULL WHEN j.outcome = 'complied' THEN 1.0 ELSE 0.0 END) AS complied,
                   avg(CASE WHEN j.outcome IS NULL THEN NULL WHEN j.outcome = 'broken' THEN 1.0 ELSE 0.0 END) AS broken
            FROM generations g JOIN judgments j USING (generation_id)
            GROUP BY ALL""",
    ],
    # Issue 23: RDSHA head scores (per prompt, signed projection on the refusal direction) and the
    # last position's attention over the prompt of selected heads.
    [
        """CREATE TABLE rdsha (
            unit_id VARCHAR, model_id VARCHAR, dataset_id VARCHAR, ablation_id VARCHAR, fit_id VARCHAR,
            prompt_id INTEGER, layer INTEGER, head INTEGER, projection DOUBLE,
            PRIMARY KEY (unit_id, prompt_id, layer, head))""",
        """CREATE TABLE head_attention (
            unit_id VARCHAR, model_id VARCHAR, dataset_id VARCHAR, ablation_id VARCHAR, prompt_set VARCHAR,
            prompts_dataset_id VARCHAR, prompt_id INTEGER, role VARCHAR, layer INTEGER, head INTEGER,
            position INTEGER, token VARCHAR, weight DOUBLE,
            PRIMARY KEY (unit_id, prompt_set, prompt_id, layer, head, position))""",
    ],
]
# Issue 34: a fourth outcome, undetermined (no refusal phrase in a language the judge has none for;
# shb.judges.outcome). ASR and n are taken over the determined answers (an undetermined answer is neither
# counted as complied nor as refused), and n_undetermined says how many were left out. Rows judged
# before outcomes existed (outcome NULL) stay determined, so older numbers do not move.
DETERMINED = "j.outcome IS DISTINCT FROM 'undetermined'"
MIGRATIONS.append([
    f"""CREATE OR REPLACE VIEW asr AS
        SELECT g.model_id, g.dataset_id, g.ablation_id, g.head_source,
               CASE WHEN g.head_source = 'ships_per_prompt' THEN 'ships_per_prompt'
                    ELSE array_to_string(list_sort(g.heads), ',') END AS head_set,
               g.k, coalesce(g.draw, 0) AS draw, j.judge_id, j.judge_hash,
               g.decoding, g.max_new_tokens, g.unit_id,
               count(*) FILTER (WHERE {DETERMINED}) AS n,
               avg(CASE WHEN j.harmful THEN 1.0 ELSE 0.0 END) FILTER (WHERE {DETERMINED}) AS asr,
               count(*) FILTER (WHERE j.outcome = 'undetermined') AS n_undetermined,
               count(j.outcome) AS n_outcome,
               avg(CASE WHEN j.outcome IS NULL THEN NULL WHEN j.outcome = 'refused' THEN 1.0 ELSE 0.0 END) AS refused,
               avg(CASE WHEN j.outcome IS NULL THEN NULL WHEN j.outcome = 'complied' THEN 1.0 ELSE 0.0 END) AS complied,
               avg(CASE WHEN j.outcome IS NULL THEN NULL WHEN j.outcome = 'broken' THEN 1.0 ELSE 0.0 END) AS broken,
               avg(CASE WHEN j.outcome IS NULL THEN NULL WHEN j.outcome = 'undetermined' THEN 1.0 ELSE 0.0 END)
                   AS undetermined
        FROM generations g JOIN judgments j USING (generation_id)
        GROUP BY ALL""",
])
MIGRATIONS.append([
    # Issue 31: screened runs verify a seeded random sample beside their top candidates (shb.screen_check)
    # to measure their own recall. verified_as: 'top' (the estimate's best), 'sample', NULL (not
    # verified); rows written before held top-verified heads only.
    "ALTER TABLE ships_estimates ADD COLUMN verified_as VARCHAR",
    "UPDATE ships_estimates SET verified_as = 'top' WHERE verified",
    "ALTER TABLE sahara_estimates ADD COLUMN verified_as VARCHAR",
    "UPDATE sahara_estimates SET verified_as = 'top' WHERE verified",
])
SCHEMA_VERSION = len(MIGRATIONS)

# DuckDB settings of every read-only connection: nothing outside the database file can be read or
# written (COPY, read_csv, ATTACH, EXPORT), no extension installed or loaded, and SET refused.
READ_ONLY_CONFIG = {"enable_external_access": False, "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False, "lock_configuration": True}
READ_WAIT_S = 10.0      # how long a reader waits for a run to finish its commit
WRITE_WAIT_S = 600.0    # how long a running writer waits for readers (a long report) to let go

TABLE_KEYS = {
    "ships": ("unit_id", "prompt_id", "layer", "head"),
    "ships_dataset": ("unit_id", "layer", "head"),
    "ships_estimates": ("unit_id", "prompt_id", "layer", "head"),
    "sahara_steps": ("unit_id", "step", "layer", "head"),
    "sahara_estimates": ("unit_id", "step", "layer", "head"),
    "generations": ("generation_id",),
    "judgments": ("generation_id", "judge_id"),
    "prompts": ("dataset_id", "prompt_id"),
    "models": ("model_id",),
    "utility_docs": ("unit_id", "part", "task", "measure", "judge_id", "k", "doc_id", "sample_index"),
    "labels": ("kind", "label"),
    "formatted_prompts": ("model_id", "dataset_id", "prompt_id"),
    "truncations": ("model_id", "dataset_id", "prompt_id"),
    "fits": ("fit_id",),
    "rdsha": ("unit_id", "prompt_id", "layer", "head"),
    "head_attention": ("unit_id", "prompt_set", "prompt_id", "layer", "head", "position"),
}


def db_path(path=None) -> Path:
    return Path(path or os.environ.get("SHB_DB") or DEFAULT_DB)


def _connect(path: Path, read_only: bool, wait: float = 0.0):
    """A DuckDB connection; while another process holds the file's lock, retry for ``wait`` seconds."""
    import duckdb

    if not read_only and not path.parent.is_dir():
        raise UsageError(f"cannot create database {path}: directory {path.parent} does not exist; create it or"
                         " choose another --db PATH")
    deadline = time.monotonic() + wait
    delay = 0.02
    intent = path.with_name(path.name + ".write-intent")
    waiting = False
    try:
        while True:
            if read_only:
                _yield_to_writer(intent, deadline)
            try:
                if read_only:
                    return duckdb.connect(str(path), read_only=True, config=dict(READ_ONLY_CONFIG))
                return duckdb.connect(str(path))
            except duckdb.IOException as exc:
                text = str(exc)
                if "lock" not in text.lower():
                    raise UsageError(f"cannot open database {path}: {text.splitlines()[0]}") from None
                if time.monotonic() >= deadline:
                    raise DatabaseBusy(
                        f"{path} is in use by another process (probably a running `shb run`); "
                        f"wait for it to finish, or use another database with --db PATH.\n  ({text.splitlines()[0]})"
                    ) from None
                if not read_only and wait > 0:
                    # A writer waiting for readers says so; new readers hold back until it got in, so a
                    # report polled in a loop cannot starve the run.
                    intent.touch()
                    waiting = True
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
            except duckdb.Error as exc:  # not a DuckDB file, a newer storage version, another configuration
                raise UsageError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None
    finally:
        if waiting:
            intent.unlink(missing_ok=True)


def _yield_to_writer(intent: Path, deadline: float) -> None:
    """Wait (until ``deadline``) while a writer has declared it is waiting for the file; a stale intent
    (its writer died) is ignored after a few seconds."""
    while time.monotonic() < deadline:
        try:
            age = time.time() - intent.stat().st_mtime
        except OSError:
            return
        if age > 5.0:
            return
        time.sleep(0.05)


class _Result:
    """A materialised result of one statement (what ``store.con`` returns between transactions)."""

    def __init__(self, rows=None, columns=None, frame=None):
        self._rows, self.columns, self._frame = rows, columns or [], frame

    def fetchall(self):
        if self._rows is None:
            self._rows = self._frame.rows() if self._frame is not None else []
        return list(self._rows)

    def fetchone(self):
        rows = self.fetchall()
        return rows[0] if rows else None

    def pl(self):
        if self._frame is None:
            import polars as pl

            self._frame = pl.DataFrame(self._rows or [], schema=self.columns, orient="row")
        return self._frame

    def rows(self):
        return self.fetchall()


class _OneShotConnection:
    """``store.con`` of a store that does not hold its connection: each statement opens the database,
    runs, materialises its result and closes again, so other processes can read in between."""

    def __init__(self, store: "Store"):
        self._store = store

    def execute(self, sql: str, params=None):
        with self._store.session() as con:
            cursor = con.execute(sql, params) if params is not None else con.execute(sql)
            if cursor.description is None:
                return _Result([], [])
            return _Result(cursor.fetchall(), [d[0] for d in cursor.description])

    def sql(self, sql: str, params=None):
        with self._store.session() as con:
            relation = con.sql(sql, params=params)
            return _Result(frame=relation.pl()) if relation is not None else _Result([], [])

    def close(self) -> None:
        pass


class Store:
    """A connection to a results database with shb's schema."""

    def __init__(self, path=None, read_only: bool = False, *, hold: bool = True, wait: float | None = None):
        """``hold=False``: keep no connection open between transactions (the runner's mode; see the module
        docstring). ``wait``: seconds to retry while another process holds the file (default: READ_WAIT_S
        for readers, 0 for a holding writer)."""
        self.path = db_path(path)
        self.read_only = read_only
        self.hold = hold
        self.wait = (READ_WAIT_S if read_only or not hold else 0.0) if wait is None else wait
        self._con = None
        self._depth = 0
        if read_only and not self.path.exists():
            raise UsageError(f"no results database at {self.path.resolve()}: run `shb run SUITE` first, or pass --db PATH")
        if self.path.exists() and self.path.is_dir():
            raise UsageError(f"--db {self.path} is a directory; give a database file path")
        try:
            with self.session():
                self._check_ours()
                if not read_only:
                    self._migrate()
                elif self.version() > SCHEMA_VERSION:
                    raise UsageError(f"{self.path} has schema version {self.version()}, newer than this shb"
                                     f" ({SCHEMA_VERSION}): upgrade shb")
        except BaseException:
            self.close()  # a refused database must not stay open (DuckDB allows one configuration per file)
            raise
        if not hold:
            self.wait = max(self.wait, WRITE_WAIT_S if not read_only else READ_WAIT_S)

    # -- connection -----------------------------------------------------------------------------
    @property
    def con(self):
        """The DuckDB connection: the open one (always, for a holding store; inside ``transaction()`` /
        ``session()`` otherwise), else a stand-in that runs each statement on a short-lived connection."""
        if self._con is not None:
            return self._con
        return _OneShotConnection(self)

    @contextmanager
    def session(self):
        """Hold a connection for the block (nestable); a non-holding store closes it afterwards."""
        if self._con is None:
            self._con = _connect(self.path, self.read_only, self.wait)
        self._depth += 1
        try:
            yield self._con
        finally:
            self._depth -= 1
            if self._depth == 0 and not self.hold:
                con, self._con = self._con, None
                con.close()

    def _check_ours(self) -> None:
        """Refuse a database that another program made: no shb_meta table but other tables."""
        if self.version():
            return
        others = [r[0] for r in self._con.execute(
            "SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall()]
        if others:
            listed = ", ".join(others[:6]) + (", ..." if len(others) > 6 else "")
            raise UsageError(f"{self.path} is not an shb database (no shb_meta table; it holds {listed}); shb leaves"
                             " other programs' databases alone: give a new file with --db PATH")
        if self.read_only:  # a reader has nothing to read in it (a writer would create shb's tables)
            raise UsageError(f"{self.path} is not an shb database yet (an empty DuckDB file, no tables): run "
                             f"`shb run SUITE --db {self.path}` first, or pass the --db of a run")

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
        with self.session() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield self
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def ensure_tables(self, ddl: dict[str, str]) -> list[str]:
        """Create the tables of ``ddl`` ({table: CREATE TABLE statement}, a metric kind's ``Metric.tables``)
        that this database lacks, in one transaction; returns the names created. The kinds that came
        before keep their tables in the numbered migrations above."""
        existing = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        missing = [table for table in ddl if table not in existing]
        if missing:
            with self.transaction():
                for table in missing:
                    self.con.execute(ddl[table])
        return missing

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
        """The run's row, ``started_at`` set by the database clock (as ``ended_at`` is)."""
        with self.transaction():
            self.insert("runs", [row])
            self.con.execute("UPDATE runs SET started_at = now() WHERE run_id = ?", [row["run_id"]])

    def end_run(self, run_id: str, status: str, error: str | None = None) -> None:
        self.con.execute("UPDATE runs SET ended_at = now(), status = ?, error = ? WHERE run_id = ?",
                         [status, error, run_id])

    def mark_killed(self, run_ids) -> None:
        """Runs found ``running`` whose process is gone: status ``killed``, and their running units too."""
        if not run_ids:
            return
        with self.transaction():
            for run_id in run_ids:
                self.con.execute("UPDATE runs SET status = 'killed', ended_at = coalesce(ended_at, now()),"
                                 " error = 'process gone (found by a later shb run / shb report runs)'"
                                 " WHERE run_id = ? AND status = 'running'", [run_id])
                self.con.execute("UPDATE units SET status = 'killed' WHERE run_id = ? AND status = 'running'", [run_id])

    def upsert_unit(self, row: dict) -> None:
        with self.transaction():
            self.insert("units", [{**row, "updated_at": None}])
            self.con.execute("UPDATE units SET updated_at = now() WHERE unit_id = ?", [row["unit_id"]])

    # -- reading --------------------------------------------------------------------------------
    def done_chunks(self, unit_id: str) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT chunk FROM chunks WHERE unit_id = ?", [unit_id]).fetchall()}

    def label_conflicts(self, contents: dict[tuple[str, str], tuple[str, dict]]) -> list[dict]:
        """Labels of ``contents`` ({(kind, label): (identity, content)}) this database holds for other content."""
        if self.version() < 2:
            return []
        have = {(k, label): (ident, run_id, json.loads(content)) for k, label, ident, content, run_id
                in self.con.execute("SELECT kind, label, identity, content, run_id FROM labels").fetchall()}
        out = []
        for (kind, label), (identity, content) in contents.items():
            old = have.get((kind, label))
            if old is not None and old[0] != identity:
                out.append({"kind": kind, "label": label, "old": old[2], "old_run": old[1], "new": content})
        return out

    def prompt_hashes(self) -> dict[str, set[str]]:
        """{dataset label: content hashes of its stored prompts} (databases from before ``labels`` have only these)."""
        if not self.version():
            return {}
        out: dict[str, set[str]] = {}
        for label, digest in self.con.execute("SELECT DISTINCT dataset_id, dataset_hash FROM prompts").fetchall():
            out.setdefault(label, set()).add(digest)
        return out

    def unit_status(self) -> dict[str, str]:
        if not self.version():
            return {}
        return dict(self.con.execute("SELECT unit_id, status FROM units").fetchall())

    def query(self, sql: str, params=None):
        """Run a query and return a polars DataFrame."""
        return self.con.sql(sql, params=params or None).pl()

    def read(self, sql: str, limit: int | None = None):
        """A user's query: errors become a clear message (the connection is read-only for `shb sql`).
        ``limit``: fetch at most that many rows (the relation is limited, so DuckDB stops early)."""
        import duckdb

        try:
            if limit is None:
                return self.query(sql)
            relation = self.con.sql(sql)
            if relation is None:  # a statement without a result (SET, ...): run, nothing to show
                import polars as pl

                return pl.DataFrame()
            return relation.limit(limit).pl()
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0]
            lower = first.lower()
            if self.read_only and ("read-only" in lower or "read only" in lower):
                raise UsageError(f"the database is opened read-only here; shb sql does not write ({first})") from None
            if self.read_only and ("disabled by configuration" in lower or "configuration has been locked" in lower
                                   or "disabled through configuration" in lower):
                raise UsageError(f"shb sql reads only the results database: no other files, extensions or settings"
                                 f" (use `shb export` to write a file) ({first})") from None
            raise UsageError(f"SQL error: {first}") from None

    def read_one(self, sql: str, max_rows: int = 0, timeout: float = 0):
        """One user statement, at most ``max_rows`` rows (0: all), stopped after ``timeout`` s (0: never).

        Returns (frame, cut): ``cut`` says rows past ``max_rows`` were left out. Several statements are
        refused (DuckDB would run them all and show only the last result)."""
        import threading

        import duckdb

        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as exc:
            raise UsageError(f"SQL error: {str(exc).splitlines()[0]}") from None
        if len(statements) != 1:
            raise UsageError(f"give one SQL statement; this query has {len(statements)}"
                             + (" (separated by ';'): run them one at a time" if statements else ""))
        timer = threading.Timer(timeout, self.con.interrupt) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            frame = self.read(sql, limit=max_rows + 1 if max_rows else None)
        except UsageError as exc:
            if timer is not None and not timer.is_alive() and "interrupt" in str(exc).lower():
                raise UsageError(f"the query ran past --timeout {timeout:g} s and was stopped; narrow it (a WHERE or"
                                 " LIMIT) or give a longer --timeout (0: no limit)") from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
        cut = bool(max_rows) and frame.height > max_rows
        return (frame.head(max_rows) if cut else frame), cut

    def export(self, source: str, out, fmt: str) -> int:
        """Write a table, view or SELECT query to ``out`` as parquet, jsonl or csv; returns the row count."""
        from shb.paths import check_out_file, write_out_file

        if fmt not in ("parquet", "jsonl", "csv"):
            raise UsageError(f"unknown export format '{fmt}'; known: parquet, jsonl, csv")
        check_out_file(out)  # before the query: a device node or a directory at --out is refused at once
        frame = self.read(source if " " in source.strip() else f'SELECT * FROM "{source}"')

        def write(tmp):
            if fmt == "parquet":
                frame.write_parquet(tmp)
            elif fmt == "jsonl":
                frame.write_ndjson(tmp)
            else:
                from shb.reports.render import flat

                flat(frame).write_csv(tmp)

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_out_file(out, write)  # never leave a half-written export behind, never replace a non-file
        return frame.height

    def close(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            con.close()

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
