"""The Ray executor: actors hold one loaded model each and compute chunks; this process writes.

The driver (shb.run.run_suite) plans as for a local run and hands the pending units here. Each
actor (``shb.executors.worker.WorkerHost`` under ``ray.remote``: the unit runner of shb.runner, as
the local executor runs it) loads the model of its first task and keeps it while its tasks are for
that model, so a model loads once per actor, not once per unit. The driver hands out one task per
actor at a time: a unit's plan (its chunk list and what each waits for), or one chunk with a
snapshot of the rows its metric declared it reads (``Metric.reads``), and hands each returned
chunk to the run's writer (shb.run.RunWriter), the same transaction a local run uses, so the
tables are the same and a run resumes with either executor.

Order: a unit starts once its upstream unit (the Sahara or Ships unit whose heads it ablates) has
settled. Inside a unit, chunks run in parallel except where the metric's ``after`` says otherwise
(a fit before the chunks that apply it, a Sahara step's last layer after the step's other layers).
A chunk that reads rows another unit's chunk in flight writes (``Metric.shares``: a fit that an asr
and a utility unit both apply) waits for it, and then finds them stored. Nothing here knows a metric
by name.

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
from shb.executors.worker import WorkerHost
from shb.metrics.base import EVERY_UNIT_TABLE, overlaps


@dataclass
class _Unit:
    unit: Any
    phase: str = "waiting"      # waiting -> planning -> running -> done | failed
    started: float = 0.0
    chunks: list = field(default_factory=list)
    deps: list = field(default_factory=list)
    done: set = field(default_factory=set)
    inflight: set = field(default_factory=set)
    bar: Any = None
    row: dict = field(default_factory=dict)
    batch_size: int | None = None


@dataclass
class _Slot:
    handle: Any = None
    model_id: str | None = None
    busy: bool = False


def run_units(pending, *, runner_args: dict, writer, progress, options: ExecutorOptions, log=print) -> dict:
    """Run ``pending`` (in model order) on Ray actors; returns counts {done, failed, model_loads, workers}."""
    ray = require_ray()
    started_ray = _init(ray, options)
    try:
        return _Driver(ray, pending, runner_args=runner_args, writer=writer, progress=progress, options=options,
                       log=log).run()
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
    def __init__(self, ray, pending, *, runner_args, writer, progress, options, log):
        self.ray, self.writer = ray, writer
        self.progress, self.options, self.log = progress, options, log
        self.units = {u.unit_id: _Unit(u) for u in pending}
        device = runner_args.get("device")
        self.model_order = list(dict.fromkeys(u.model.id for u in pending))
        self.counts = {"done": 0, "failed": 0, "model_loads": 0}
        self.num_gpus, n_workers = worker_resources(ray.cluster_resources(), options)
        if self.num_gpus == 0 and (device or "").startswith("cuda"):
            raise UsageError(f"device {device} asked, but the Ray workers get no GPU (--num-gpus 0, or a cluster "
                             "without GPUs): pass --num-gpus, or run with --device cpu")
        self.slots = [_Slot() for _ in range(n_workers)]
        self.counts["workers"] = n_workers
        self.inflight: dict[Any, tuple] = {}
        # By value, not ray.put: Ray can then rebuild a restarted actor without the driver's references.
        self.host_args = (runner_args,)
        # Snapshots shipped once and reused while no commit touches their tables: reads -> ObjectRef.
        self.snapshots: dict[tuple, Any] = {}
        self.actor = ray.remote(WorkerHost).options(num_cpus=1, num_gpus=self.num_gpus,
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
                            state.chunks[j] in state.done for j in state.deps[i]) and not self._shared_inflight(
                            state.unit, chunk):
                        return ("chunk", state, chunk)
        return None

    def _shared_inflight(self, unit, chunk) -> bool:
        """Whether a chunk in flight writes rows this chunk reads (``Metric.shares``: a fit two units apply)."""
        reads = self.writer.reads(unit, chunk)
        return any(what == "chunk" and overlaps(self.writer.metric(other.unit).shares(other.unit, other_chunk), reads)
                   for _, what, other, other_chunk in self.inflight.values())

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
            state.row = self.writer.unit_started(state.unit)
            ref = slot.handle.plan.remote(state.unit)
        else:
            state.inflight.add(chunk)
            ref = slot.handle.run_chunk.remote(state.unit, chunk, self._snapshot(state, chunk))
        slot.busy = True
        self.inflight[ref] = (slot, what, state, chunk)

    def _snapshot(self, state, chunk):
        """The rows the chunk declared it reads, as an ObjectRef shared by every chunk that reads the same."""
        reads = tuple(self.writer.reads(state.unit, chunk))
        if reads not in self.snapshots:
            self.snapshots[reads] = self.ray.put(self.writer.snapshot(list(reads)))
        return self.snapshots[reads]

    def _committed(self, tables) -> None:
        """Forget the snapshots that read a table just written (the next chunk that reads it gets a fresh one)."""
        self.snapshots = {reads: ref for reads, ref in self.snapshots.items()
                          if not any(r.table in tables or r.table == EVERY_UNIT_TABLE for r in reads)}

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
        self.counts["model_loads"] += result.loaded
        self.writer.inputs(result.inputs)
        if state.phase == "failed":
            return  # a chunk of a unit that already failed: dropped
        if result.shb_error is not None:
            raise result.shb_error  # bad input: the run stops, as a local run does
        if result.error is not None:
            self._fail(state, result.error)
            return
        if what == "plan":
            state.chunks, state.deps = result.rows["chunks"], result.rows["after"]
            state.done = self.writer.done_chunks(state.unit) & set(state.chunks)
            state.phase = "running"
            state.bar = self.progress.add_task(f"  {state.unit.metric.kind} chunks", total=len(state.chunks),
                                               completed=len(state.done))
        else:
            self.writer.chunk(state.unit, chunk, result.rows, result.seconds)
            self._committed(set(result.rows))
            state.done.add(chunk)
            state.batch_size = result.batch_size if result.batch_size is not None else state.batch_size
            self.progress.advance(state.bar)
        if len(state.done) == len(state.chunks):
            state.phase = "done"
            self.writer.unit_done(state.row, time.perf_counter() - state.started, len(state.chunks), state.batch_size)
            self._settle(state, "done")

    def _fail(self, state, error: str) -> None:
        state.phase = "failed"
        self.writer.unit_failed(state.row, time.perf_counter() - state.started, error)
        self._settle(state, "failed")
        if os.environ.get("SHB_RAISE"):
            raise RuntimeError(f"unit {state.unit.unit_id} failed:\n{error}")

    def _settle(self, state, outcome: str) -> None:
        self.counts[outcome] += 1
        if state.bar is not None:
            self.progress.remove_task(state.bar)
        self.progress.advance(self.unit_bar)
