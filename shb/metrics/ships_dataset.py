"""``ships_dataset``: generalized Ships (Zhou et al. 2025, Eq. 11) for every head.

Per head: the sum, in degrees, of the principal angles between the top-r left singular subspaces
of the last-token final-layer hidden states of the whole dataset (rows = prompts), base vs the
head ablated. One chunk per layer; rows go to table ``ships_dataset``.
"""

from __future__ import annotations

from shb.metrics.base import Metric, chunk_layer, layer_chunk


def _layers(unit_metric: dict, n_layers: int, metric_id: str) -> list[int]:
    layers = list(unit_metric.get("layers") or range(n_layers))
    bad = [layer for layer in layers if not isinstance(layer, int) or not 0 <= layer < n_layers]
    if bad:
        from shb.errors import UsageError

        raise UsageError(f"metric '{metric_id}': layers {bad} out of range; the model has {n_layers}")
    return layers


def _rank(params: dict, n_prompts: int, metric_id: str) -> int:
    r = params.get("r", 1)
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= n_prompts:
        from shb.errors import UsageError

        raise UsageError(f"metric '{metric_id}': r must be an integer in [1, {n_prompts}] (the number of prompts), got {r!r}")
    return r


class ShipsDatasetMetric(Metric):
    kind = "ships_dataset"

    def estimate(self, unit, geometry: dict) -> int:
        layers = len(unit.metric.get("layers") or range(geometry["layers"]))
        return unit.n_prompts * (layers * geometry["heads"] + 1)

    def chunks(self, unit, ctx) -> list[str]:
        _rank(ctx.metric, len(ctx.formatted), unit.metric.id)
        return [layer_chunk(layer) for layer in _layers(ctx.metric, ctx.lm.n_layers, unit.metric.id)]

    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        from shb.scorers.subspace import subspace_angle_scores

        layer = chunk_layer(chunk)
        r = _rank(ctx.metric, len(ctx.formatted), unit.metric.id)
        engine = ctx.engine()
        hidden = engine.hidden_head_sets([[(layer, h)] for h in range(engine.n_heads)])  # (H, P, d)
        scores = subspace_angle_scores(engine.base_hidden, hidden, r=r)  # (H,)
        base = ctx.base_row()
        rows = [{**base, "layer": layer, "head": head, "score": float(scores[head]), "rank_r": r}
                for head in range(engine.n_heads)]
        return {"ships_dataset": rows}
