"""The metric protocol and the context a unit runs in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


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
        from shb.engine import Engine

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
    """Base class: ``chunks`` lists the unit's commit points in order, ``run_chunk`` computes one."""

    kind = ""

    def estimate(self, unit, geometry: dict) -> int:
        raise NotImplementedError

    def chunks(self, unit, ctx: UnitContext) -> list[str]:
        raise NotImplementedError

    def run_chunk(self, unit, ctx: UnitContext, chunk: str) -> dict[str, list[dict]]:
        raise NotImplementedError


def swept_layers(params: dict, n_layers: int, metric_id: str) -> list[int]:
    """The layers a head sweep covers (``layers`` parameter, default all), checked against the model."""
    layers = list(params.get("layers") or range(n_layers))
    bad = [layer for layer in layers if not isinstance(layer, int) or not 0 <= layer < n_layers]
    if bad:
        from shb.errors import UsageError

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
        from shb.errors import UsageError

        raise UsageError(f"metric '{metric_id}': r must be an integer in [1, {n_prompts}] (the number of prompts),"
                         f" got {r!r}")
    return r


def layer_chunk(layer: int) -> str:
    return f"layer-{layer:03d}"


def chunk_layer(chunk: str) -> int:
    return int(chunk.rsplit("-", 1)[1])
