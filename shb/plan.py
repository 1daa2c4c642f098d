"""Expand a suite into work units, give each a stable id, mark what the store holds, estimate cost.

A unit is one cell of models x datasets x ablations x metrics. Its id hashes everything that
changes its results (model source and dtype, dataset content, ablation, metric parameters,
UNIT_ID_VERSION) and nothing that does not (device, batch size, strategy), so rerunning a
suite, or another suite with the same cell, finds the finished work. No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from shb import datasets as ds
from shb.errors import UsageError
from shb.suite import Entry, Suite

UNIT_ID_VERSION = 1
# Metric keys that do not change results (the engine and the naive loop agree to 1e-5).
NON_RESULT_KEYS = {"id", "description", "models", "datasets", "ablations", "strategy", "batch_size"}
ABLATION_DEFAULTS = {"undifferentiated": {"epsilon": 1e-5, "site": "q"}, "scaling": {"epsilon": 1e-5},
                     "mean": {"site": "q"}, "zero": {}}
METRIC_DEFAULTS = {
    "ships": {},
    "ships_dataset": {"r": 1},
    "sahara": {"steps": 5, "score": "ships_dataset", "r": 1},
    "asr": {"judge": "keyword-paper", "decoding": {"mode": "greedy"}, "max_new_tokens": 128},
}
ASSUMED_PROMPT_TOKENS = 48      # for cost estimates when prompts are not tokenized at plan time
ASSUMED_GPU_FLOPS = 2.0e14      # sustained bf16 FLOP/s of one modern datacentre GPU, for estimates


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class WorkUnit:
    unit_id: str
    model: Entry
    dataset: Entry
    ablation: Entry
    metric: Entry
    spec: dict = field(hash=False, compare=False)   # the resolved spec the id hashes
    n_prompts: int = 0
    status: str = "pending"                          # pending | done | failed | running (from the store)
    cost_forwards: int | None = None                 # forward passes of a full prompt
    cost_gpu_seconds: float | None = None

    @property
    def label(self) -> str:
        return f"{self.model.id} / {self.dataset.id} / {self.ablation.id} / {self.metric.id}"


def model_key(model: Entry, defaults: dict) -> dict:
    params = {k: v for k, v in model.params.items() if k not in ("description", "geometry", "dtype")}
    key = {"kind": model.kind, **params, "dtype": model.get("dtype", defaults.get("dtype", "float32"))}
    if model.kind == "toy":
        key.setdefault("seed", 0)
        key["toy_version"] = _toy_version()
    return key


def _toy_version():
    try:
        from shb.models import toy

        return getattr(toy, "TOY_VERSION", None)
    except ImportError:
        return None


def dataset_key(dataset: Entry, content: str) -> dict:
    return {"kind": dataset.kind, "content": content,
            "format": dataset.get("format", "direct"), "system": dataset.get("system")}


def ablation_key(ablation: Entry) -> dict:
    return {"kind": ablation.kind, **ABLATION_DEFAULTS[ablation.kind],
            **{k: v for k, v in ablation.params.items() if k != "description"}}


def metric_key(metric: Entry, defaults: dict) -> dict:
    params = {k: v for k, v in metric.params.items() if k not in NON_RESULT_KEYS}
    key = {"kind": metric.kind, **METRIC_DEFAULTS.get(metric.kind, {}), **params}
    if metric.kind == "asr":
        key.setdefault("seed", defaults.get("seed", 0))
    return key


def _applies(metric: Entry, section: str, entry: Entry) -> bool:
    wanted = metric.get(section)
    return wanted is None or entry.id in wanted


def load_prompts(suite: Suite) -> dict[str, list]:
    """Prompts of every dataset of the suite."""
    return {d.id: ds.load(d.spec()) for d in suite.datasets}


def identities(suite: Suite, prompts: dict[str, list] | None = None) -> dict[str, tuple[str, int]]:
    """(content hash, size) of every dataset; upstream benchmarks need no download (see datasets.identity)."""
    prompts = prompts or {}
    return {d.id: ds.identity(d.spec(), prompts.get(d.id)) for d in suite.datasets}


def expand(suite: Suite, prompts: dict[str, list] | None = None) -> list[WorkUnit]:
    """All units of the suite in execution order: suite order, except that a metric whose heads come
    from another metric's result (asr on sahara or ships) runs after it."""
    datasets = identities(suite, prompts)
    metrics = sorted(suite.metrics, key=lambda m: _upstream_metric(m, suite) is not None)  # stable
    units = []
    by_cell: dict[tuple, str] = {}
    for metric in metrics:
        upstream = _upstream_metric(metric, suite)
        for model in suite.models:
            if not _applies(metric, "models", model):
                continue
            for dataset in suite.datasets:
                if not _applies(metric, "datasets", dataset):
                    continue
                applied = metric.get("intervention")
                for ablation in suite.ablations:
                    if not _applies(metric, "ablations", ablation):
                        continue
                    if applied and (metric.id, model.id, dataset.id) in by_cell:
                        continue  # an intervention does not depend on the head-ablation kind: one unit
                    spec = {
                        "version": UNIT_ID_VERSION,
                        "model": model_key(model, suite.defaults),
                        "dataset": dataset_key(dataset, datasets[dataset.id][0]),
                        "ablation": ablation_key(ablation),
                        "metric": metric_key(metric, suite.defaults),
                    }
                    if applied:
                        # What is applied is the intervention's content (its fit id), not its label.
                        from shb.baselines.fits import intervention_key

                        spec["ablation"] = {"kind": "none"}
                        spec["metric"].pop("intervention", None)
                        spec["intervention"] = intervention_key(suite, suite.intervention(applied), model, datasets)
                        by_cell[(metric.id, model.id, dataset.id)] = True
                    if upstream:
                        # The heads come from another unit's result: its id is part of this one's.
                        source = by_cell.get((model.id, dataset.id, ablation.id, upstream))
                        if source is None:
                            raise UsageError(
                                f"metric '{metric.id}' takes its heads from metric '{upstream}', which does not run on "
                                f"model '{model.id}', dataset '{dataset.id}', ablation '{ablation.id}': "
                                f"add that combination to '{upstream}' or restrict '{metric.id}' with its "
                                "models/datasets/ablations lists")
                        spec["upstream"] = source
                    unit_id = "u" + _hash(spec)[:15]
                    by_cell[(model.id, dataset.id, ablation.id, metric.id)] = unit_id
                    units.append(WorkUnit(unit_id, model, dataset, ablation, metric, spec, datasets[dataset.id][1]))
    return units


def _upstream_metric(metric: Entry, suite: Suite) -> str | None:
    """The id of the metric whose results choose this metric's heads, if any."""
    heads = metric.get("heads")
    if isinstance(heads, str) and heads.startswith("sahara:"):
        return heads.split(":", 1)[1]
    if heads == "ships_per_prompt":
        return next(m.id for m in suite.metrics if m.kind == "ships")
    return None


def geometry(model: Entry) -> dict | None:
    """Layers, heads and parameter count from config.json on disk, or the suite's ``geometry`` hint."""
    from shb import models

    if model.kind == "toy":
        config = _toy_config()
    else:
        config = models.config_dict(model.get("path"), model.get("revision"))
    if config:
        return models.geometry_from_config(config)
    hint = model.get("geometry")
    if hint:
        return {"layers": hint["layers"], "heads": hint["heads"], "hidden": None, "n_params": hint.get("params")}
    return None


def _toy_config() -> dict | None:
    try:
        from shb.models import toy

        return toy.config_dict() if hasattr(toy, "config_dict") else None
    except ImportError:
        return None


def estimate(unit: WorkUnit, geom: dict | None) -> tuple[int | None, float | None]:
    """(forward passes of a full prompt, GPU seconds) for the unit; None where the geometry is unknown."""
    from shb.registry import METRICS, resolve

    if not geom or not geom.get("layers"):
        return None, None
    metric = resolve(METRICS, unit.metric.kind, "metric")()
    forwards = metric.estimate(unit, geom)
    seconds = None
    if geom.get("n_params"):
        seconds = 2.0 * geom["n_params"] * ASSUMED_PROMPT_TOKENS * forwards / ASSUMED_GPU_FLOPS
    return forwards, seconds


def plan(suite: Suite, store=None, prompts=None) -> list[WorkUnit]:
    """Units with their status in ``store`` (if given) and cost estimates."""
    from dataclasses import replace

    units = expand(suite, prompts)
    status = store.unit_status() if store is not None else {}
    geoms = {m.id: geometry(m) for m in suite.models}
    out = []
    for unit in units:
        forwards, seconds = estimate(unit, geoms[unit.model.id])
        out.append(replace(unit, status=status.get(unit.unit_id, "pending"),
                           cost_forwards=forwards, cost_gpu_seconds=seconds))
    return out
