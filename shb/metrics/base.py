"""The metric protocol and the context a unit runs in.

A metric declares what its chunks need besides the model and the prompts, and executors derive
everything from these declarations (shb.executors): ``reads(unit, chunk)`` names the stored rows a
chunk reads through ``ctx.store`` (the executor hands it a snapshot holding exactly those), and
``after(unit, chunks)`` which earlier chunks each one waits for (a fit before the generations that
apply it, a Sahara step after the previous step's winner). A new metric touches its own file only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from shb.errors import UsageError

EVERY_UNIT_TABLE = "*"


@dataclass(frozen=True)
class Read:
    """Stored rows a chunk reads: those of ``table`` whose ``column`` holds one of ``values``.
    ``table`` = ``EVERY_UNIT_TABLE``: every results table with a ``unit_id`` column (``column`` is then
    ``unit_id``), the safe default of a metric that declares nothing."""

    table: str
    column: str
    values: tuple

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(v for v in self.values if v is not None))


def unit_rows(table: str, *unit_ids) -> Read:
    """The rows of ``table`` that the given units (None entries skipped) wrote."""
    return Read(table, "unit_id", tuple(unit_ids))


@dataclass
class UnitContext:
    """What a metric needs to run one unit. Shared state (an engine with its cached base pass)
    lives in ``shared``, keyed by what it depends on, so units on the same model, dataset and
    ablation reuse it."""

    lm: Any                      # shb.models.LoadedModel
    prompts: list                # list[shb.datasets.Prompt]
    formatted: list[str]         # prompts as fed to the model
    ablation: dict               # resolved ablation spec (kind, epsilon, site)
    metric: dict                 # metric parameters (resolved defaults + strategy etc.)
    store: Any                   # shb.store.Store
    ids: dict                    # model_id, dataset_id, ablation_id, metric_id, unit_id
    device: str = "cpu"
    batch_size: Any = "auto"
    seed: int = 0
    progress: Any = None         # shb.progress.Progress or None
    shared: dict = field(default_factory=dict)
    suite: Any = None            # shb.suite.Suite: entries a unit refers to by id (second datasets, interventions)

    def cached(self, key, factory: Callable[[], Any]):
        if key not in self.shared:
            self.shared[key] = factory()
        return self.shared[key]

    def engine(self):
        """The scoring engine for this unit's model, prompts and ablation (built once, shared)."""
        from shb.engine import Engine  # torch at import (see shb.metrics)

        return self.cached(self._engine_key(), lambda: Engine(
            self.lm, self.formatted, kind=self.ablation["kind"], epsilon=self.ablation.get("epsilon", 1e-5),
            site=self.ablation.get("site"), strategy=self.metric.get("strategy", "engine"),
            batch_size=self.batch_size, progress=self.advance_fn("  (prompt, head set) evaluations")))

    def _engine_key(self):
        return ("engine", self.ids["model_id"], self.ids["dataset_id"], self.ids["ablation_id"],
                self.metric.get("strategy", "engine"))

    def batch_size_used(self) -> int | None:
        """Rows per forward pass this unit's engine settled on (None when the unit built no engine)."""
        engine = self.shared.get(self._engine_key())
        return None if engine is None else engine.batch_size

    def advance_fn(self, description: str, total: int | None = None):
        """A callable ``advance(n)`` on a progress bar of its own (a no-op without progress)."""
        if self.progress is None:
            return None
        task = self.progress.add_task(description, total=total)
        return lambda n=1: self.progress.advance(task, n)

    def base_row(self) -> dict:
        return {"unit_id": self.ids["unit_id"], "model_id": self.ids["model_id"],
                "dataset_id": self.ids["dataset_id"], "ablation_id": self.ids["ablation_id"]}


class Metric:
    """Base class: ``chunks`` lists the unit's commit points, named by what they cover (a layer, a
    Sahara step, a range of prompts), in an order that runs them one by one; ``run_chunk`` computes
    one and returns rows (table -> rows), writing nothing."""

    kind = ""

    def estimate(self, unit, geometry: dict) -> int:
        raise NotImplementedError

    def chunks(self, unit, ctx: UnitContext) -> list[str]:
        raise NotImplementedError

    def run_chunk(self, unit, ctx: UnitContext, chunk: str) -> dict[str, list[dict]]:
        raise NotImplementedError

    def reads(self, unit, chunk: str) -> list[Read]:
        """The stored rows ``chunk`` reads through ``ctx.store``. Default: every results table's rows of
        this unit and of its upstream unit (safe, if more than most metrics need)."""
        return [Read(EVERY_UNIT_TABLE, "unit_id", (unit.unit_id, unit.spec.get("upstream")))]

    def after(self, unit, chunks: list[str]) -> list[set[int]]:
        """For each chunk (by index), the indices of the earlier chunks it waits for. Default: the one
        before it (strictly in order)."""
        return in_order(chunks)

    def shares(self, unit, chunk: str) -> list[Read]:
        """Rows ``chunk`` writes that chunks of other units read (a fit that several units apply). An
        executor runs no chunk that reads such rows while the chunk writing them is in flight, so the
        second finds them stored instead of computing them again. Default: none."""
        return []


def overlaps(a: list[Read], b: list[Read]) -> bool:
    """Whether two declarations name some of the same rows (``EVERY_UNIT_TABLE`` meets any unit table)."""
    return any((x.table == y.table or EVERY_UNIT_TABLE in (x.table, y.table)) and x.column == y.column
               and set(x.values) & set(y.values) for x in a for y in b)


def in_order(chunks: list[str]) -> list[set[int]]:
    """Each chunk waits for the one before it."""
    return [{i - 1} if i else set() for i in range(len(chunks))]


def independent(chunks: list[str]) -> list[set[int]]:
    """No chunk waits for another."""
    return [set() for _ in chunks]


def after_first(chunks: list[str], first: str) -> list[set[int]]:
    """Every chunk waits for ``first`` when it leads the list (a fit before what applies it)."""
    if chunks and chunks[0] == first:
        return [set()] + [{0} for _ in chunks[1:]]
    return independent(chunks)


def range_chunk(prefix: str, lo: int, hi: int) -> str:
    """A chunk covering prompts lo..hi-1 (indices into the unit's prompt list, fixed by its unit id):
    ``<prefix>-p0000-0031``. Named by what it covers, not by a batch number, so a changed batch size
    cannot make an old done mark stand for other prompts."""
    return f"{prefix}-p{lo:04d}-{hi - 1:04d}"


_RANGE = re.compile(r"-p(\d+)-(\d+)$")


def chunk_range(chunk: str) -> tuple[int, int]:
    """(lo, hi) of a ``range_chunk`` name (hi exclusive)."""
    found = _RANGE.search(chunk)
    if found is None:
        raise ValueError(f"chunk '{chunk}' names no prompt range")
    return int(found.group(1)), int(found.group(2)) + 1


def range_chunks(prefix: str, n: int, size: int) -> list[str]:
    """``n`` prompts in ranges of ``size``."""
    return [range_chunk(prefix, lo, min(n, lo + size)) for lo in range(0, n, size)]


def swept_layers(params: dict, n_layers: int, metric_id: str) -> list[int]:
    """The layers a head sweep covers (``layers`` parameter, default all), checked against the model."""
    layers = list(params.get("layers") or range(n_layers))
    bad = [layer for layer in layers if not isinstance(layer, int) or not 0 <= layer < n_layers]
    if bad:
        raise UsageError(f"metric '{metric_id}': layers {bad} out of range; the model has {n_layers}")
    return layers


def sweep_forwards(unit, geometry: dict) -> int:
    """Full-prompt forward passes of a one-head-at-a-time sweep (plus the base pass), as the paper's loop counts."""
    layers = len(unit.metric.get("layers") or range(geometry["layers"]))
    return unit.n_prompts * (layers * geometry["heads"] + 1)


def subspace_rank(params: dict, n_prompts: int, metric_id: str) -> int:
    """The rank r of generalized Ships' subspaces, checked against the number of prompts."""
    r = params.get("r", 1)
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= n_prompts:
        raise UsageError(f"metric '{metric_id}': r must be an integer in [1, {n_prompts}] (the number of prompts),"
                         f" got {r!r}")
    return r


def layer_chunk(layer: int) -> str:
    return f"layer-{layer:03d}"


def chunk_layer(chunk: str) -> int:
    return int(chunk.rsplit("-", 1)[1])
