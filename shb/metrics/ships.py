"""``ships``: for every prompt and head, KL(p_base || p_ablated) of the next-token distribution at
the last prompt position, over the full vocabulary (Zhou et al. 2025, Eq. 9).

Exact sweep (default): one chunk per layer, every head scored by the engine.

Screened sweep (``screen: {"top": N, "estimator": ..., "tokens": ..., "pool": k}``): per batch of
prompts, an attribution estimate of every head's score (shb.scorers.attribution: two forward passes
and ``tokens`` gradients for all heads), then the exact engine on each prompt's top-N candidates and,
with ``pool``, on every prompt of the batch for the heads among any prompt's k best exact scores
(``attribution.pooled``; stored ``verified_as = 'pool'``).
Beside them, ``sample`` heads per prompt drawn at random from the others (shb.screen_check) are
scored exactly too, so the sweep measures its own recall (shb.reports.screen_recall). Only verified
heads get rows in ``ships`` (exact, as in the full sweep); every estimate goes to ``ships_estimates``
with a ``verified`` flag and ``verified_as`` ('top', 'pool', 'sample' or NULL), so the two are never mixed up.
A sampled head's exact score is a real score: it counts in the ranking like a top one (it can only
raise the head's lower-bound mean, and it enters a prompt's top 10 only where the screen missed it,
which the report then says).
"""

from __future__ import annotations

from shb import screen_check
from shb.errors import UsageError
from shb.metrics.base import (
    LAYERS_SCHEMA,
    STRATEGY_SCHEMA,
    Metric,
    chunk_layer,
    chunk_range,
    independent,
    layer_chunk,
    range_chunks,
    sweep_forwards,
    swept_layers,
)

SCREEN_PROMPTS = 8  # prompts per screened chunk: a crash loses at most this many prompts' work
# pool 5: on SmolLM2 and Qwen2.5-Coder-1.5B it raised recall@10 at every N measured (README, "Screened Ships").
SCREEN_DEFAULTS = {"estimator": "fisher", "tokens": 16, "pool": 5, "sample": screen_check.SAMPLE}


class ShipsMetric(Metric):
    kind = "ships"
    schema = {"properties": {
        "strategy": STRATEGY_SCHEMA,
        "layers": LAYERS_SCHEMA,
        "screen": {
            "type": "object",
            "description": "screen every head with an attribution estimate (shb.scorers.attribution), then score the "
                           "top candidates of each prompt exactly; only verified heads get rows in `ships`",
            "properties": {
                "top": {"type": "integer", "minimum": 1, "description": "heads verified exactly per prompt (N)"},
                "estimator": {"enum": ["fisher", "sampled", "logit-top"],
                              "description": "how KL is estimated (default fisher)"},
                "tokens": {"type": "integer", "minimum": 1, "maximum": 4096,
                           "description": "next tokens the Fisher form sums (or samples) over (default 16)"},
                "pool": {"type": "integer", "minimum": 0,
                         "description": "then verify on every prompt of a batch the heads among any of its prompts'"
                                        " `pool` best exact scores (default 5; 0: none)"},
                "sample": screen_check.SAMPLE_SCHEMA},
            "required": ["top"], "additionalProperties": False}},
        "required": []}

    def uses_seed(self, params: dict) -> bool:
        return bool(params.get("screen"))  # the estimate samples gradient directions, the check heads, with it

    def identity(self, params: dict, suite_defaults: dict) -> dict:
        return screen_check.with_screen_defaults(super().identity(params, suite_defaults), SCREEN_DEFAULTS)

    def estimate(self, unit, geometry: dict) -> int:
        screen = unit.spec["metric"].get("screen")
        if not screen:
            return sweep_forwards(unit, geometry)
        screen = {**SCREEN_DEFAULTS, **screen}
        # Two forwards, and a backward (about two forwards) per gradient row, then N partial forwards
        # (counted as full ones: an upper bound), the pooled heads (at most the other prompts' k best each),
        # the sampled heads and the per-prompt base pass of the verification.
        swept = len(unit.metric.get("layers") or range(geometry["layers"])) * geometry["heads"]
        pooled = min(screen["pool"] * (SCREEN_PROMPTS - 1), swept)
        return unit.n_prompts * (2 + 2 * (screen["tokens"] + 1) + screen["top"] + pooled + screen["sample"] + 1)

    def chunks(self, unit, ctx) -> list[str]:
        layers = swept_layers(ctx.metric, ctx.lm.n_layers, unit.metric.id)
        if ctx.metric.get("screen"):
            return range_chunks("screen", len(ctx.prompts), SCREEN_PROMPTS)
        return [layer_chunk(layer) for layer in layers]

    def reads(self, unit, chunk: str) -> list:
        return []

    def after(self, unit, chunks: list[str]) -> list[set[int]]:
        return independent(chunks)

    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        if chunk.startswith("screen-"):
            return self._screened(unit, ctx, *chunk_range(chunk))
        layer = chunk_layer(chunk)
        scores = ctx.engine().ships_layer(layer)  # (P, H)
        base = ctx.base_row()
        rows = [
            {**base, "prompt_id": prompt.prompt_id, "layer": layer, "head": head, "score": float(scores[p, head])}
            for p, prompt in enumerate(ctx.prompts)
            for head in range(scores.shape[1])
        ]
        return {"ships": rows}

    def _screened(self, unit, ctx, lo: int, hi: int) -> dict[str, list[dict]]:
        from shb.scorers.attribution import estimate, pooled

        screen = {**SCREEN_DEFAULTS, **ctx.metric["screen"]}
        layers = swept_layers(ctx.metric, ctx.lm.n_layers, unit.metric.id)
        n_heads = ctx.lm.n_heads
        candidates = [(layer, h) for layer in layers for h in range(n_heads)]
        if screen["top"] > len(candidates):
            raise UsageError(f"metric '{unit.metric.id}': screen.top = {screen['top']} exceeds the "
                             f"{len(candidates)} heads swept; lower it, or drop `screen` for the exact sweep")
        prompts, texts = ctx.prompts[lo:hi], ctx.formatted[lo:hi]
        ab = ctx.ablation
        est = estimate(ctx.lm, texts, kind=ab["kind"], epsilon=ab.get("epsilon", 1e-5), site=ab.get("site"),
                       estimator=screen["estimator"], tokens=screen["tokens"], seed=ctx.seed + lo // SCREEN_PROMPTS)  # (p, L, H)
        base = ctx.base_row()
        chosen = [sorted(candidates, key=lambda lh: (-float(est[p, lh[0], lh[1]]), lh))[: screen["top"]]
                  for p in range(len(prompts))]
        # One engine (base pass, scoring head) for the unit's prompts, shared by every batch and with the
        # unit's other metrics; only each prompt's own candidates are evaluated.
        engine = ctx.engine()
        first = engine.ships_pairs([(lo + p, [head]) for p in range(len(prompts)) for head in chosen[p]]).tolist()
        n = screen["top"]
        extra = pooled(chosen, [first[p * n: (p + 1) * n] for p in range(len(prompts))], screen["pool"])
        # The recall check: a few of the other heads, drawn per prompt from the unit's seed and the prompt id.
        sampled = [screen_check.draw([c for c in candidates if c not in set(chosen[p] + extra[p])], screen["sample"],
                                     ctx.seed, "ships", prompt.prompt_id) for p, prompt in enumerate(prompts)]
        second = engine.ships_pairs([(lo + p, [head]) for p in range(len(prompts))
                                     for head in extra[p] + sampled[p]]).tolist() if any(extra + sampled) else []
        exact = iter(first + second)
        order = [(p, head) for p in range(len(prompts)) for head in chosen[p]] + \
            [(p, head) for p in range(len(prompts)) for head in extra[p] + sampled[p]]
        scores = {key: next(exact) for key in order}
        ships_rows, estimate_rows = [], []
        for p, prompt in enumerate(prompts):
            how = {**{lh: "sample" for lh in sampled[p]}, **{lh: "pool" for lh in extra[p]},
                   **{lh: "top" for lh in chosen[p]}}
            for layer, h in chosen[p] + extra[p] + sampled[p]:
                ships_rows.append({**base, "prompt_id": prompt.prompt_id, "layer": layer, "head": h,
                                   "score": scores[(p, (layer, h))]})
            for layer, h in candidates:
                estimate_rows.append({**base, "prompt_id": prompt.prompt_id, "layer": layer, "head": h,
                                      "estimate": float(est[p, layer, h]), "estimator": screen["estimator"],
                                      "verified": (layer, h) in how, "verified_as": how.get((layer, h))})
        return {"ships": ships_rows, "ships_estimates": estimate_rows}
