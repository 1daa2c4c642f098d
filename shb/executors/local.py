"""The local executor: one unit runner (shb.runner) in this process, the Ray executor without the network.

Units run in the order given (suite order, grouped by model, upstream units first), each unit's chunks
in the order its metric lists them (``Metric.after`` names only earlier chunks, so that order keeps
every declared dependency). Every chunk gets the snapshot its metric declared (``Metric.reads``), as
on a Ray actor, so a read a metric forgot to declare fails here too.
"""

from __future__ import annotations

import os
import time

from shb.runner import UnitRunner


def run_units(pending, *, runner_args: dict, writer, progress, options=None, log=print) -> dict:
    """Run ``pending`` in this process; returns counts {done, failed}."""
    runner = UnitRunner(**runner_args, progress=progress)
    counts = {"done": 0, "failed": 0}
    unit_bar = progress.add_task("units", total=len(pending))
    for unit in pending:
        loading = runner.model_id != unit.model.id
        progress.update(unit_bar, description=f"loading {unit.model.id}" if loading else f"unit {unit.label}")
        ok = run_unit(unit, runner, writer, progress, unit_bar)
        counts["done" if ok else "failed"] += 1
        progress.update(unit_bar, advance=1, outcome="done" if ok else "failed")
    return counts


def run_unit(unit, runner, writer, progress, unit_bar=None) -> bool:
    """One unit, chunk by chunk; False when it failed (recorded in its ``units`` row)."""
    started = time.perf_counter()
    planned = _settled(runner.plan(unit), writer)  # loads the model first when the unit needs another one
    row = writer.unit_started(unit)
    if planned.rows is None:
        return _failed(writer, row, started, planned)
    if unit_bar is not None:
        progress.update(unit_bar, description=f"unit {unit.label}")
    chunks = planned.rows["chunks"]
    done = writer.done_chunks(unit)
    bar = progress.add_task(f"  {unit.metric.kind} chunks", total=len(chunks), completed=len(done & set(chunks)))
    batch_size = None
    for chunk in chunks:
        if chunk in done:
            continue
        result = _settled(runner.run_chunk(unit, chunk, writer.snapshot(writer.reads(unit, chunk))), writer)
        if result.rows is None:
            progress.remove_task(bar)
            return _failed(writer, row, started, result)
        writer.chunk(unit, chunk, result.rows, result.seconds)
        batch_size = result.batch_size if result.batch_size is not None else batch_size
        progress.advance(bar)
    progress.remove_task(bar)
    writer.unit_done(row, time.perf_counter() - started, len(chunks), batch_size)
    return True


def _settled(result, writer):
    """Commit the inputs a call returned; a ShbError (bad suite input) stops the run."""
    writer.inputs(result.inputs)
    if result.shb_error is not None:
        raise result.shb_error
    return result


def _failed(writer, row, started, result) -> bool:
    writer.unit_failed(row, time.perf_counter() - started, result.error)
    if os.environ.get("SHB_RAISE"):  # debugging: the original exception and its traceback
        raise result.exception
    return False
