"""``ships``: for every prompt and head, KL(p_base || p_ablated) of the next-token distribution at
the last prompt position, over the full vocabulary (Zhou et al. 2025, Eq. 9). One chunk per layer."""

from __future__ import annotations

from shb.metrics.base import Metric, chunk_layer, layer_chunk


class ShipsMetric(Metric):
    kind = "ships"

    def estimate(self, unit, geometry: dict) -> int:
        layers = len(unit.metric.get("layers") or range(geometry["layers"]))
        return unit.n_prompts * (layers * geometry["heads"] + 1)

    def chunks(self, unit, ctx) -> list[str]:
        layers = ctx.metric.get("layers") or range(ctx.lm.n_layers)
        bad = [layer for layer in layers if not 0 <= layer < ctx.lm.n_layers]
        if bad:
            from shb.errors import UsageError

            raise UsageError(f"metric '{unit.metric.id}': layers {bad} out of range; the model has {ctx.lm.n_layers}")
        return [layer_chunk(layer) for layer in layers]

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
