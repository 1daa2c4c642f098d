"""``ships_dataset``: generalized Ships (Zhou et al. 2025, Eq. 11) for every head.

Per head: the sum, in degrees, of the principal angles between the top-r left singular subspaces
of the last-token final-layer hidden states of the whole dataset (rows = prompts), base vs the
head ablated. One chunk per layer; rows go to table ``ships_dataset``.
"""

from __future__ import annotations

from shb.metrics.base import (
    STRATEGY_SCHEMA,
    Metric,
    chunk_layer,
    independent,
    layer_chunk,
    subspace_rank,
    sweep_forwards,
    swept_layers,
)


class ShipsDatasetMetric(Metric):
    kind = "ships_dataset"
    schema = {"properties": {"strategy": STRATEGY_SCHEMA, "r": {"type": "integer", "minimum": 1}}, "required": []}
    defaults = {"r": 1}

    def estimate(self, unit, geometry: dict) -> int:
        return sweep_forwards(unit, geometry)

    def chunks(self, unit, ctx) -> list[str]:
        subspace_rank(ctx.metric, len(ctx.formatted), unit.metric.id)
        return [layer_chunk(layer) for layer in swept_layers(ctx.metric, ctx.lm.n_layers, unit.metric.id)]

    def reads(self, unit, chunk: str) -> list:
        return []

    def after(self, unit, chunks: list[str]) -> list[set[int]]:
        return independent(chunks)

    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        from shb.scorers.subspace import subspace_angle_scores  # torch at import (see shb.metrics)

        layer = chunk_layer(chunk)
        r = subspace_rank(ctx.metric, len(ctx.formatted), unit.metric.id)
        engine = ctx.engine()
        hidden = engine.hidden_head_sets([[(layer, h)] for h in range(engine.n_heads)])  # (H, P, d)
        scores = subspace_angle_scores(engine.base_hidden, hidden, r=r)  # (H,)
        base = ctx.base_row()
        rows = [{**base, "layer": layer, "head": head, "score": float(scores[head]), "rank_r": r}
                for head in range(engine.n_heads)]
        return {"ships_dataset": rows}
