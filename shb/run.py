"""Execute a suite: resolve and check it, plan its units, hand the pending ones to an executor, and
commit what comes back (``RunWriter``, the run's only writer).

Executors (shb.executors.local, shb.executors.ray_executor) compute chunks with the same unit runner
(shb.runner) and order them by the metrics' declarations. Units run in suite order, grouped by model
so each model loads once. Each unit is committed chunk by chunk (see shb.store); a rerun skips done
chunks, so a run killed at any point and started again ends with exactly the rows of an
uninterrupted run. Missing model weights are reported for every model before any work starts.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from shb import __version__, preflight
from shb.datasets import content_hash
from shb.errors import ModelNotFound
from shb.executors import local, ray_executor, resolve_executor  # ray_executor imports ray only when it runs
from shb.identity import check_labels, label_rows
from shb.metrics.base import EVERY_UNIT_TABLE, Read
from shb.models import check_spec, resolve_device, resolve_dtype_name
from shb.models.fingerprint import is_known
from shb.plan import WorkUnit, expand, fingerprints, label_contents, load_prompts, resolve
from shb.progress import NullProgress
from shb.registry import metric as metric_kind
from shb.runlock import dead_runs, run_lock
from shb.store import Store


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def check_models(suite) -> None:
    """Fail before any work if any model's weights cannot be had, naming every missing one."""
    missing = []
    for model in suite.models:
        if model.kind != "hf":
            continue
        try:
            check_spec(model.spec(), model.id)
        except ModelNotFound as exc:
            missing.append(str(exc))
    if missing:
        raise ModelNotFound(f"{len(missing)} model(s) missing, nothing was run:\n" + "\n".join(missing))


def _versions() -> dict:
    import torch  # deferred: `shb run` pays for torch, `shb --help` and the other commands do not
    import transformers

    return {"shb_version": __version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "python_version": platform.python_version()}


def _order(units: list[WorkUnit], suite) -> list[WorkUnit]:
    model_index = {m.id: i for i, m in enumerate(suite.models)}
    return sorted(units, key=lambda u: model_index[u.model.id])  # stable: suite order within a model


def fingerprints_known(suite) -> dict:
    """Every model's fingerprint; refuses a model whose weights cannot be named (see shb.models.fingerprint)."""
    fps = fingerprints(suite)
    unknown = [f"  model '{m}': {fp['why']}" for m, fp in fps.items() if not is_known(fp)]
    if unknown:
        raise ModelNotFound("cannot fingerprint the weights of {} model(s), nothing was run:\n{}".format(
            len(unknown), "\n".join(unknown)))
    return fps


def run_suite(suite, db=None, *, device: str | None = None, progress=None, only_units=None, log=print,
              on_chunk=None, executor: str | None = None, executor_options: dict | None = None) -> dict:
    """Run every pending unit of ``suite``; returns counts {done, skipped, failed}.

    ``on_chunk(unit_id, chunk)`` is called after each chunk is committed (``shb run -v`` logs it).
    ``executor``: "local" (this process) or "ray" (shb.executors.ray_executor; default: the suite's
    ``defaults.executor``, else local); ``executor_options``: address, num_gpus, workers, retries.
    """
    progress = progress or NullProgress()
    check_models(suite)  # first: a missing 7B download is the error a user most needs to see
    executor = resolve_executor(executor, executor_options, suite)  # a missing `ray` fails here, before any work
    device_request = device or suite.defaults.get("device")
    preflight.run_problems(suite, device)  # device, cache, architectures, heads
    prompts = load_prompts(suite)
    device = resolve_device(device_request)
    # What every entry is, once: the units, their fits and the stored labels are all built from it.
    resolved = resolve(suite, prompts, device, fingerprints_known(suite))
    units = _order(expand(suite, resolved=resolved), suite)
    if only_units:
        units = [u for u in units if u.unit_id in only_units]
    contents = label_contents(suite, resolved=resolved)
    dtype = resolve_dtype_name(suite.defaults.get("dtype", "float32"), device)
    with run_lock(db):
        # hold=False: the database is opened only to commit, so reports and shb sql can read during the run.
        store = Store(db, hold=False)
        store.mark_killed(dead_runs(store, lock_free=True))  # we hold the run lock: no other run is alive
        return _run_locked(suite, store, units, prompts, device, dtype, contents, progress, log, on_chunk,
                           executor, device_request)


def _run_locked(suite, store, units, prompts, device, dtype, contents, progress, log, on_chunk,
                executor, device_request) -> dict:
    counts = {"done": 0, "skipped": 0, "failed": 0}
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
    started = False
    try:
        # before any write: a label this database uses for other content is refused
        check_labels(store, contents, {d.id: content_hash(prompts[d.id]) for d in suite.datasets})
        status = store.unit_status()
        pending = [u for u in units if status.get(u.unit_id) != "done"]
        counts["skipped"] = len(units) - len(pending)
        if not pending:
            log(f"all {len(units)} unit(s) already done in {store.path}")
            return counts
        store.start_run({"run_id": run_id, "suite_name": suite.name, "suite_path": suite.path,
                         "suite_sha256": suite.sha256, "started_at": None, "status": "running",
                         "git_commit": git_commit(), "hostname": socket.gethostname(),
                         "device": executor.device_label(device, device_request),
                         "dtype": dtype, "argv": " ".join(sys.argv), "pid": os.getpid(), **_versions()})
        started = True
        # the tables a metric kind declares (Metric.tables), created before its first chunk commits
        store.ensure_tables({table: ddl for kind in dict.fromkeys(u.metric.kind for u in pending)
                             for table, ddl in metric_kind(kind).tables.items()})
        writer = RunWriter(store, run_id, suite, label_rows(contents, run_id), log, on_chunk)
        runner_args = {"suite": suite, "prompts": prompts, "device": device_request}
        # Ray actors or this process compute the chunks; this process alone writes the database
        run_units = ray_executor.run_units if executor.name == "ray" else local.run_units
        counts.update(run_units(pending, runner_args=runner_args, writer=writer, progress=progress, options=executor,
                                log=log))
        store.end_run(run_id, "failed" if counts["failed"] else "done")
    except BaseException as exc:
        if started:  # a refused run wrote nothing, not even a runs row
            # Ctrl-C is an interruption; anything else (a model that does not load, a prompt too long) a failure.
            interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
            try:
                store.end_run(run_id, "interrupted" if interrupted else "failed",
                              None if interrupted else f"{type(exc).__name__}: {exc}"[:4000])
            except Exception:
                pass
        raise
    finally:
        store.close()
    return counts


class RunWriter:
    """The one writer of a run: executors hand it what their runners return, and it commits (a chunk's
    rows with its done mark in one transaction, shb.store.commit_chunk); it also reads the snapshots
    chunks declared they read (``Metric.reads``)."""

    def __init__(self, store: Store, run_id: str, suite, labels: list[dict], log=print, on_chunk=None):
        self.store, self.run_id, self.suite, self.log, self.on_chunk = store, run_id, suite, log, on_chunk
        self.labels = {(r["kind"], r["label"]): r for r in labels}
        self.unit_labels_written: set[tuple[str, str]] = set()
        self.metrics: dict = {}

    # -- reading -------------------------------------------------------------------------------------
    def metric(self, unit):
        """The unit's metric object (for its declarations; no model needed)."""
        kind = unit.metric.kind
        if kind not in self.metrics:
            self.metrics[kind] = metric_kind(kind)
        return self.metrics[kind]

    def reads(self, unit, chunk: str) -> list[Read]:
        return self.metric(unit).reads(unit, chunk)

    def snapshot(self, reads: list[Read]) -> dict:
        """The declared rows, table -> polars frame (a table not in the database is left out)."""
        existing = {r[0] for r in self.store.query(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").rows()}
        wanted: dict[tuple[str, str], list] = {}
        for read in reads:
            tables = [read.table]
            if read.table == EVERY_UNIT_TABLE:
                tables = [r[0] for r in self.store.query(
                    "SELECT DISTINCT table_name FROM information_schema.columns WHERE column_name = 'unit_id'"
                    " AND table_name NOT IN ('units', 'chunks') ORDER BY 1").rows()]
            for table in tables:
                if table in existing and read.values:
                    wanted.setdefault((table, read.column), []).extend(read.values)
        out: dict = {}
        for (table, column), values in wanted.items():
            values = list(dict.fromkeys(values))
            frame = self.store.query(f'SELECT * FROM "{table}" WHERE "{column}" IN ({", ".join("?" * len(values))})',
                                     values)
            out[table] = frame if table not in out else out[table].vstack(frame).unique(maintain_order=True)
        return out

    def done_chunks(self, unit) -> set[str]:
        return self.store.done_chunks(unit.unit_id)

    # -- writing -------------------------------------------------------------------------------------
    def inputs(self, rows: dict | None) -> None:
        """Rows describing inputs (models, prompts, formatted_prompts, truncations), with their label rows;
        written once they passed every check (the runner returns them after its preflight)."""
        if not rows:
            return
        with self.store.transaction():
            for table, table_rows in rows.items():
                self.store.insert(table, table_rows)
                kind = {"models": "model", "prompts": "dataset"}.get(table)
                for label in {r["model_id" if kind == "model" else "dataset_id"] for r in table_rows} if kind else ():
                    if (kind, label) in self.labels:
                        self.store.insert("labels", [self.labels[(kind, label)]])
        cut: dict = {}
        for row in rows.get("truncations", []):
            cut.setdefault((row["model_id"], row["dataset_id"]), []).append(row)
        for (model_id, dataset_id), found in cut.items():
            self.log(f"dataset '{dataset_id}': {len(found)} prompt(s) truncated to model '{model_id}''s"
                     " context (see the truncations table)")

    def unit_started(self, unit) -> dict:
        row = unit_row(unit, self.run_id, self.suite)
        keys = set(unit.labels)
        new = [self.labels[key] for key in sorted(keys - self.unit_labels_written) if key in self.labels]
        if new:
            with self.store.transaction():  # the unit's ablation, metric, intervention and judge labels, once a run
                self.store.insert("labels", new)
        self.unit_labels_written |= keys
        self.store.upsert_unit(row)
        return row

    def chunk(self, unit, chunk: str, rows: dict, seconds: float) -> None:
        self.store.commit_chunk(unit.unit_id, chunk, self.run_id, rows, seconds)
        if self.on_chunk is not None:
            self.on_chunk(unit.unit_id, chunk)

    def unit_done(self, row: dict, seconds: float, n_chunks: int, batch_size=None) -> None:
        self.store.upsert_unit({**row, "status": "done", "seconds": seconds, "n_chunks": n_chunks,
                                "batch_size": batch_size})

    def unit_failed(self, row: dict, seconds: float, error: str) -> None:
        self.store.upsert_unit({**row, "status": "failed", "error": error[-4000:], "seconds": seconds})


def unit_row(unit: WorkUnit, run_id: str, suite) -> dict:
    """The unit's ``units`` row as written when it starts (status running)."""
    return {"unit_id": unit.unit_id, "run_id": run_id, "suite_name": suite.name, "model_id": unit.model.id,
            "dataset_id": unit.dataset.id, "ablation_id": unit.ablation.id, "metric_id": unit.metric.id,
            "metric_kind": unit.metric.kind, "spec": unit.spec, "status": "running", "error": None,
            "seconds": None, "n_chunks": None}
