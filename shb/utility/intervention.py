"""What a utility unit applies at head-set size k: one function, so that new kinds of
intervention (the baselines of issue 11) are a few lines here.

``intervention_for(unit, ctx, k)`` returns an ``shb.interventions.Intervention``:
- k = 0: ``NoIntervention`` (the unmodified model, measured beside every intervention);
- otherwise a ``HeadAblation`` of the head set that the ``asr`` metric would ablate for the same
  parameters (``sahara:<id>``: the first k heads Sahara chose; ``random``: k heads drawn with
  ``seed``; an explicit list), with the unit's ablation kind, epsilon and site.
- with ``intervention: <id>`` (a fitted baseline): at k = 1 the fitted intervention, loaded from the
  ``fits`` table as the asr metric loads it (its unit's ``fit`` chunk fits it when no unit did).
"""

from __future__ import annotations

from shb.baselines.fits import intervention_for as fitted
from shb.interventions import HeadAblation, NoIntervention
from shb.metrics.asr import AsrMetric


def intervention_for(unit, ctx, k: int):
    if k == 0:
        return NoIntervention()
    if unit.spec.get("intervention") is not None:
        return fitted(unit, ctx)
    # One head set for the whole unit: the asr metric's resolution, asked for a single "prompt".
    heads = AsrMetric().head_sets(unit, ctx, k, [None])[0]
    if not heads:
        return NoIntervention()
    return HeadAblation(tuple(tuple(h) for h in heads), ablation=ctx.ablation["kind"],
                        epsilon=float(ctx.ablation.get("epsilon", 1e-5)), site=ctx.ablation.get("site"))
