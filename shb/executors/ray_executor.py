"""The Ray executor: actors hold one loaded model each and compute chunks; this process writes.

The driver (shb.run.run_suite) plans as for a local run and hands the pending units here. Each
actor (``shb.executors.worker.ModelHost`` under ``ray.remote``) loads the model of its first task
and keeps it while its tasks are for that model, so a model loads once per actor, not once per
unit. The driver hands out one task per actor at a time: a unit's chunk list, or one chunk with a
snapshot of the rows it reads, and commits each returned chunk with ``Store.commit_chunk``, the
same transaction a local run uses, so the tables are the same and a run resumes with either
executor.

Order: a unit starts once its upstream unit (the Sahara or Ships unit whose heads it ablates) has
settled. Inside a unit, chunks run in parallel where they are independent: every layer of a head
sweep (ships, ships_dataset), every (k, batch) of asr, and the candidate layers of one Sahara
step; a Sahara step's last layer waits for the step's other layers (it picks the step's winner
from their rows) and the next step waits for it. Metrics not listed run their chunks in order.

Faults: Ray restarts a dead actor (which reloads its model) and retries its task, up to
``retries`` times (at-least-once; the driver only commits results it receives, each chunk with
its done mark, and rows are upserts). A chunk whose worker keeps dying, or that raises, marks its
unit failed with the error and the other units go on; a ShbError (bad suite input) stops the run,
as it does in a local run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from shb.errors import UsageError
from shb.executors import ExecutorOptions, require_ray
from shb.executors.worker import ModelHost

INDEPENDENT_CHUNKS = {"ships", "ships_dataset", "asr"}
# The tables each metric reads through ctx.store, and whose rows: its own unit's or its upstream unit's.
# A kind not listed gets every table with a unit_id column, for both.
READS = {"ships": (), "ships_dataset": (), "sahara": (("sahara_steps", "self"),),
         "asr": (("sahara_steps", "upstream"), ("ships", "upstream"))}


def chunk_dependencies(kind: str, chunks: list[str]) -> list[set[int]]:
    """For each chunk (by index), the indices of the chunks of the same unit it must wait for."""
    if kind in INDEPENDENT_CHUNKS:
        return [set() for _ in chunks]
    if kind == "sahara":
        from shb.metrics.sahara import chunk_step_layer

        steps = [chunk_step_layer(c)[0] for c in chunks]
        members: dict[int, list[int]] = {}
        for i, step in enumerate(steps):
            members.setdefault(step, []).append(i)
        ordered = sorted(members)
        deps = []
        for i, step in enumerate(steps):
            position = ordered.index(step)
            wait = {members[ordered[position - 1]][-1]} if position else set()  # the previous step's winner
            if i == members[step][-1]:
                wait |= set(members[step][:-1])  # the step's last layer reads the other layers' rows
            deps.append(wait)
        return deps
    return [{i - 1} if i else set() for i in range(len(chunks))]


def _reads(store, unit) -> list[tuple[str, str]]:
    reads = READS.get(unit.metric.kind)
    if reads is None:
        unit_tables = [r[0] for r in store.query(
            "SELECT DISTINCT table_name FROM information_schema.columns WHERE column_name = 'unit_id'"
            " AND table_name IN (SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE')"
            " AND table_name NOT IN ('units', 'chunks') ORDER BY 1").rows()]
        reads = [(table, who) for table in unit_tables for who in ("self", "upstream")]
    return list(reads)


def reads_own_rows(unit) -> bool:
    reads = READS.get(unit.metric.kind)
    return reads is None or any(who == "self" for _, who in reads)


def snapshot_tables(store, unit) -> dict:
    """What a worker needs of the database for one chunk of ``unit`` (see READS): table -> polars frame."""
    wanted: dict[str, list[str]] = {}
    for table, who in _reads(store, unit):
        unit_id = unit.unit_id if who == "self" else unit.spec.get("upstream")
        if unit_id:
            wanted.setdefault(table, []).append(unit_id)
    return {table: store.query(f'SELECT * FROM "{table}" WHERE unit_id IN ({", ".join("?" * len(ids))})', ids)
            for table, ids in wanted.items()}


@dataclass
class _Unit:
    unit: Any
    row: dict
    phase: str = "waiting"      # waiting -> planning -> running -> done | failed
    started: float = 0.0
    chunks: list = field(default_factory=list)
    deps: list = field(default_factory=list)
    done: set = field(default_factory=set)
    inflight: set = field(default_factory=set)
    bar: Any = None
    snapshot: Any = None        # an ObjectRef of the upstream rows (immutable once the upstream is done)


@dataclass
class _Slot:
    handle: Any = None
    model_id: str | None = None
    busy: bool = False


def run_units(pending, *, suite, prompts, store, run_id, device, dtype, progress, on_chunk, options: ExecutorOptions,
              log=print, fingerprints: dict | None = None) -> dict:
    """Run ``pending`` (in model order) on Ray actors; returns counts {done, failed, model_loads, workers}."""
    ray = require_ray()
    started_ray = _init(ray, options)
    try:
        return _Driver(ray, pending, suite=suite, prompts=prompts, store=store, run_id=run_id, device=device,
                       dtype=dtype, progress=progress, on_chunk=on_chunk, options=options, log=log,
                       fingerprints=fingerprints).run()
    finally:
        if started_ray:
            ray.shutdown()


def _init(ray, options: ExecutorOptions) -> bool:
    """Connect to ``options.address`` or start a local instance; False if this process already had one."""
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "logging_level": "WARNING"}
    try:
        if options.address:
            ray.init(address=options.address, **kwargs)
        else:
            ray.init(**kwargs)
    except ConnectionError as exc:
        raise UsageError(f"cannot connect to the Ray cluster at {options.address}: {exc}; start one with "
                         "`ray start --head` or check --address") from None
    return True


def worker_resources(cluster: dict, options: ExecutorOptions) -> tuple[float, int]:
    """(GPUs per actor, number of actors) for a cluster with ``cluster`` resources (ray.cluster_resources())."""
    gpus, cpus = float(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    num_gpus = options.num_gpus if options.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if num_gpus > gpus:
        raise UsageError(f"{num_gpus:g} GPU(s) per worker asked, the Ray cluster has {gpus:g}: "
                         "lower --num-gpus (0 runs on CPUs) or add GPU nodes")
    room = min(int(gpus // num_gpus + 1e-9), cpus) if num_gpus > 0 else cpus  # each actor also takes one CPU
    workers = min(options.workers or room, room)
    return num_gpus, max(1, workers)


class _Driver:
    def __init__(self, ray, pending, *, suite, prompts, store, run_id, device, dtype, progress, on_chunk, options,
                 log, fingerprints=None):
        from shb.run import unit_row

        self.ray, self.suite, self.store, self.run_id = ray, suite, store, run_id
        self.progress, self.on_chunk, self.options, self.log = progress, on_chunk, options, log
        self.units = {u.unit_id: _Unit(u, unit_row(u, run_id, suite)) for u in pending}
        self.model_order = list(dict.fromkeys(u.model.id for u in pending))
        self.counts = {"done": 0, "failed": 0, "model_loads": 0}
        self.num_gpus, n_workers = worker_resources(ray.cluster_resources(), options)
        if self.num_gpus == 0 and (device or "").startswith("cuda"):
            raise UsageError(f"device {device} asked, but the Ray workers get no GPU (--num-gpus 0, or a cluster "
                             "without GPUs): pass --num-gpus, or run with --device cpu")
        self.slots = [_Slot() for _ in range(n_workers)]
        self.counts["workers"] = n_workers
        self.inflight: dict[Any, tuple] = {}
        datasets = {d.id: d for d in suite.datasets}
        # By value, not ray.put: Ray can then rebuild a restarted actor without the driver's references.
        self.host_args = (dtype, device, suite, prompts, datasets, fingerprints)
        self.actor = ray.remote(ModelHost).options(num_cpus=1, num_gpus=self.num_gpus,
                                                   max_restarts=options.retries, max_task_retries=options.retries)
        self.unit_bar = progress.add_task("units", total=len(pending))

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict:
        self.log(f"ray: {len(self.slots)} worker(s), {self.num_gpus:g} GPU(s) each, {len(self.units)} unit(s)")
        try:
            while any(u.phase not in ("done", "failed") for u in self.units.values()):
                self._dispatch()
                if not self.inflight:
                    raise RuntimeError("ray executor: units left but nothing to run (a dependency cycle?)")
                self.progress.update(self.unit_bar, description=f"units (ray: {len(self.inflight)} task(s) in flight)")
                ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
                self._collect(ready[0])
        finally:
            for slot in self.slots:
                if slot.handle is not None:
                    self.ray.kill(slot.handle)
            self.progress.update(self.unit_bar, description="units")
        return self.counts

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.busy:
                continue
            task = self._next_task(slot.model_id) if slot.model_id else None
            if task is None:
                model_id = self._switch_to(slot)
                if model_id is None:
                    continue
                if slot.handle is None:
                    slot.handle = self.actor.remote(*self.host_args)
                slot.model_id = model_id  # the actor loads it with this task, in place of its current model
                task = self._next_task(model_id)
            self._start(slot, *task)

    def _next_task(self, model_id):
        for state in self.units.values():
            if state.unit.model.id != model_id:
                continue
            if state.phase == "waiting" and self._upstream_settled(state):
                return ("plan", state, None)
            if state.phase == "running":
                for i, chunk in enumerate(state.chunks):
                    if chunk not in state.done and chunk not in state.inflight and all(
                            state.chunks[j] in state.done for j in state.deps[i]):
                        return ("chunk", state, chunk)
        return None

    def _switch_to(self, slot):
        """The model an idle actor should load next: another with work, when its own model is finished or when
        that one has no actor and its own has others. (The actor process stays; only the model changes.)"""
        holders = {m: sum(s.model_id == m for s in self.slots) for m in self.model_order}
        mine_left = slot.model_id is not None and any(
            s.unit.model.id == slot.model_id and s.phase not in ("done", "failed") for s in self.units.values())
        for model_id in self.model_order:
            if model_id == slot.model_id or self._next_task(model_id) is None:
                continue
            if not mine_left or (holders[model_id] == 0 and holders[slot.model_id] > 1):
                return model_id
        return None

    def _upstream_settled(self, state) -> bool:
        upstream = self.units.get(state.unit.spec.get("upstream"))
        return upstream is None or upstream.phase in ("done", "failed")

    def _start(self, slot, what, state, chunk) -> None:
        if what == "plan":
            state.phase, state.started = "planning", time.perf_counter()
            self.store.upsert_unit(state.row)
            ref = slot.handle.chunks.remote(state.unit)
        else:
            state.inflight.add(chunk)
            ref = slot.handle.run_chunk.remote(state.unit, chunk, self._snapshot(state))
        slot.busy = True
        self.inflight[ref] = (slot, what, state, chunk)

    def _snapshot(self, state):
        """The rows the chunk reads: a dict table -> polars frame, or an ObjectRef of one."""
        if state.snapshot is not None:
            return state.snapshot
        tables = snapshot_tables(self.store, state.unit)
        if not reads_own_rows(state.unit):  # upstream rows are fixed for the unit's lifetime: ship them once
            state.snapshot = self.ray.put(tables)
            return state.snapshot
        return tables

    # -- results ----------------------------------------------------------------------------------
    def _collect(self, ref) -> None:
        slot, what, state, chunk = self.inflight.pop(ref)
        slot.busy = False
        state.inflight.discard(chunk)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the worker died more often than Ray may restart it
            self.ray.kill(slot.handle)
            slot.handle, slot.model_id = None, None
            if state.phase in ("done", "failed"):
                return
            self._fail(state, f"worker died running {chunk or 'the chunk list'} of unit {state.unit.unit_id} "
                              f"({self.options.retries} restart(s) allowed): {exc}")
            return
        if result.model_row is not None:
            self.counts["model_loads"] += 1
            with self.store.transaction():
                self.store.insert("models", [result.model_row])
        if result.input_rows:
            with self.store.transaction():
                for table, rows in result.input_rows.items():
                    self.store.insert(table, rows)
        if state.phase == "failed":
            return  # a chunk of a unit that already failed: dropped
        if result.shb_error is not None:
            raise result.shb_error  # bad input: the run stops, as a local run does
        if result.error is not None:
            self._fail(state, result.error)
            return
        if what == "plan":
            state.chunks = result.rows["chunks"]
            state.deps = chunk_dependencies(state.unit.metric.kind, state.chunks)
            state.done = self.store.done_chunks(state.unit.unit_id) & set(state.chunks)
            state.phase = "running"
            state.bar = self.progress.add_task(f"  {state.unit.metric.kind} chunks", total=len(state.chunks),
                                               completed=len(state.done))
        else:
            self.store.commit_chunk(state.unit.unit_id, chunk, self.run_id, result.rows, result.seconds)
            state.done.add(chunk)
            if self.on_chunk is not None:
                self.on_chunk(state.unit.unit_id, chunk)
            self.progress.advance(state.bar)
        if len(state.done) == len(state.chunks):
            state.phase = "done"
            self.store.upsert_unit({**state.row, "status": "done", "seconds": time.perf_counter() - state.started,
                                    "n_chunks": len(state.chunks)})
            self._settle(state, "done")

    def _fail(self, state, error: str) -> None:
        state.phase = "failed"
        self.store.upsert_unit({**state.row, "status": "failed", "error": error[-4000:],
                                "seconds": time.perf_counter() - state.started})
        self._settle(state, "failed")
        if os.environ.get("SHB_RAISE"):
            raise RuntimeError(f"unit {state.unit.unit_id} failed:\n{error}")

    def _settle(self, state, outcome: str) -> None:
        self.counts[outcome] += 1
        if state.bar is not None:
            self.progress.remove_task(state.bar)
        self.progress.advance(self.unit_bar)
