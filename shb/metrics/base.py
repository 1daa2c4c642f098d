"""The metric protocol and the context a unit runs in.

A metric kind is one module: a ``Metric`` subclass that declares everything shb needs to know about
the kind, so ``shb.suite``, ``shb.plan``, ``shb.run``, ``shb.preflight`` and the executors hold no
branch on a kind's name (docs/design.md, "A metric is one file"):

- the suite: ``schema`` (its keys, a JSON Schema fragment assembled into the suite schema),
  ``problems`` (checks JSON Schema cannot express), ``geometry_problems`` (against a model's layers
  and heads);
- identity: ``defaults`` and ``uses_seed`` (what its unit id hashes), ``upstream`` (the metric whose
  results it reads, e.g. Sahara's heads), ``dataset_reads`` (other datasets it reads), ``judge_labels`` (the
  judge labels it uses), ``baseline_ignores`` (the parameters that say what is changed, which a k = 0
  baseline need not share);
- the store: ``tables`` (the tables a new kind creates, DDL; the kinds that came before keep theirs in
  shb.store's numbered migrations);
- running: ``chunks``, ``run_chunk``, and what its chunks need besides the model and the prompts, from
  which executors derive everything (shb.executors): ``reads(unit, chunk)`` names the stored rows a
  chunk reads through ``ctx.store`` (the executor hands it a snapshot holding exactly those), and
  ``after(unit, chunks)`` which earlier chunks each one waits for (a fit before the generations that
  apply it, a Sahara step after the previous step's winner);
- ``shb plan``'s cost: ``estimate`` (forward-pass equivalents), ``unmodified_work`` (the part of it a run
  shares between units: the unmodified model's answers) and ``cost_class`` (kinds of one class share a
  measured seconds-per-forward rate where their own kind has none).
The declarations run without torch (``shb validate`` and ``shb plan`` call them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from shb.errors import UsageError

EVERY_UNIT_TABLE = "*"

# The unmodified model's answers are computed once per loaded model and prompt chunk (see
# UnitContext.unmodified_answers); False computes them again in every unit (the plain path, which
# tests compare against).
REUSE_UNMODIFIED_ANSWERS = True


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
    progress: Any = None         # shb.progress.Progress or None
    shared: dict = field(default_factory=dict)
    suite: Any = None            # shb.suite.Suite: entries a unit refers to by id (second datasets, interventions)

    @property
    def seed(self) -> int:
        """The unit's seed, read from its identity (``metric``, the parameters its id hashes): a metric
        that draws random numbers declares ``uses_seed``, so two seeds are never one unit."""
        if "seed" not in self.metric:
            raise RuntimeError(f"metric '{self.ids.get('metric_id')}' reads a seed, but its unit id does not hash "
                               "one: its kind must declare uses_seed() for these parameters (shb.metrics.base)")
        return self.metric["seed"]

    def cached(self, key, factory: Callable[[], Any]):
        if key not in self.shared:
            self.shared[key] = factory()
        return self.shared[key]

    def unmodified_answers(self, texts: list[str], config: dict, compute: Callable[[], list], progress=None) -> list:
        """The unmodified model's answers to ``texts`` (formatted prompts) under ``config`` (decoding,
        max_new_tokens, answer prefix, batch size, first index: everything ``shb.generate.generate`` reads
        besides the model): ``compute()`` the first time, the same answers to every later unit of this
        loaded model that asks for the same chunk. The k = 0 answers of a suite's asr units and of each
        utility unit are one computation (greedy decoding, or per-row sampling seeds: the same answers
        either way), which a suite on a real model otherwise repeats once per unit (eight times more on
        suites/qwen-coder.json). Each unit still writes its own rows. ``progress`` advances by the number
        of answers on a reuse, as generating them would have."""
        if not REUSE_UNMODIFIED_ANSWERS:
            return compute()
        key = ("unmodified-answers", tuple(texts), json.dumps(config, sort_keys=True, default=str))
        if key not in self.shared:
            self.shared[key] = compute()
        elif progress is not None:
            progress(len(self.shared[key]))
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


# Metric keys that do not change results (the engine and the naive loop agree to 1e-5), or that
# are labels: never part of a unit id.
NON_RESULT_KEYS = frozenset({"id", "description", "models", "datasets", "ablations", "strategy", "batch_size"})
STRATEGY_SCHEMA = {"enum": ["engine", "naive"]}                         # suite keys several kinds share
LAYERS_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0}}


class Metric:
    """Base class: ``chunks`` lists the unit's commit points, named by what they cover (a layer, a
    Sahara step, a range of prompts), in an order that runs them one by one; ``run_chunk`` computes
    one and returns rows (table -> rows), writing nothing. The class attributes and the methods up to
    ``estimate`` are the kind's declarations (see the module docstring); they need no model."""

    kind = ""
    schema: dict = {"properties": {}, "required": []}   # the kind's own suite keys (JSON Schema)
    defaults: dict = {}                                  # parameters hashed when the suite leaves them out
    baseline_ignores: tuple = ()                         # parameters a k = 0 baseline need not share
    tables: dict = {}                                    # table -> CREATE TABLE statement (new kinds)
    # What one forward-pass equivalent of ``estimate`` costs is alike within a class: "forward" (prompt
    # passes, batched over heads or prompts) or "generate" (token-by-token decoding, answers that stop early).
    cost_class = "forward"

    # -- identity --------------------------------------------------------------------------------
    def uses_seed(self, params: dict) -> bool:
        """Whether the unit's results depend on a seed (the metric's ``seed``, else the suite's
        default): then the seed is part of its identity, and ``UnitContext.seed`` reads it there."""
        return False

    def identity(self, params: dict, suite_defaults: dict) -> dict:
        """What the unit id hashes of the metric: its kind, parameters after defaults, the seed where it
        matters. Labels and keys that do not change results are left out."""
        key = {"kind": self.kind, **self.defaults,
               **{k: v for k, v in params.items() if k not in NON_RESULT_KEYS}}
        if self.uses_seed(params):
            key.setdefault("seed", suite_defaults.get("seed", 0))
        return key

    def upstream(self, params: dict, metrics) -> str | None:
        """The id of the metric (of ``metrics``, the suite's entries) whose results this one reads
        (Sahara's chosen heads, per-prompt Ships); its unit of the same model, ablation
        (``upstream_ablation``) and dataset (``upstream_dataset``) runs first and its unit id is part of this one's."""
        return None

    def upstream_dataset(self, params: dict, dataset_id: str) -> str:
        """The dataset of the upstream unit: the cell's own, or ``heads_dataset`` (heads chosen on
        another dataset, e.g. a holdout's select part)."""
        return params.get("heads_dataset", dataset_id)

    def upstream_ablation(self, params: dict, ablation_id: str) -> str:
        """The ablation of the upstream unit: the cell's own, or ``heads_ablation`` (heads found with one
        ablation, applied with another)."""
        return params.get("heads_ablation", ablation_id)

    def dataset_reads(self, params: dict) -> list[str]:
        """Ids of suite datasets read besides the cell's (benign prompts): their content keys the unit."""
        return []

    def judge_labels(self, params: dict) -> dict[str, dict]:
        """{judge label: its configuration} of the judges whose verdicts the unit stores with a judge
        label (one label names one judge configuration in a database)."""
        return {}

    # -- the suite -------------------------------------------------------------------------------
    def anchor_paths(self, metric: dict, anchored: Callable[[str], str]) -> None:
        """Make the file paths among the metric's keys relative to the suite file's directory, in place
        (``anchored(path)``); shb.suite.anchor_paths calls it as the suite is read."""

    def problems(self, i: int, metric: dict, data: dict, ids: dict) -> list[str]:
        """What JSON Schema cannot check of the metric at /metrics/i: ``data`` is the whole suite,
        ``ids`` {section: {id: index}}. One line each, with its JSON pointer."""
        return []

    def geometry_problems(self, i: int, params: dict, layers: int, heads: int, where: str) -> list[str]:
        """Problems against a model's geometry (``layers`` x ``heads``, ``where``: how it is known);
        the layers a sweep names are checked for every kind by shb.preflight."""
        return []

    def estimate(self, unit, geometry: dict) -> int:
        raise NotImplementedError

    def unmodified_work(self, unit) -> tuple[str, int] | None:
        """(key, forward-pass equivalents) of the unmodified model's answers within ``estimate``, which a
        run computes once for every unit with the same key (``UnitContext.unmodified_answers``), so
        ``shb plan`` prices them once; None when the kind generates no such answers."""
        return None

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
    """Forward-pass equivalents of a one-head-at-a-time sweep, plus the base pass. The paper's loop
    (strategy ``naive``) runs a whole forward per head and prompt; the engine starts a head of layer l
    on the cached hidden states entering l, so it costs (L - l) / L of one (shb.engine)."""
    return unit.n_prompts * round(1 + heads_work(unit, geometry))


def heads_work(unit, geometry: dict) -> float:
    """Forward-pass equivalents of scoring every swept head once on one prompt (see ``sweep_forwards``)."""
    n_layers = geometry["layers"]
    layers = unit.metric.get("layers") or range(n_layers)
    if unit.metric.get("strategy") == "naive":
        return len(set(layers)) * geometry["heads"]
    return geometry["heads"] * sum((n_layers - layer) / n_layers for layer in set(layers))


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
