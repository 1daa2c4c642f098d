"""Attribution estimates of every head's Ships score from a few forward and backward passes.

The exact sweep (shb.engine) costs one partial forward pass per head per prompt. Screening
estimates all heads at once and leaves the exact engine to verify the top candidates
(shb.metrics.ships with ``screen``). The estimate is built for this ablation:

* **Linearise in the head's output, not its query.** Undifferentiated attention flattens a
  head's pattern, the saturated regime in which attribution patching in the query badly
  underestimates effects (Kramar et al. 2024, "AtP*: An efficient and scalable method for
  localizing LLM behaviour to components", section 3). The head's output z_{t,h} (its slice of
  the output projection's input) is linear in its attention pattern, so the ablated output is
  computed *exactly* per head and position, and only the layers above are linearised:
  dz_{t,h} = z~_{t,h} - z_{t,h}. z~ comes from one extra forward pass in which every head of
  every layer is ablated with the unit's own kind and epsilon while each attention module is fed
  its clean input (captured in the clean pass), so z~_h is what head h outputs when it alone is
  ablated. This holds for every ablation kind because heads do not interact inside attention.
* **KL has zero gradient at the clean point** (it is minimal there), so a first-order estimate
  of KL is identically zero. The estimators below use the second-order (Fisher) form of KL in
  the logits l: KL(p || p~) ~= 1/2 dl^T (diag p - p p^T) dl = 1/2 Var_{y~p}(dl_y), with
  dl_y,h = sum_t <d l_y / d z_{t,h}, dz_{t,h}>, the head's first-order change of logit y:

  - ``fisher`` (default): the variance over the ``tokens`` most probable next tokens
    (renormalised among them), deterministic; one gradient per token.
  - ``sampled``: 1/(2K) sum_k (dl_{y_k} - E_p dl)^2 with y_k ~ p (K = ``tokens``), an unbiased
    Monte-Carlo form of the full-vocabulary Fisher; E_p dl needs one extra gradient (of
    logsumexp, whose gradient is sum_y p_y d l_y).
  - ``logit-top``: a surrogate with non-zero gradient, |d log p(y*)| for the top token y*
    (first order, two gradients). Cheapest; ranks worse where the shift moves mass among
    unlikely tokens.

All gradients of one prompt batch come from one batched backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``) with a per-token fallback loop.
The cost per prompt is two forward passes and ``tokens`` (+1) backward passes for all heads,
against one partial forward per head for the exact sweep; bench/screening.py measures both
and the recall of the screened ranking in one run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shb.models import encode_prompt

ESTIMATORS = ("fisher", "sampled", "logit-top")


def _attention_inputs(layout, captured: list, substitute: list | None) -> dict:
    """Edits at every ``L<l>.attn.in``: record the attention module's input, or replace it with ``substitute``."""
    def edit(layer):
        def fn(x):
            if substitute is not None:
                return substitute[layer]
            captured[layer] = x
        return fn

    return {f"L{layer}.attn.in": edit(layer) for layer in range(layout.n_layers)}


def _head_outputs(layout, captured: list, deltas: list | None) -> dict:
    """Edits at every ``L<l>.attn.head_out``: record the heads' outputs z (B, T, H, D).

    With ``deltas`` (a list to fill), z becomes z + delta with delta a zero leaf that requires grad:
    d(logits)/d(delta) is then the *total* derivative with respect to z, through every later layer
    (detaching z itself would cut the paths through later attention layers).
    """
    def edit(layer):
        def fn(z):
            captured[layer] = z.detach()
            if deltas is None:
                return None
            delta = torch.zeros_like(z, requires_grad=True)
            deltas[layer] = delta
            return z + delta
        return fn

    return {f"L{layer}.attn.head_out": edit(layer) for layer in range(layout.n_layers)}


def per_head(x: torch.Tensor, proj) -> torch.Tensor:
    """(..., T, F) -> (..., T, H, D): the per-head features located by ``proj`` (a ProjSlice)."""
    block = x[..., proj.start: proj.end]
    heads = block.reshape(*block.shape[:-1], proj.n_heads, proj.head_stride)
    return heads[..., proj.inner: proj.inner + proj.head_dim]


def encode_prompts(tokenizer, prompts: Sequence[str], device):
    """Left-padded ids, mask and explicit positions (each prompt sees the positions it has alone)."""
    ids_list = [encode_prompt(tokenizer, p) for p in prompts]
    t = max(len(i) for i in ids_list)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(ids_list), t), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(ids_list), t), dtype=torch.long)  # (B, T)
    for row, seq in enumerate(ids_list):
        ids[row, t - len(seq):] = torch.tensor(seq)
        mask[row, t - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def grads_of(logits_last: torch.Tensor, zs: list, rows: torch.Tensor) -> list[torch.Tensor]:
    """Per layer (K, B, T, H, D): gradients of sum_b <rows[k, b], logits_last[b]> with respect to z."""
    try:
        return list(torch.autograd.grad(logits_last, zs, grad_outputs=rows, is_grads_batched=True,
                                        retain_graph=True))
    except RuntimeError:  # an op without a batching rule: one backward per row
        per_row = [torch.autograd.grad(logits_last, zs, grad_outputs=r, retain_graph=True) for r in rows]
        return [torch.stack([g[layer] for g in per_row]) for layer in range(len(zs))]


def estimate(lm, prompts: Sequence[str], *, kind: str = "undifferentiated", epsilon: float = 1e-5,
             site: str | None = None, estimator: str = "fisher", tokens: int = 16, seed: int = 0,
             batch_size: int = 4) -> torch.Tensor:
    """(P, L, H) float64 estimates of KL(p_base || p_ablated) at the last position, every single head."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    model, tokenizer = lm.model, lm.tokenizer
    layout = lm.layout
    device = next(model.parameters()).device
    out = torch.zeros(len(prompts), layout.n_layers, layout.n_heads, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    for lo in range(0, len(prompts), batch_size):
        batch = list(prompts[lo: lo + batch_size])
        out[lo: lo + len(batch)] = _estimate_batch(model, tokenizer, layout, batch, kind, epsilon, site,
                                                   estimator, tokens, generator, device)
    return out


def head_outputs(model, layout, ids, mask, positions, kind, epsilon, site, deltas: list | None = None,
                 chosen=(), final: dict | None = None):
    """Clean logits and, per layer, the clean and ablated head outputs z, z~ (B, T, H, D) float32.

    z~_h is what head h outputs when it alone is ablated: a second pass ablates every head of every
    layer while each attention module is fed its clean input, and heads do not interact inside
    attention. With ``deltas`` (a list), the clean pass runs with grad and fills it with the zero
    leaves added to z (see _head_outputs). With ``chosen`` heads, the "clean" pass is the model
    with those heads ablated (a Sahara step linearises around its head set G). With ``final`` (a
    dict), ``final["hidden"]`` receives the LM head's input at the last position (B, d) of the clean pass.
    """
    import contextlib

    from shb import hooks
    from shb.ablation import ablate

    n_layers = layout.n_layers
    attn_in, z, z_abl = [None] * n_layers, [None] * n_layers, [None] * n_layers
    outer = ablate(model, list(chosen), kind=kind, epsilon=epsilon, site=site) if chosen else contextlib.nullcontext()
    edits = {**_attention_inputs(layout, attn_in, None), **_head_outputs(layout, z, deltas)}
    if final is not None:
        edits["final_norm"] = lambda x: final.__setitem__("hidden", x[:, -1])
    # The ablation's edits first: the captures below see G's ablated outputs.
    with outer, hooks.at(model, edits, layout=layout), torch.set_grad_enabled(deltas is not None):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    every_head = [(layer, h) for layer in range(n_layers) for h in range(layout.n_heads)]
    clean_inputs = [a.detach() for a in attn_in]
    # Attached after the ablation's own edits, so the capture sees the ablated output.
    edits = {**_attention_inputs(layout, [], clean_inputs), **_head_outputs(layout, z_abl, None)}
    with torch.no_grad(), ablate(model, every_head, kind=kind, epsilon=epsilon, site=site), \
            hooks.at(model, edits, layout=layout):
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    clean = [x.float() for x in z]
    ablated = [x.float() for x in z_abl]
    return logits, clean, ablated


def _estimate_batch(model, tokenizer, layout, prompts, kind, epsilon, site, estimator, tokens, generator, device):
    ids, mask, positions = encode_prompts(tokenizer, prompts, device)
    deltas = [None] * layout.n_layers
    model.eval()
    logits, clean, ablated = head_outputs(model, layout, ids, mask, positions, kind, epsilon, site, deltas)
    last = logits[:, -1].float()  # (B, V)
    real = mask[:, :, None, None].to(torch.float32)  # (B, T, 1, 1): padding contributes nothing
    dz = [(a - c) * real for a, c in zip(ablated, clean)]  # per layer (B, T, H, D)
    # Gradients of chosen logit combinations with respect to every z.
    probs = torch.softmax(last.detach().double(), -1)  # (B, V)
    b, v = probs.shape
    if estimator == "sampled":
        picks = torch.multinomial(probs.float().cpu(), tokens, replacement=True, generator=generator).to(device)
    else:
        picks = probs.topk(min(tokens if estimator == "fisher" else 1, v), dim=-1).indices  # (B, K)
    k = picks.shape[1]
    rows = torch.zeros(k + 1, b, v, device=device, dtype=last.dtype)  # one-hot rows, then p (grad of logsumexp)
    rows[torch.arange(k)[:, None], torch.arange(b)[None, :], picks.T] = 1.0
    rows[k] = probs.to(last.dtype)
    grads = grads_of(last, deltas, rows)  # per layer (K+1, B, T, H, D)
    # dl[k, b, layer, h]: first-order change of logit picks[b, k] (row k) when head h alone is ablated.
    dl = torch.stack([(g.float() * d[None]).sum(dim=(2, 4)) for g, d in zip(grads, dz)],
                     dim=2).double()  # (K+1, B, L, H)
    return _combine(dl, probs, picks, estimator)


def _combine(dl: torch.Tensor, probs: torch.Tensor, picks: torch.Tensor, estimator: str) -> torch.Tensor:
    """(B, L, H) estimate from per-token logit changes ``dl`` (K+1, B, L, H); row K is E_p[dl]."""
    token_dl, mean_dl = dl[:-1], dl[-1]
    if estimator == "sampled":
        return 0.5 * ((token_dl - mean_dl[None]) ** 2).mean(0)
    if estimator == "logit-top":
        return (token_dl[0] - mean_dl).abs()  # |d log p(y*)| = |dl_{y*} - E_p dl|
    weights = probs.gather(1, picks).T  # (K, B)
    weights = weights / weights.sum(0, keepdim=True)
    w = weights[:, :, None, None]
    mean = (w * token_dl).sum(0)
    return 0.5 * (w * (token_dl - mean[None]) ** 2).sum(0)


def recall_at(exact: torch.Tensor, screened: torch.Tensor, k: int) -> float:
    """Mean over prompts of |top-k(screened) & top-k(exact)| / k; inputs (P, n_heads) scores."""
    k = min(k, exact.shape[1])
    top_e = exact.topk(k, dim=1).indices
    top_s = screened.topk(k, dim=1).indices
    hits = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_e, top_s)]
    return sum(hits) / len(hits)


def spearman(exact: torch.Tensor, screened: torch.Tensor) -> float:
    """Mean over prompts of the Spearman rank correlation (ties broken by order)."""
    def ranks(x):
        return x.argsort(dim=1).argsort(dim=1).double()

    re, rs = ranks(exact), ranks(screened)
    re = re - re.mean(1, keepdim=True)
    rs = rs - rs.mean(1, keepdim=True)
    rho = (re * rs).sum(1) / (re.norm(dim=1) * rs.norm(dim=1)).clamp(min=1e-12)
    return float(rho.mean())


def pooled(chosen: Sequence[Sequence], exact: Sequence[Sequence[float]], pool: int) -> list[list]:
    """Per prompt, the heads to verify next: those among the ``pool`` best *exact* scores of any prompt of
    the batch (``chosen[p]``: prompt p's verified heads, ``exact[p]`` their scores) that prompt p has not
    verified, in sorted order. Safety heads recur across prompts (Zhou et al. 2025, Fig. 4), so a head an
    estimate misses on one prompt is often found exactly on another; on SmolLM2 this raised recall@10
    more than verifying as many more heads by the estimate did (README, screening table)."""
    found = set()
    for heads, values in zip(chosen, exact):
        found.update(h for _, h in sorted(zip(values, heads), key=lambda vh: (-vh[0], vh[1]))[:pool])
    return [sorted(found - set(heads)) for heads in chosen]


def screened_scores(estimates: torch.Tensor, verified: dict) -> torch.Tensor:
    """The screened ranking as scores (P, n): exact values for verified heads, ranked above every
    unverified one, whose estimates order the rest. ``verified``: {(prompt, flat head): exact}."""
    scores = estimates.clone().double()
    offset = float(estimates.max()) + 1.0 if estimates.numel() else 1.0
    for (p, flat), value in verified.items():
        scores[p, flat] = offset + value
    return scores
