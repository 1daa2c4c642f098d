"""``ships``: for every prompt and head, KL(p_base || p_ablated) of the next-token distribution at
the last prompt position, over the full vocabulary (Zhou et al. 2025, Eq. 9). One chunk per layer."""

from __future__ import annotations

from shb.metrics.base import Metric, chunk_layer, layer_chunk, sweep_forwards, swept_layers


class ShipsMetric(Metric):
    kind = "ships"

    def estimate(self, unit, geometry: dict) -> int:
        return sweep_forwards(unit, geometry)

    def chunks(self, unit, ctx) -> list[str]:
        return [layer_chunk(layer) for layer in swept_layers(ctx.metric, ctx.lm.n_layers, unit.metric.id)]

    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        layer = chunk_layer(chunk)
        scores = ctx.engine().ships_layer(layer)  # (P, H)
        base = ctx.base_row()
        rows = [
            {**base, "prompt_id": prompt.prompt_id, "layer": layer, "head": head, "score": float(scores[p, head])}
            for p, prompt in enumerate(ctx.prompts)
            for head in range(scores.shape[1])
        ]
        return {"ships": rows}
