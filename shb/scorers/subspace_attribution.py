"""Attribution estimates of a Sahara step's generalized-Ships score for every candidate head at once.

A Sahara step (Zhou et al. 2025, Algorithm 1) scores G + {h} for every head h not in G, with the
generalized Ships score of Eq. 11: the principal angles between the top-r left singular subspaces
of the base and the ablated last-token hidden-state matrices M (prompts x hidden). The exact step
costs one (partial) forward pass per candidate and prompt; this module estimates every candidate
from a few passes, and the step verifies the top candidates exactly (shb.search.screened_sahara_step).

The estimate linearises in the head's output, as screened Ships does (shb.scorers.attribution:
the ablated output z~_h is exact, only the layers above are linearised), around the model with G
ablated: dH_{p,h} = sum_t (dH_p / dz_{t,h}) (z~_{t,h} - z_{t,h}), the first-order change of prompt
p's final hidden state when h is ablated on top of G.

The left singular subspace of M is the eigenspace of the Gram matrix M M^T, whose first-order
change under dM is dM M^T + M dM^T. Writing M_G = U S V^T, (dM M_G^T)[p, q] = sum_j <dH_p, v_j>
s_j U[q, j]: only the projections of dH_p on the right singular vectors v_j of M_G enter, and one
batched backward pass per direction gives them for every head and prompt. With ``directions`` = K
the top K directions are kept (all of them when K >= rank: the first-order Gram is then exact);
the small singular directions contribute in proportion to s_j. The estimated score of h is the
exact score of the linearised Gram matrix M_G M_G^T + C_h + C_h^T against the base subspace. It is
a ranking device: only verified candidates get scores in ``sahara_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from shb import hooks
from shb.scorers.attribution import encode_prompts, grads_of, head_outputs
from shb.scorers.subspace import principal_angles, top_left_singular


def _last_hidden(model, ids, mask, positions, chosen, kind, epsilon, site) -> torch.Tensor:
    """(B, d) float64 LM-head input at the last position with ``chosen`` ablated (no grad)."""
    from shb.ablation import ablate

    seen, grab = hooks.record(["final_norm"], keep=lambda x: x[:, -1])
    with torch.no_grad(), hooks.at(model, grab), ablate(model, list(chosen), kind=kind, epsilon=epsilon, site=site):
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return seen["final_norm"].double()


def estimate_step(lm, prompts: Sequence[str], chosen: Sequence[tuple[int, int]], base_hidden: torch.Tensor, *,
                  kind: str = "undifferentiated", epsilon: float = 1e-5, site: str | None = None, r: int = 1,
                  directions: int = 8, batch_size: int = 8) -> torch.Tensor:
    """(L, H) float64 estimated generalized Ships (degrees) of G + {h} for every head h (G = ``chosen``;
    the entries of heads in G are NaN). ``base_hidden`` (P, d): the unablated matrix M (the engine's)."""
    model, tokenizer, layout = lm.model, lm.tokenizer, lm.layout
    device = next(model.parameters()).device
    model.eval()
    chosen = [tuple(map(int, h)) for h in chosen]
    batches = [list(prompts[lo: lo + batch_size]) for lo in range(0, len(prompts), batch_size)]
    encoded = [encode_prompts(tokenizer, b, device) for b in batches]
    # M_G and its singular directions: the point the step linearises around.
    m_g = torch.cat([_last_hidden(model, *e, chosen, kind, epsilon, site) for e in encoded])  # (P, d)
    u, s, vh = torch.linalg.svd(m_g, full_matrices=False)  # (P, k), (k,), (k, d)
    k = max(1, min(directions, int((s > s[0] * 1e-10).sum()) if s.numel() else 1))
    v = vh[:k]  # (K, d)
    # a[p, j, layer, h] = <dH_{p,h}, v_j>
    a = torch.empty(len(prompts), k, layout.n_layers, layout.n_heads, dtype=torch.float64)
    row = 0
    for ids, mask, positions in encoded:
        b = ids.shape[0]
        deltas, final = [None] * layout.n_layers, {}
        _, clean, ablated = head_outputs(model, layout, ids, mask, positions, kind, epsilon, site, deltas,
                                         chosen=chosen, final=final)
        hidden = final["hidden"]  # (B, d), with the graph back to every z
        real = mask[:, :, None, None].to(torch.float32)
        dz = [(x - c) * real for x, c in zip(ablated, clean)]  # per layer (B, T, H, D)
        rows = v.to(hidden.dtype)[:, None, :].expand(k, b, v.shape[1]).contiguous()  # (K, B, d)
        grads = grads_of(hidden, deltas, rows)  # per layer (K, B, T, H, D)
        a[row: row + b] = torch.stack(
            [(g.float() * d[None]).sum(dim=(2, 4)) for g, d in zip(grads, dz)],
            dim=2).double().transpose(0, 1).cpu()  # (B, K, L, H)
        row += b
    # C_h = A_h S_K U_K^T (P x P); Gram_h = M_G M_G^T + C_h + C_h^T, to first order.
    us = (u[:, :k] * s[:k]).cpu()  # (P, K)
    gram = (m_g @ m_g.T).cpu()
    base = top_left_singular(base_hidden.double().cpu(), r)  # (P, r)
    taken = set(chosen)
    out = torch.full((layout.n_layers, layout.n_heads), math.nan, dtype=torch.float64)
    for layer in range(layout.n_layers):
        c = torch.einsum("pkh,qk->hpq", a[:, :, layer], us)  # (H, P, P)
        grams = gram[None] + c + c.transpose(1, 2)
        _vals, vecs = torch.linalg.eigh(grams)  # ascending eigenvalues
        for h in range(layout.n_heads):
            if (layer, h) in taken:
                continue
            top = vecs[h][:, -r:]  # (P, r): the estimated top-r left singular subspace
            out[layer, h] = math.degrees(float(principal_angles(base, top).sum()))
    return out
