"""What a worker runs: one loaded model, and chunks computed against a read-only snapshot of the
database rows they read. No Ray here, so the same code runs (and is tested) in-process.

A worker never writes: ``run_chunk`` returns the chunk's rows and the driver commits them with
the chunk's done mark (shb.store.commit_chunk). Metrics that read earlier rows (Sahara its own
earlier steps, asr its upstream unit's heads) read them from ``Snapshot``, an in-memory DuckDB
holding just those rows, which the driver builds when it dispatches the chunk.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from shb.errors import ShbError

# A test hook (off unless the variable is set): a file ``crash-<chunk>`` in this directory makes the
# worker that takes it (atomic rename) exit hard inside that chunk, once; ``fail-<chunk>`` raises every time.
FAULT_DIR_ENV = "SHB_FAULT_DIR"


class Snapshot:
    """A read-only stand-in for shb.store.Store: the rows a chunk reads, in an in-memory DuckDB."""

    read_only = True
    path = "<snapshot>"

    def __init__(self, tables: dict):
        import duckdb

        self.con = duckdb.connect(":memory:")
        for name, frame in tables.items():  # noqa: B007 (frame is read by DuckDB's replacement scan)
            self.con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame')

    def query(self, sql: str, params=None):
        return self.con.sql(sql, params=params or None).pl()

    def close(self) -> None:
        self.con.close()


@dataclass
class ChunkResult:
    unit_id: str
    chunk: str
    rows: dict | None = None          # table -> rows (None when it failed)
    seconds: float = 0.0
    error: str | None = None          # traceback text of an ordinary exception: the unit fails
    shb_error: Exception | None = None  # a UsageError etc.: the run stops, as a local run does
    model_row: dict | None = None     # set on the call that loaded the model (the driver upserts `models`)
    input_rows: dict | None = None    # table -> rows describing inputs (formatted_prompts), first use only
    pid: int = 0


class ModelHost:
    """Holds one model at a time and computes chunks. The model a task needs (its unit's) is loaded on
    first use and kept; a task for another model replaces it. Every task names its model, so a
    restarted worker (which starts empty) reloads the right one."""

    def __init__(self, dtype, device, suite, prompts: dict, datasets: dict, fingerprints: dict | None = None):
        from shb.run import _pinned

        self.dtype, self.request = dtype, device
        self.suite, self.prompts, self.datasets = suite, prompts, datasets
        # A hub model loads the commit its unit ids hash (shb.run._pinned), as in a local run.
        self.fingerprints = fingerprints or {}
        self.specs = {m.id: _pinned(m.spec(), self.fingerprints.get(m.id, {})) for m in suite.models}
        self.model_id, self.lm, self.device, self.loads = None, None, None, 0
        self.shared, self.formatted, self.units = {}, {}, {}
        self.new_inputs: dict[str, list] = {}

    def _ensure_loaded(self, model_id: str) -> dict | None:
        if self.lm is not None and self.model_id == model_id:
            return None
        import gc

        from shb.models import resolve_device
        from shb.run import _model_rows, load_model

        self.lm, self.model_id, self.shared, self.formatted, self.units = None, None, {}, {}, {}
        gc.collect()  # the previous model's memory goes before the next one loads
        request = self.request
        if request and request.startswith("cuda"):
            request = "cuda"  # Ray shows each actor only its own GPU(s), as cuda:0
        self.device = resolve_device(request)
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        self.lm = load_model(self.specs[model_id], self.dtype, self.device, quiet=True)
        self.model_id = model_id
        self.loads += 1
        return _model_rows(model_id, self.specs[model_id], self.lm, self.fingerprints.get(model_id))

    def _context(self, unit, store):
        from shb.progress import NullProgress
        from shb.run import format_prompts, unit_context

        if unit.unit_id not in self.units:
            dataset_id = unit.dataset.id
            if dataset_id not in self.formatted:
                from shb.run import _formatted_rows

                self.formatted[dataset_id] = format_prompts(self.datasets[dataset_id], self.prompts[dataset_id],
                                                            self.lm.tokenizer)
                # what was fed to the model, as a local run records it (the driver upserts the rows)
                self.new_inputs.setdefault("formatted_prompts", []).extend(_formatted_rows(
                    self.model_id, self.datasets[dataset_id], self.prompts[dataset_id], self.formatted[dataset_id],
                    self.lm.tokenizer))
            self.units[unit.unit_id] = unit_context(unit, self.lm, self.prompts[dataset_id], self.formatted[dataset_id],
                                                    None, NullProgress(), self.shared, self.suite, self.device)
        metric, ctx = self.units[unit.unit_id]
        ctx.store = store
        return metric, ctx

    def chunks(self, unit) -> ChunkResult:
        """The unit's chunk keys in order (as ``rows`` = {"chunks": [...]})."""
        return self._guarded(unit, "", lambda metric, ctx: ({"chunks": metric.chunks(unit, ctx)}, 0.0), None)

    def run_chunk(self, unit, chunk: str, tables: dict | None) -> ChunkResult:
        from shb.run import compute_chunk

        return self._guarded(unit, chunk, lambda metric, ctx: compute_chunk(metric, unit, ctx, chunk), tables)

    def _guarded(self, unit, chunk, work, tables) -> ChunkResult:
        result = ChunkResult(unit.unit_id, chunk, pid=os.getpid())
        snapshot = None
        try:
            result.model_row = self._ensure_loaded(unit.model.id)
            _maybe_fault(chunk)
            snapshot = Snapshot(tables or {})
            metric, ctx = self._context(unit, snapshot)
            result.input_rows, self.new_inputs = self.new_inputs or None, {}
            result.rows, result.seconds = work(metric, ctx)
        except ShbError as exc:
            result.shb_error = exc
        except Exception as exc:
            from shb.run import format_error

            result.error = format_error(exc)
        finally:
            if snapshot is not None:
                snapshot.close()
        return result

    def ping(self) -> int:
        return os.getpid()


def _maybe_fault(chunk: str) -> None:
    folder = os.environ.get(FAULT_DIR_ENV)
    if not folder or not chunk:
        return
    crash = os.path.join(folder, f"crash-{chunk}")
    try:
        os.rename(crash, crash + ".taken")  # one worker wins, once
    except OSError:
        pass
    else:
        time.sleep(0.05)
        os._exit(17)
    if os.path.exists(os.path.join(folder, f"fail-{chunk}")):
        raise RuntimeError(f"injected failure in chunk {chunk} ({FAULT_DIR_ENV})")
