"""What an asr chunk applies: a head set (through generate's own hooks) or an intervention (a
context around generation), and the parameters it modifies, measured on the loaded model and
stored with every generation (``intervention_id``, ``intervention``, ``params_entries``,
``params_dof``), so that ``shb report efficiency`` needs no torch."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from shb.baselines.fits import intervention_for
from shb.interventions import HeadAblation

NO_HEADS = {"kind": "undifferentiated", "epsilon": 1e-5, "site": None}


@dataclass
class Target:
    context: Any
    head_ablation: dict
    source: str | None
    ablation_id: str | None
    _columns: Any = field(repr=False, default=None)

    def columns(self, heads) -> dict:
        return self._columns(tuple(heads))


def _counted(intervention, lm) -> dict:
    count = intervention.parameters_modified(lm)
    return {"intervention": intervention.identity(), "params_entries": count.entries, "params_dof": count.dof}


def target(unit, ctx, k: int, sets) -> Target:
    """How this chunk changes the model: ``sets`` (one head set per prompt) or the unit's intervention."""
    key = unit.spec.get("intervention")
    if key is None:
        kind = {"kind": ctx.ablation["kind"], "epsilon": ctx.ablation.get("epsilon", 1e-5),
                "site": ctx.ablation.get("site")}

        def columns(heads):
            def count():
                return _counted(HeadAblation(heads, kind["kind"], kind["epsilon"], kind["site"]), ctx.lm)

            return {"intervention_id": None, **ctx.cached(("params-modified", kind["kind"], kind["site"], heads), count)}

        return Target(contextlib.nullcontext(), kind, None, unit.ablation.id, columns)
    label = unit.metric.get("intervention")
    intervention = intervention_for(unit, ctx)
    measured = ctx.cached(("params-modified", "intervention", unit.unit_id), lambda: _counted(intervention, ctx.lm))
    identity = {**measured["intervention"], "fit_id": key.get("fit_id")}
    return Target(intervention.applied(ctx.lm), dict(NO_HEADS), f"intervention:{label}", None,
                  lambda heads: {"intervention_id": label, **measured, "intervention": identity})
