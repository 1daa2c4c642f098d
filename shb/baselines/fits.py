"""Fits of interventions: keyed by content, computed once, stored in the ``fits`` table, reused.

A fit's id (``shb.plan.Resolution.intervention_key``, computed at plan time) hashes what changes its
artefact: the model's key and the reference model's key exactly as the units hash them (weights, dtype
resolved for the run's device), the content of the fit datasets (harmful, harmless) with their prompt
format, the method's kind and parameters, and FIT_VERSION; never labels, device or batch size. The
reference model loads the way every model of a unit does (``WorkUnit.loads``: its fingerprinted
revision, its resolved dtype), so the fit computed is the one its id names. An ``asr`` or ``utility`` unit that applies a fitted
intervention has the chunk ``fit`` first (every other chunk waits for it; ``Metric.after``): it computes and commits the fit
(artefact bytes, meta, parameters modified) in one transaction with its done mark, or finds it
already stored by another unit or run and commits nothing. A SIGKILL during a fit loses that fit
(one chunk); fits are deterministic, so the rerun stores the same artefact. No torch at import
(the methods' modules, resolved through shb.registry, import it).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import time

from shb import datasets as ds
from shb.ablation import parse_heads
from shb.baselines.base import Artefact, FitData, fit_cost
from shb.errors import UsageError
from shb.interventions import HeadAblation, PointEdit
from shb.registry import INTERVENTIONS, resolve

FIT_VERSION = 1
FIT_KEYS = ("harmful", "harmless", "reference", "max_new_tokens")
HEAD_DEFAULTS = {"ablation": "undifferentiated", "epsilon": 1e-5, "site": None}


def method_params(entry) -> dict:
    return {k: v for k, v in entry.params.items() if k not in ("fit", "description")}


# -- run time (torch in the methods' modules, resolved by kind) -----------------------------------
def _module(kind: str):
    return resolve(INTERVENTIONS, kind, "intervention")


def fit_work(kind: str, params: dict, n_harmful: int, n_harmless: int, n_layers: int,
             max_new_tokens: int) -> dict[str, float]:
    """Forward-pass equivalents of a full prompt that fitting costs, by cost class (``forward``,
    ``generate``: shb.baselines.base.fit_cost; shb.plan prices each at its measured rate): the method
    module's ``fit_work``, else one pass per fit prompt."""
    own = getattr(_module(kind), "fit_work", None)
    if own is None:
        return fit_cost(forward=n_harmful + n_harmless)
    return own(params, n_harmful, n_harmless, n_layers, max_new_tokens)


def _stored(store, fit_id: str):
    rows = store.con.execute("SELECT artefact FROM fits WHERE fit_id = ?", [fit_id]).fetchall()
    return rows[0][0] if rows else None


def fit_data(unit, ctx, entry):
    """FitData for ``entry``: the fit datasets formatted for this model, the reference model loaded."""
    fit = entry.get("fit") or {}
    by_id = {d.id: d for d in ctx.suite.datasets}

    def prompts(key):
        if not fit.get(key):
            return []
        d = by_id[fit[key]]
        return [ds.format_prompt(p.text, d.get("format", "direct"), ctx.lm.tokenizer, d.get("system"))
                for p in ds.load(d.spec())]

    reference = None
    if fit.get("reference"):
        reference = _reference(unit, ctx, fit["reference"])
    return FitData(harmful=prompts("harmful"), harmless=prompts("harmless"), reference=reference,
                   max_new_tokens=fit.get("max_new_tokens", 32))


def _reference(unit, ctx, model_id: str):
    """The fit's reference model, loaded once per runner from the unit's resolved load spec."""
    from shb.models import load_resolved

    return ctx.cached(("reference-model", model_id), lambda: load_resolved(unit.loads[model_id].spec, ctx.device))


def fit_chunk(unit, ctx) -> dict[str, list[dict]]:
    """The ``fit`` chunk of an asr unit: the fits row, or nothing when the fit is already stored."""
    key = unit.spec["intervention"]
    if _stored(ctx.store, key["fit_id"]) is not None:
        return {}
    entry = ctx.suite.intervention(unit.metric.get("intervention"))
    module = _module(entry.kind)
    started = time.perf_counter()
    artefact = module.fit(ctx.lm, fit_data(unit, ctx, entry), method_params(entry),
                          progress=ctx.advance_fn(f"  fitting {entry.kind}"))
    blob = artefact.to_bytes()
    artefact.meta["_sha256"] = hashlib.sha256(blob).hexdigest()
    counted = _build(module, artefact, entry, unit, ctx).parameters_modified(ctx.lm)
    return {"fits": [{"fit_id": key["fit_id"], "kind": entry.kind, "intervention_id": entry.id,
                      "model_id": unit.model.id, "spec": key["fit"], "meta": _json_safe(artefact.meta),
                      "artefact": blob, "artefact_sha256": artefact.meta["_sha256"],
                      "params_entries": counted.entries, "params_dof": counted.dof, "n_params": ctx.lm.n_params(),
                      "seconds": time.perf_counter() - started, "unit_id": unit.unit_id}]}


def _build(module, artefact, entry, unit, ctx):
    """module.intervention(artefact, params), with the reference model for methods that patch from it (DAP)."""
    fit = entry.get("fit") or {}
    if fit.get("reference") and "reference" in inspect.signature(module.intervention).parameters:
        reference = _reference(unit, ctx, fit["reference"])
        return module.intervention(artefact, method_params(entry), reference=reference)
    return module.intervention(artefact, method_params(entry))


def _json_safe(value):
    """NaN and infinities are not JSON: stored as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def intervention_for(unit, ctx):
    """The Intervention an asr unit applies (loaded from the fits table for fitted kinds)."""
    key = unit.spec["intervention"]
    if key["kind"] == "heads":
        return HeadAblation(tuple(parse_heads(key["heads"])), key["ablation"], key["epsilon"], key["site"])
    if key["kind"] == "points":
        return PointEdit.from_params(key, f"interventions/{unit.metric.get('intervention')}")

    def load():
        blob = _stored(ctx.store, key["fit_id"])
        if blob is None:
            raise UsageError(f"fit {key['fit_id']} of intervention '{unit.metric.get('intervention')}' is not stored: "
                             "its unit's `fit` chunk must run first")
        artefact = Artefact.from_bytes(blob)
        artefact.meta["_sha256"] = hashlib.sha256(bytes(blob)).hexdigest()
        entry = ctx.suite.intervention(unit.metric.get("intervention"))
        return _build(_module(key["kind"]), artefact, entry, unit, ctx)

    return ctx.cached(("intervention", key["fit_id"]), load)
