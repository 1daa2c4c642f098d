"""Execute a suite: the only module that sees everything (suite, plan, models, metrics, store).

Units run in suite order, grouped by model so each model loads once. Each unit is committed
chunk by chunk (see shb.store); a rerun skips done chunks, so a run killed at any point and
started again ends with exactly the rows of an uninterrupted run. Missing model weights are
reported for every model before any work starts.
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

from shb import __version__
from shb.errors import ModelNotFound, ShbError
from shb.metrics.base import UnitContext
from shb.plan import WorkUnit, expand, load_prompts
from shb.registry import METRICS, MODELS, resolve
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
    from shb.models import check_spec

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
    import torch
    import transformers

    return {"shb_version": __version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "python_version": platform.python_version()}


def _order(units: list[WorkUnit], suite) -> list[WorkUnit]:
    model_index = {m.id: i for i, m in enumerate(suite.models)}
    return sorted(units, key=lambda u: model_index[u.model.id])  # stable: suite order within a model


def _model_rows(model_id: str, spec: dict, lm, fingerprint: dict) -> dict:
    from shb.models import source_of

    layout = lm.layout
    return {"model_id": model_id, "source": source_of(spec), "revision": spec.get("revision"),
            "architecture": layout.arch, "n_layers": layout.n_layers, "n_heads": layout.n_heads,
            "n_kv_heads": layout.n_kv_heads, "head_dim": layout.head_dim, "hidden_size": layout.hidden_size,
            "n_params": lm.n_params(), "spec": spec, "fingerprint": fingerprint,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "attn_implementation": getattr(lm.model.config, "_attn_implementation", None)}


def _fingerprints(suite) -> dict:
    """Every model's fingerprint; refuses a model whose weights cannot be named (see shb.models.fingerprint)."""
    from shb.models.fingerprint import is_known
    from shb.plan import fingerprints

    fps = fingerprints(suite)
    unknown = [f"  model '{m}': {fp['why']}" for m, fp in fps.items() if not is_known(fp)]
    if unknown:
        raise ModelNotFound("cannot fingerprint the weights of {} model(s), nothing was run:\n{}".format(
            len(unknown), "\n".join(unknown)))
    return fps


def _pinned(spec: dict, fingerprint: dict) -> dict:
    """A hub model loads the very commit its unit ids hash, even if the branch moves meanwhile."""
    if fingerprint.get("commit"):
        return {**spec, "revision": fingerprint["commit"]}
    return spec


def _formatted_rows(model_id: str, dataset, prompts, formatted, tokenizer) -> list[dict]:
    import hashlib

    template = getattr(tokenizer, "chat_template", None) if dataset.get("format", "direct") == "chat" else None
    digest = hashlib.sha256(str(template).encode()).hexdigest() if template else None
    return [{"model_id": model_id, "dataset_id": dataset.id, "prompt_id": p.prompt_id,
             "chat_template_sha256": digest, "text": text} for p, text in zip(prompts, formatted)]


def run_suite(suite, db=None, *, device: str | None = None, progress=None, only_units=None, log=print,
              on_chunk=None, executor: str | None = None, executor_options: dict | None = None) -> dict:
    """Run every pending unit of ``suite``; returns counts {done, skipped, failed}.

    ``on_chunk(unit_id, chunk)`` is called after each chunk is committed (``shb run -v`` logs it).
    ``executor``: "local" (this process) or "ray" (shb.executors.ray_executor; default: the suite's
    ``defaults.executor``, else local); ``executor_options``: address, num_gpus, workers, retries.
    """
    from shb import preflight
    from shb.executors import resolve_executor
    from shb.models import resolve_device, resolve_dtype_name
    from shb.plan import label_contents
    from shb.progress import NullProgress

    progress = progress or NullProgress()
    check_models(suite)  # first: a missing 7B download is the error a user most needs to see
    executor = resolve_executor(executor, executor_options, suite)  # a missing `ray` fails here, before any work
    device_request = device or suite.defaults.get("device")
    preflight.run_problems(suite, device)  # device, cache, architectures, heads
    prompts = load_prompts(suite)
    device = resolve_device(device_request)
    fps = _fingerprints(suite)
    units = _order(expand(suite, prompts, device, fps), suite)
    if only_units:
        units = [u for u in units if u.unit_id in only_units]
    contents = label_contents(suite, prompts, device, fps)
    dtype = resolve_dtype_name(suite.defaults.get("dtype", "float32"), device)
    with run_lock(db):
        # hold=False: the database is opened only to commit, so reports and shb sql can read during the run.
        store = Store(db, hold=False)
        store.mark_killed(dead_runs(store, lock_free=True))  # we hold the run lock: no other run is alive
        return _run_locked(suite, store, units, prompts, device, dtype, fps, contents, progress, log, on_chunk,
                           executor, device_request)


def _run_locked(suite, store, units, prompts, device, dtype, fps, contents, progress, log, on_chunk,
                executor, device_request) -> dict:
    import gc

    from shb import preflight
    from shb.datasets import content_hash
    from shb.identity import check_labels, label_rows
    from shb.progress import NullProgress

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
        store.con.execute("UPDATE runs SET started_at = now() WHERE run_id = ?", [run_id])
        models = {m.id: m for m in suite.models}
        datasets = {d.id: d for d in suite.datasets}
        unit_bar = progress.add_task("units", total=len(pending))
        labels = label_rows(contents, run_id)  # written with the rows they describe, once those passed every check
        if executor.name == "ray":  # Ray actors compute the chunks; this process alone writes the database
            from shb.executors.ray_executor import run_units

            with store.transaction():
                for dataset in suite.datasets:
                    _write_dataset(store, dataset.id, prompts, labels, set())
                store.insert("labels", [r for r in labels if r["kind"] != "dataset"])
            counts.update(run_units(pending, suite=suite, prompts=prompts, store=store, run_id=run_id,
                                    device=device_request, dtype=dtype, progress=progress, on_chunk=on_chunk,
                                    options=executor, log=log, fingerprints=fps))
            store.end_run(run_id, "failed" if counts["failed"] else "done")
            return counts
        loaded_id, lm, spec, shared, fitted, written = None, None, None, {}, {}, set()
        final = "done"
        for unit in pending:
            if unit.model.id != loaded_id:
                lm, shared, fitted = None, {}, {}
                gc.collect()
                progress.update(unit_bar, description=f"loading {unit.model.id}")
                spec = _pinned(models[unit.model.id].spec(), fps[unit.model.id])
                lm = load_model(spec, dtype, device, isinstance(progress, NullProgress))
                loaded_id = unit.model.id
                preflight.loaded_problems(suite, unit.model.id, lm)
            dataset = datasets[unit.dataset.id]
            if dataset.id not in fitted:
                formatted = format_prompts(dataset, prompts[dataset.id], lm.tokenizer)
                pointer = f"{suite.path}: /datasets/{[d.id for d in suite.datasets].index(dataset.id)}"
                formatted, cut = preflight.fit_prompts(dataset, prompts[dataset.id], formatted, lm, pointer)
                # Rows describing the inputs are written only once they passed every check.
                with store.transaction():
                    if ("model", unit.model.id) not in written:
                        store.insert("models", [_model_rows(unit.model.id, spec, lm, fps[unit.model.id])])
                        store.insert("labels", [r for r in labels if (r["kind"], r["label"]) == ("model", unit.model.id)])
                        written.add(("model", unit.model.id))
                    _write_dataset(store, dataset.id, prompts, labels, written)
                    store.insert("formatted_prompts", _formatted_rows(unit.model.id, dataset, prompts[dataset.id],
                                                                      formatted, lm.tokenizer))
                    store.insert("truncations", [{"model_id": unit.model.id, "dataset_id": dataset.id, **row}
                                                 for row in cut])
                if cut:
                    log(f"dataset '{dataset.id}': {len(cut)} prompt(s) truncated to model '{unit.model.id}''s"
                        " context (see the truncations table)")
                fitted[dataset.id] = formatted
            formatted = fitted[dataset.id]
            if any(("dataset", ref) not in written for ref in unit.spec.get("reads", {})):
                with store.transaction():  # datasets a metric reads besides its own (utility's benign sets)
                    for ref in unit.spec["reads"]:
                        _write_dataset(store, ref, prompts, labels, written)
            unit_labels = [r for r in labels if (r["kind"], r["label"]) in _unit_labels(unit) - written]
            if unit_labels:
                with store.transaction():  # the unit's ablation, metric, intervention and judge labels
                    store.insert("labels", unit_labels)
                written.update((r["kind"], r["label"]) for r in unit_labels)
            progress.update(unit_bar, description=f"unit {unit.label}")
            ok = _run_unit(unit, lm, prompts[dataset.id], formatted, store, run_id, progress, shared, suite, device,
                           on_chunk)
            counts["done" if ok else "failed"] += 1
            progress.update(unit_bar, advance=1, outcome="done" if ok else "failed")
        if counts["failed"]:
            final = "failed"
        store.end_run(run_id, final)
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


def _unit_labels(unit) -> set[tuple[str, str]]:
    """The (kind, label) pairs a unit's rows carry besides its model and dataset."""
    from shb.metrics.asr import judges_of

    out = {("ablation", unit.ablation.id), ("metric", unit.metric.id)}
    if unit.metric.get("intervention"):
        out.add(("intervention", unit.metric.get("intervention")))
    if unit.metric.kind == "asr":
        out.update(("judge", j) for j in judges_of(unit.metric.params))
    return out


def _write_dataset(store, dataset_id: str, prompts: dict, labels: list[dict], written: set) -> None:
    """The prompts and label rows of one dataset, once per run (inside the caller's transaction)."""
    from shb.datasets import content_hash

    if ("dataset", dataset_id) in written:
        return
    digest = content_hash(prompts[dataset_id])
    store.insert("prompts", [{"dataset_id": dataset_id, "prompt_id": p.prompt_id, "text": p.text,
                              "dataset_hash": digest} for p in prompts[dataset_id]])
    store.insert("labels", [r for r in labels if (r["kind"], r["label"]) == ("dataset", dataset_id)])
    written.add(("dataset", dataset_id))


def load_model(spec: dict, dtype, device, quiet: bool = True):
    """Load one suite model (the local loop and every Ray worker load through here). A library failure (a
    broken checkpoint, an unknown config) is the user's to fix, so it becomes one message naming the model
    rather than transformers' stack."""
    try:
        return resolve(MODELS, spec["kind"], "model")(spec, dtype=dtype, device=device, quiet=quiet)
    except (ShbError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ShbError(f"model '{spec['id']}' ({spec.get('path', spec['kind'])}) failed to load: "
                       f"{type(exc).__name__}: {first}") from exc


def format_prompts(dataset, prompts, tokenizer) -> list[str]:
    """A dataset's prompts as fed to the model (chat template, system prompt)."""
    from shb.datasets import format_prompt

    return [format_prompt(p.text, dataset.get("format", "direct"), tokenizer, dataset.get("system")) for p in prompts]


def unit_context(unit: WorkUnit, lm, prompts, formatted, store, progress, shared, suite, device):
    """(metric, UnitContext) of one unit; a Ray worker builds the same with a read-only snapshot as ``store``."""
    metric = resolve(METRICS, unit.metric.kind, "metric")()
    params = {**unit.spec["metric"], **{k: v for k, v in unit.metric.params.items() if k in ("strategy", "batch_size")}}
    ctx = UnitContext(
        lm=lm, prompts=prompts, formatted=formatted, ablation=unit.spec["ablation"], metric=params, store=store,
        ids={"unit_id": unit.unit_id, "model_id": unit.model.id, "dataset_id": unit.dataset.id,
             "ablation_id": unit.ablation.id, "metric_id": unit.metric.id},
        device=device, batch_size=params.get("batch_size", suite.defaults.get("batch_size", "auto")),
        seed=suite.defaults.get("seed", 0), progress=progress, shared=shared, suite=suite)
    return metric, ctx


def unit_row(unit: WorkUnit, run_id: str, suite) -> dict:
    """The unit's ``units`` row as written when it starts (status running)."""
    return {"unit_id": unit.unit_id, "run_id": run_id, "suite_name": suite.name, "model_id": unit.model.id,
            "dataset_id": unit.dataset.id, "ablation_id": unit.ablation.id, "metric_id": unit.metric.id,
            "metric_kind": unit.metric.kind, "spec": unit.spec, "status": "running", "error": None,
            "seconds": None, "n_chunks": None}


def compute_chunk(metric, unit: WorkUnit, ctx, chunk: str) -> tuple[dict, float]:
    """One chunk's rows (table -> rows) and the seconds it took; writes nothing."""
    t0 = time.perf_counter()
    rows = metric.run_chunk(unit, ctx, chunk)
    return rows, time.perf_counter() - t0


def _run_unit(unit: WorkUnit, lm, prompts, formatted, store: Store, run_id, progress, shared, suite, device,
              on_chunk=None) -> bool:
    metric, ctx = unit_context(unit, lm, prompts, formatted, store, progress, shared, suite, device)
    row = unit_row(unit, run_id, suite)
    store.upsert_unit(row)
    started = time.perf_counter()
    try:
        chunks = metric.chunks(unit, ctx)
        done = store.done_chunks(unit.unit_id)
        bar = progress.add_task(f"  {unit.metric.kind} chunks", total=len(chunks), completed=len(done & set(chunks)))
        for chunk in chunks:
            if chunk in done:
                continue
            rows, seconds = compute_chunk(metric, unit, ctx, chunk)
            store.commit_chunk(unit.unit_id, chunk, run_id, rows, seconds)
            if on_chunk is not None:
                on_chunk(unit.unit_id, chunk)
            progress.advance(bar)
        progress.remove_task(bar)
    except (KeyboardInterrupt, SystemExit):
        raise
    except ShbError:
        raise
    except Exception as exc:  # a unit's failure is recorded and the run goes on with the next unit
        store.upsert_unit({**row, "status": "failed", "error": format_error(exc),
                           "seconds": time.perf_counter() - started})
        if os.environ.get("SHB_RAISE"):
            raise
        return False
    store.upsert_unit({**row, "status": "done", "seconds": time.perf_counter() - started, "n_chunks": len(chunks),
                       "batch_size": ctx.batch_size_used()})
    return True


def format_error(exc: BaseException) -> str:
    """A failed unit's ``error`` text: the traceback's last 4000 characters."""
    import traceback

    return "".join(traceback.format_exception(exc))[-4000:]
