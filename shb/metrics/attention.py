"""``attention``: where a safety head looks. The last prompt position's attention weights over the
prompt's tokens, for the heads Sahara chose and for a median head, on harmful and benign prompts.

Zhou et al. 2025 (Sec. 5) argue that safety heads act as feature extractors - "where the head
attends matters" - but show no attention maps; this metric stores them, for the selected heads only
(never every head of every prompt): per (prompt, head, token position), the softmax weight of the
last position's query on that token (table ``head_attention``; left padding excluded, positions
counted over the real tokens from 0).

Heads (``heads: "sahara:<metric id>"``, ``k``): the first k heads that Sahara unit chose (roles
``safety-1`` ... ``safety-k``), and a control (role ``median``): the head whose first-step Sahara
score (every head scored alone) is the median of all heads not chosen.
Prompts: the cell's dataset (``prompt_set`` "harmful") and the suite dataset named by ``benign``
(``prompt_set`` "benign"), the first ``limit`` (16) of each.

Weights are read at the points ``L<l>.attn.weights`` (shb.hooks switches the model to eager attention
for these forwards only): the scores are the model's own, after rotary embeddings, masks and soft-capping.
Chunks: ``harmful``, ``benign``.
"""

from __future__ import annotations

from shb.errors import ShbError, UsageError
from shb.metrics import heads as heads_module
from shb.metrics.base import Metric

DEFAULT_K = 3
DEFAULT_LIMIT = 16
PROMPT_SETS = ("harmful", "benign")


def last_position_attention(lm, texts: list[str], heads: list[tuple[int, int]]):
    """Per prompt: (token ids of the prompt, {head: weights over those tokens}), weights float lists.

    One prompt per forward (no padding at all), so each weight vector covers exactly the prompt."""
    import torch

    from shb import hooks
    from shb.models import encode_prompt

    layers = sorted({layer for layer, _ in heads})
    out = []
    for text in texts:
        ids = encode_prompt(lm.tokenizer, text)
        input_ids = torch.tensor([ids], device=lm.device)
        seen, grab = hooks.record([f"L{layer}.attn.weights" for layer in layers], keep=lambda w: w[0, :, -1, :])
        try:
            with torch.no_grad(), hooks.at(lm, grab):
                lm.model(input_ids=input_ids)
        except RuntimeError as exc:
            if "returned no tensor" not in str(exc):
                raise
            raise ShbError(f"attention: {lm.layout.arch} returned no attention weights under eager attention") from None
        weights = {}
        for layer, head in heads:
            probs = seen[f"L{layer}.attn.weights"][head]  # (T,)
            weights[(layer, head)] = probs.float().cpu().tolist()
        out.append((ids, weights))
    return out


class AttentionMetric(Metric):
    kind = "attention"
    schema = {"properties": {
        "heads": {"type": "string", "pattern": "^sahara:.+$",
                  "description": "sahara:<metric id>: the safety heads whose attention is stored (its first k)"},
        "k": {"type": "integer", "minimum": 1, "description": "how many of the Sahara heads (default 3)"},
        "benign": {"type": "string", "description": "dataset id of benign prompts, stored beside the cell's (harmful)"
                                                    " prompts"},
        "limit": {"type": "integer", "minimum": 1, "description": "prompts of each set stored (default 16)"}},
        "required": ["heads", "benign"]}

    def upstream(self, params: dict, metrics) -> str | None:
        return heads_module.upstream_id(params.get("heads"), {m.id: m.kind for m in metrics})

    def dataset_reads(self, params: dict) -> list[str]:
        return [params["benign"]] if isinstance(params.get("benign"), str) else []

    def problems(self, i: int, metric: dict, data: dict, ids: dict) -> list[str]:
        problems = heads_module.source_problems(i, metric, data)
        benign = metric.get("benign")
        if isinstance(benign, str) and ids.get("datasets") is not None and benign not in ids["datasets"]:
            problems.append(f"/metrics/{i}/benign: no dataset with id '{benign}' in this suite")
        return problems

    def estimate(self, unit, geometry: dict) -> int:
        return 2 * min(unit.n_prompts, unit.spec["metric"].get("limit", DEFAULT_LIMIT))

    def chunks(self, unit, ctx) -> list[str]:
        return list(PROMPT_SETS)

    def heads(self, unit, ctx) -> list[tuple[str, tuple[int, int]]]:
        """(role, head) of the selected heads and the median control."""
        k = ctx.metric.get("k", DEFAULT_K)
        rows = ctx.store.con.execute(
            "SELECT step, layer, head, score, chosen FROM sahara_steps WHERE unit_id = ?",
            [unit.spec.get("upstream")]).fetchall()
        chosen = sorted((s, layer, h) for s, layer, h, _, c in rows if c)
        if len(chosen) < k:
            raise UsageError(f"metric '{unit.metric.id}' needs {k} Sahara heads ({ctx.metric['heads']}, model "
                             f"{unit.model.id}); that unit has {len(chosen)}: run it first, with steps >= {k}")
        picked = [(layer, h) for _, layer, h in chosen[:k]]
        alone = sorted(((score, layer, h) for s, layer, h, score, _ in rows
                        if s == 0 and (layer, h) not in picked), key=lambda r: (r[0], r[1], r[2]))
        out = [(f"safety-{i + 1}", head) for i, head in enumerate(picked)]
        if alone:
            _, layer, h = alone[(len(alone) - 1) // 2]
            out.append(("median", (layer, h)))
        return out

    def _prompts(self, unit, ctx, prompt_set: str):
        limit = ctx.metric.get("limit", DEFAULT_LIMIT)
        if prompt_set == "harmful":
            return unit.dataset.id, ctx.prompts[:limit], ctx.formatted[:limit]
        from shb.metrics.utility import UtilityMetric

        ref = ctx.metric["benign"]
        prompts, formatted = UtilityMetric()._dataset(unit, ctx, ref)
        return ref, prompts[:limit], formatted[:limit]

    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        if chunk not in PROMPT_SETS:
            raise ShbError(f"unit {unit.unit_id}: unknown attention chunk '{chunk}'")
        roles = self.heads(unit, ctx)
        dataset_id, prompts, texts = self._prompts(unit, ctx, chunk)
        seen = last_position_attention(ctx.lm, texts, [head for _, head in roles])
        base = ctx.base_row()
        rows = []
        for prompt, (ids, weights) in zip(prompts, seen):
            tokens = ctx.lm.tokenizer.convert_ids_to_tokens(ids)
            for role, (layer, head) in roles:
                for position, (token, weight) in enumerate(zip(tokens, weights[(layer, head)])):
                    rows.append({**base, "prompt_set": chunk, "prompts_dataset_id": dataset_id,
                                 "prompt_id": prompt.prompt_id, "role": role, "layer": layer, "head": head,
                                 "position": position, "token": str(token), "weight": weight})
        return {"head_attention": rows}
