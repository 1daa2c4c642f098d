"""The unit runner: what computes a unit's chunks, whichever executor runs it. Writes nothing.

The local executor runs one ``UnitRunner`` in the driver's process; the Ray executor runs one in
each actor (shb.executors.worker). Either way the runner holds one loaded model at a time (the
model a unit needs is loaded on first use and kept while units use it), formats the unit's
prompts and fits them to the model's context (``preflight.fit_prompts``: refused, or cut and
recorded in ``truncations``), and computes chunks against a ``Snapshot`` of the stored rows the
metric declared it reads (``Metric.reads``). What it returns - the chunk's rows, and the rows
describing its inputs (``models``, ``prompts``, ``formatted_prompts``, ``truncations``) the
first time it uses them - the driver commits (shb.run.RunWriter), the only writer.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
import traceback
from dataclasses import dataclass

import duckdb

from shb import preflight
from shb.datasets import content_hash, format_prompt
from shb.errors import ShbError
from shb.metrics.base import UnitContext
from shb.models import load_resolved, resolve_device, source_of
from shb.progress import NullProgress
from shb.registry import metric as metric_kind

INPUT_TABLES = ("models", "prompts", "formatted_prompts", "truncations")  # committed in this order


class Snapshot:
    """A read-only stand-in for shb.store.Store holding the rows a chunk reads, in an in-memory DuckDB
    (``.con.execute`` and ``.query`` as on a Store). A read the metric did not declare finds no rows."""

    read_only = True
    path = "<snapshot>"

    def __init__(self, tables: dict):
        self.con = duckdb.connect(":memory:")
        for name, frame in tables.items():  # noqa: B007 (frame is read by DuckDB's replacement scan)
            self.con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame')

    def query(self, sql: str, params=None):
        return self.con.sql(sql, params=params or None).pl()

    def close(self) -> None:
        self.con.close()


@dataclass
class ChunkResult:
    """One call's outcome: ``rows`` (table -> rows; for a unit's plan, {"chunks": [...]}) or an error."""

    unit_id: str
    chunk: str
    rows: dict | None = None            # None when it failed
    seconds: float = 0.0
    error: str | None = None            # traceback text of an ordinary exception: the unit fails
    exception: Exception | None = None  # that exception (a local run re-raises it under SHB_RAISE)
    shb_error: Exception | None = None  # a UsageError etc.: the run stops
    inputs: dict | None = None          # table -> rows describing inputs used for the first time
    batch_size: int | None = None       # rows per forward pass the unit's engine settled on
    loaded: bool = False                # this call loaded a model
    pid: int = 0


def format_prompts(dataset, prompts, tokenizer) -> list[str]:
    """A dataset's prompts as fed to the model (chat template, system prompt)."""
    return [format_prompt(p.text, dataset.get("format", "direct"), tokenizer, dataset.get("system")) for p in prompts]


def model_row(model_id: str, spec: dict, lm, fingerprint: dict | None) -> dict:
    """The ``models`` row of a loaded model."""
    layout = lm.layout
    return {"model_id": model_id, "source": source_of(spec), "revision": spec.get("revision"),
            "architecture": layout.arch, "n_layers": layout.n_layers, "n_heads": layout.n_heads,
            "n_kv_heads": layout.n_kv_heads, "head_dim": layout.head_dim, "hidden_size": layout.hidden_size,
            "n_params": lm.n_params(), "spec": spec, "fingerprint": fingerprint,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "attn_implementation": getattr(lm.model.config, "_attn_implementation", None)}


def formatted_rows(model_id: str, dataset, prompts, formatted, tokenizer) -> list[dict]:
    """``formatted_prompts`` rows: what was fed to the model, with the chat template's hash."""
    template = getattr(tokenizer, "chat_template", None) if dataset.get("format", "direct") == "chat" else None
    digest = hashlib.sha256(str(template).encode()).hexdigest() if template else None
    return [{"model_id": model_id, "dataset_id": dataset.id, "prompt_id": p.prompt_id,
             "chat_template_sha256": digest, "text": text} for p, text in zip(prompts, formatted)]


def prompt_rows(dataset_id: str, prompts) -> list[dict]:
    digest = content_hash(prompts)
    return [{"dataset_id": dataset_id, "prompt_id": p.prompt_id, "text": p.text, "dataset_hash": digest}
            for p in prompts]


def unit_context(unit, lm, prompts, formatted, store, progress, shared, suite, device):
    """(metric, UnitContext) of one unit: its parameters are the resolved ones its id hashes (the seed
    included where the kind uses one), plus how to compute them (strategy, batch size)."""
    metric = metric_kind(unit.metric.kind)
    params = {**unit.spec["metric"], **{k: v for k, v in unit.metric.params.items() if k in ("strategy", "batch_size")}}
    ctx = UnitContext(
        lm=lm, prompts=prompts, formatted=formatted, ablation=unit.spec["ablation"], metric=params, store=store,
        ids={"unit_id": unit.unit_id, "model_id": unit.model.id, "dataset_id": unit.dataset.id,
             "ablation_id": unit.ablation.id, "metric_id": unit.metric.id},
        device=device, batch_size=params.get("batch_size", suite.defaults.get("batch_size", "auto")),
        progress=progress, shared=shared, suite=suite)
    return metric, ctx


def format_error(exc: BaseException) -> str:
    """A failed unit's ``error`` text: the traceback's last 4000 characters."""
    return "".join(traceback.format_exception(exc))[-4000:]


class UnitRunner:
    """Computes chunks of units on one loaded model at a time; see the module docstring.

    ``device``: the device asked for ("auto", "cuda", "cpu", ...), resolved when a model loads (on a Ray
    actor "cuda" is the actor's own GPU). ``progress``: the run display (a Ray actor has none)."""

    def __init__(self, suite, prompts: dict, *, device, progress=None):
        self.suite, self.prompts, self.request = suite, prompts, device
        self.datasets = {d.id: d for d in suite.datasets}
        self.progress = progress or NullProgress()
        self.model_id, self.lm, self.device, self.loads, self.just_loaded = None, None, None, 0, False
        self.shared, self.formatted, self.contexts = {}, {}, {}
        self.used: set = set()          # (table, key) of input rows already returned by this runner
        self.pending: dict = {}         # input rows not yet handed back

    # -- inputs --------------------------------------------------------------------------------------
    def _load(self, unit) -> None:
        model_id = unit.model.id
        if self.lm is not None and self.model_id == model_id:
            return
        self.lm, self.model_id, self.shared, self.formatted, self.contexts = None, None, {}, {}, {}
        gc.collect()  # the previous model's memory goes before the next one loads
        self.device = resolve_device(self.request)
        if self.device.startswith("cuda"):
            import torch  # only when a GPU is in use: free the previous model's blocks

            torch.cuda.empty_cache()
        load = unit.loads[model_id]
        self.lm = load_resolved(load.spec, self.device, quiet=isinstance(self.progress, NullProgress))
        self.model_id = model_id
        self.loads += 1
        self.just_loaded = True
        preflight.loaded_problems(self.suite, model_id, self.lm)
        self._input("models", model_id, [model_row(model_id, load.spec, self.lm, load.fingerprint)])

    def _input(self, table: str, key, rows: list[dict]) -> None:
        if (table, key) not in self.used:
            self.used.add((table, key))
            self.pending.setdefault(table, []).extend(rows)

    def _fitted(self, dataset_id: str) -> list[str]:
        """The dataset's prompts formatted for the loaded model and fitted to its context (checked once)."""
        if dataset_id not in self.formatted:
            dataset, prompts = self.datasets[dataset_id], self.prompts[dataset_id]
            formatted = format_prompts(dataset, prompts, self.lm.tokenizer)
            pointer = f"{self.suite.path}: /datasets/{list(self.datasets).index(dataset_id)}"
            formatted, cut = preflight.fit_prompts(dataset, prompts, formatted, self.lm, pointer)
            self._input("prompts", dataset_id, prompt_rows(dataset_id, prompts))
            key = (self.model_id, dataset_id)
            self._input("formatted_prompts", key, formatted_rows(self.model_id, dataset, prompts, formatted,
                                                                 self.lm.tokenizer))
            self._input("truncations", key, [{"model_id": self.model_id, "dataset_id": dataset_id, **row}
                                             for row in cut])
            self.formatted[dataset_id] = formatted
        return self.formatted[dataset_id]

    def _context(self, unit):
        self._load(unit)
        if unit.unit_id not in self.contexts:
            formatted = self._fitted(unit.dataset.id)
            for ref in unit.spec.get("reads", {}):  # datasets a metric reads besides its own (utility's benign sets)
                self._input("prompts", ref, prompt_rows(ref, self.prompts[ref]))
            self.contexts[unit.unit_id] = unit_context(unit, self.lm, self.prompts[unit.dataset.id], formatted, None,
                                                       self.progress, self.shared, self.suite, self.device)
        return self.contexts[unit.unit_id]

    def _take_inputs(self) -> dict | None:
        taken, self.pending = self.pending, {}
        return {t: taken[t] for t in INPUT_TABLES if t in taken} or None

    # -- work ----------------------------------------------------------------------------------------
    def plan(self, unit) -> ChunkResult:
        """The unit's chunk names, in an order that runs them one by one, and what each waits for:
        rows = {"chunks": [...], "after": [set of indices, ...]}."""
        def work(metric, ctx):
            chunks = metric.chunks(unit, ctx)
            after = metric.after(unit, chunks)
            if len(after) != len(chunks) or any(j >= i for i, deps in enumerate(after) for j in deps):
                raise RuntimeError(f"metric {unit.metric.kind}: after() must name earlier chunks only")
            return {"chunks": chunks, "after": after}

        return self._guarded(unit, "", work, None)

    def run_chunk(self, unit, chunk: str, tables: dict | None) -> ChunkResult:
        """One chunk's rows, computed against a snapshot of ``tables`` (table -> frame; see Metric.reads)."""
        return self._guarded(unit, chunk, lambda metric, ctx: metric.run_chunk(unit, ctx, chunk), tables)

    def _guarded(self, unit, chunk: str, work, tables) -> ChunkResult:
        result = ChunkResult(unit.unit_id, chunk, pid=os.getpid())
        snapshot = None
        try:
            metric, ctx = self._context(unit)
            snapshot = ctx.store = Snapshot(tables or {})
            started = time.perf_counter()
            result.rows = work(metric, ctx)
            result.seconds = time.perf_counter() - started
            result.batch_size = ctx.batch_size_used()
        except ShbError as exc:
            result.shb_error = exc
        except Exception as exc:  # a unit's failure: recorded, and the run goes on with other units
            result.error, result.exception = format_error(exc), exc
        finally:
            if snapshot is not None:
                snapshot.close()
                ctx.store = None
            result.inputs = self._take_inputs()
            result.loaded, self.just_loaded = self.just_loaded, False
        return result
