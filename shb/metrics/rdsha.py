"""``rdsha``: score every attention head by how much it writes along the refusal direction.

RDSHA (Refusal-Direction Safety Head Attribution; Huang et al. 2025, "Safety Alignment Should Be
Made More Than Just A Few Attention Heads", arXiv 2508.19697): with r the refusal direction of the
model (Arditi et al. 2024, difference of means; here the stored fit of a ``refusal_direction``
intervention of the suite), a head's score is

    s_h = | O_h . r | / ||r||,

O_h the head's output at the last prompt position as it is added to the residual stream: its slice
of the output projection's input times its columns of the output projection (a shared o_proj bias
belongs to no head and is left out). Huang et al. find the top heads of Llama-2-7b-chat in mid and
upper layers (12.0, 12.1, 16.0, 16.30).

Stored per prompt and head: the signed projection O_h . r / ||r|| (table ``rdsha``). A head's score
is |mean over prompts| (the head's average write along r, as the paper averages over harmful
prompts); reports compute it (``shb report overlap --metric methods``), and the mean of |.| stays
available in SQL.

Parameters: ``intervention`` (required): the id of a ``refusal_direction`` entry of the suite's
interventions section; its fit runs first (chunk ``fit``, shared with every unit that applies it).
Chunks: ``fit``, then one per range of prompts (``proj-p0000-0031``). One forward pass per prompt, no ablation.
"""

from __future__ import annotations

from shb.errors import UsageError
from shb.metrics.asr import fit_reads
from shb.metrics.base import Metric, after_first, chunk_range, range_chunks

CHUNK_PROMPTS = 32


def head_projections(lm, texts: list[str], direction, batch_size: int = 16):
    """(P, L, H): each head's last-position output projected on ``direction`` / ||direction||.

    One forward per batch that keeps every layer's ``L<l>.attn.head_out`` at the last position (prompts are
    left-padded, so position -1 is each prompt's last token)."""
    import torch

    from shb import hooks
    from shb.baselines.base import batches, encode_batch
    from shb.baselines.fitting import weight_oi

    layout = lm.layout
    unit = (direction / direction.norm()).float()
    feats = [torch.tensor(list(layout.output.features(h))) for h in range(layout.n_heads)]
    # (L, H, d): the residual-stream directions each head's D features write to, read against r
    # once: proj_h = z_h . (W_O[:, slice_h]^T r), so a batch needs no (B, H, d) product.
    readers = []
    for layer in range(layout.n_layers):
        w = weight_oi(layout.module(lm.model, layer, layout.output)).detach().float()  # (d, F)
        wr = unit.to(w.device) @ w  # (F,)
        readers.append(torch.stack([wr[f.to(w.device)] for f in feats]))  # (H, D)
    names = [f"L{layer}.attn.head_out" for layer in range(layout.n_layers)]
    out = []
    for chunk in batches(texts, batch_size):
        seen, grab = hooks.record(names, keep=lambda z: z[:, -1].float())  # (B, H, D) each
        input_ids, mask = encode_batch(lm, chunk)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad(), hooks.at(lm, grab):
            lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions)
        per_layer = [(seen[name] * readers[layer].to(seen[name].device)).sum(-1)  # (B, H)
                     for layer, name in enumerate(names)]
        out.append(torch.stack(per_layer, dim=1).cpu())  # (B, L, H)
    return torch.cat(out)


class RdshaMetric(Metric):
    kind = "rdsha"
    schema = {"properties": {"intervention": {
        "type": "string", "description": "id of a refusal_direction entry of the interventions section: the direction"
                                        " heads are scored against"}},
        "required": ["intervention"]}

    def problems(self, i: int, metric: dict, data: dict, ids: dict) -> list[str]:
        """RDSHA scores heads against a refusal direction: its intervention must be one."""
        target = metric.get("intervention")
        kinds = {e.get("id"): e.get("kind") for e in data.get("interventions") or [] if isinstance(e, dict)}
        if isinstance(target, str) and kinds.get(target) != "refusal_direction":
            found = f"is of kind '{kinds[target]}'" if target in kinds else "does not exist"
            return [f"/metrics/{i}/intervention: rdsha needs a refusal_direction intervention; '{target}' {found}"]
        return []

    def estimate(self, unit, geometry: dict) -> int:
        return unit.n_prompts

    def chunks(self, unit, ctx) -> list[str]:
        key = unit.spec.get("intervention") or {}
        if key.get("kind") != "refusal_direction":
            raise UsageError(f"metric '{unit.metric.id}': rdsha needs `intervention`, the id of a refusal_direction "
                             "entry of the suite's interventions section")
        return ["fit"] + range_chunks("proj", len(ctx.prompts), CHUNK_PROMPTS)

    def reads(self, unit, chunk: str) -> list:
        return fit_reads(unit)  # the refusal direction (its fit chunk looks for a stored one too)

    def after(self, unit, chunks: list[str]) -> list[set[int]]:
        return after_first(chunks, "fit")

    def shares(self, unit, chunk: str) -> list:
        return fit_reads(unit) if chunk == "fit" else []  # the fit, which every unit applying it reads

    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        from shb.baselines.fits import fit_chunk, intervention_for

        if chunk == "fit":
            return fit_chunk(unit, ctx)
        lo, hi = chunk_range(chunk)
        direction = intervention_for(unit, ctx).direction
        bs = ctx.batch_size if isinstance(ctx.batch_size, int) else 16
        proj = head_projections(ctx.lm, ctx.formatted[lo:hi], direction, bs)  # (P, L, H)
        base = {**ctx.base_row(), "fit_id": unit.spec["intervention"]["fit_id"]}
        return {"rdsha": [{**base, "prompt_id": prompt.prompt_id, "layer": layer, "head": head,
                           "projection": float(proj[p, layer, head])}
                          for p, prompt in enumerate(ctx.prompts[lo:hi])
                          for layer in range(proj.shape[1]) for head in range(proj.shape[2])]}
