"""Neuron-level set difference: prune weights important for safety but not for utility (Wei et al.,
ICML 2024, "Assessing the Brittleness of Safety Alignment via Pruning and Low-Rank Modifications",
arXiv 2402.05162, section 3 and their ``prune_wanda/wandg_set_difference``).

Definition implemented. Safety data: the harmful prompts with the model's own greedy responses;
utility data: the harmless prompts with the model's own greedy responses (Wei et al. use Alpaca's
reference answers). For every linear map W (d_out x d_in; nn.Linear or GPT-2's Conv1D) inside
the decoder layers, an importance score per entry on each data set:

- ``importance: "wanda"``: I_ij = |W_ij| * ||X_j||_2, X_j the j-th input feature over the response
  tokens (Wei et al.'s code uses the RMS, a constant factor per matrix: the same ranking);
- ``importance: "snip"``: I_ij = |W_ij| * sum_n |dL_n / dW_ij|, L_n the mean NLL of example n's
  response tokens (batch size 1, as Wei et al.'s ``wandg``).

Per matrix, over its flattened entries (checked against Wei et al.'s ``prune_wandg_set_difference``
in lib/prune.py: ``top_p = int(p * W.shape[0] * W.shape[1])`` and ``torch.topk(W_metric.flatten(),
top_p)``, the same for q; not per output row, unlike plain Wanda pruning): S_q = the top ``q``
fraction of safety scores, U_p = the top ``p`` fraction of utility scores (floor(fraction * entries)
each); the pruned set is S_q \\ U_p, set to 0. Scores are computed on the unedited model. The artefact stores each matrix's pruned flat
indices (int32, row-major in the (d_out, d_in) view). parameters_modified: entries = stored values
that change (a pruned entry that is already 0 does not count), dof = entries chosen (|S_q \\ U_p|).
"""

from __future__ import annotations

from shb.baselines.base import Artefact, FitData, answers_work, fit_cost, teacher_forced_work
from shb.baselines.fitting import (
    ArtefactEdit,
    fraction,
    from_oi,
    greedy_responses,
    is_conv1d,
    layer_linears,
    swapped_weights,
    teacher_forced,
    weight_oi,
)
from shb.interventions import Intervention, ParamCount

KIND = "setdiff"
IMPORTANCES = ("wanda", "snip")
DEFAULTS = {"importance": "wanda", "p": 0.1, "q": 0.1}


def _params(params: dict) -> dict:
    from shb.errors import UsageError

    p = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    if p["importance"] not in IMPORTANCES:
        raise UsageError(f"setdiff importance must be one of {', '.join(IMPORTANCES)}, got {p['importance']!r}")
    p["p"], p["q"] = fraction(p["p"], "setdiff p"), fraction(p["q"], "setdiff q")
    return p


def _all_linears(lm) -> dict:
    """'layer.name' -> module, every linear map of every decoder layer."""
    return {f"{layer}.{name}": m for layer in range(lm.n_layers) for name, m in layer_linears(lm, layer)}


def wanda_factors(lm, seqs, modules: dict) -> dict:
    """key -> ||X_j||_2 as a (1, d_in) row, X over response tokens: Wanda's score is |W| times it."""
    import torch

    from shb import hooks

    sq = {key: torch.zeros(weight_oi(m).shape[1], device=m.weight.device) for key, m in modules.items()}
    state = {}

    def capture(key):
        def fn(x):
            sq[key] += x[state["response"]].float().pow(2).sum(0)
        return fn

    edits = {"L{}.{}:in".format(*key.split(".", 1)): capture(key) for key in modules}  # key: 'layer.name'
    with torch.no_grad(), hooks.at(lm, edits):
        for ids, mask, response in teacher_forced(lm, seqs):
            state["response"] = response
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    return {key: sq[key].sqrt()[None, :] for key in modules}


def response_nll(lm, ids, start: int):
    """Mean NLL of the response tokens ids[start:] given what precedes each (one example, (T,) ids)."""
    import torch

    logits = lm.model(input_ids=ids[None], use_cache=False).logits[0].float()   # (T, V)
    return torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[start:])


def snip_factors(lm, seqs, modules: dict) -> dict:
    """key -> sum_n |dL_n/dW| (d_out, d_in), one backward per example: SNIP's score is |W| times it."""
    import torch

    params = list(lm.model.parameters())
    was = [p.requires_grad for p in params]
    acc = {key: torch.zeros_like(m.weight, dtype=torch.float32) for key, m in modules.items()}
    try:
        for p in params:
            p.requires_grad_(False)
        for m in modules.values():
            m.weight.requires_grad_(True)
        for ids, start in zip(seqs.ids, seqs.starts):
            if start >= len(ids):
                continue        # an empty response has no NLL
            for m in modules.values():
                m.weight.grad = None
            with torch.enable_grad():
                response_nll(lm, torch.tensor(ids, device=lm.device), start).backward()
            for key, m in modules.items():
                acc[key] += m.weight.grad.float().abs()
    finally:
        for m in modules.values():
            m.weight.grad = None
        for p, w in zip(params, was):
            p.requires_grad_(w)
    # the gradient has the weight's storage layout: read it as (d_out, d_in) like the weight
    return {key: acc[key].t() if is_conv1d(m) else acc[key] for key, m in modules.items()}


def top_set(scores, frac: float):
    """Bool mask (same shape) of the floor(frac * numel) largest scores."""
    import torch

    flat = scores.flatten()
    k = int(frac * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(scores)


def fit_work(params: dict, n_harmful: int, n_harmless: int, n_layers: int, max_new_tokens: int) -> dict:
    """Forward-pass equivalents of ``fit``: the greedy answers, then one scoring pass over each prompt with its
    answer (SNIP's backward counted as two more)."""
    n = n_harmful + n_harmless
    passes = 3 if _params(params)["importance"] == "snip" else 1
    return fit_cost(generate=answers_work(n, max_new_tokens), forward=passes * teacher_forced_work(n, max_new_tokens))


def fit(lm, data: FitData, params: dict, progress=None) -> Artefact:
    """Score, then prune S_q \\ U_p per matrix; ``progress(1)`` after each of the two scorings."""
    import torch

    from shb.errors import UsageError

    p = _params(params)
    modules = _all_linears(lm)
    factors = wanda_factors if p["importance"] == "wanda" else snip_factors
    top = {}     # data set -> key -> bool mask of its top entries (scores freed matrix by matrix)
    for name, prompts, frac in (("safety", data.harmful, p["q"]), ("utility", data.harmless, p["p"])):
        seqs = greedy_responses(lm, prompts, data.max_new_tokens)
        if seqs.n_response_tokens == 0:
            raise UsageError(f"setdiff: the model's responses to the {name} prompts are empty: nothing to score")
        f = factors(lm, seqs, modules)
        top[name] = {}
        for key, m in modules.items():
            top[name][key] = top_set(weight_oi(m).detach().float().abs() * f.pop(key), frac)
        if progress is not None:
            progress(1)
    tensors, counts = {}, {}
    for key in modules:
        pruned = top["safety"][key] & ~top["utility"][key]
        idx = torch.nonzero(pruned.flatten()).flatten().to(torch.int32).cpu()
        counts[key] = int(idx.numel())
        if idx.numel():
            tensors[key] = idx
    meta = {"params": p, "pruned": counts, "entries": {k: m.weight.numel() for k, m in modules.items()}}
    return Artefact(KIND, tensors, meta)


class SetDifferencePruning(ArtefactEdit, Intervention):
    """Pruned weights (set to 0) while applied; the original tensors come back on exit."""

    kind = KIND
    _params = staticmethod(_params)

    def _new_weights(self, lm) -> dict:
        import torch

        from shb.errors import ShbError

        modules = _all_linears(lm)
        out = {}
        for key, idx in self.artefact.tensors.items():
            if key not in modules:
                raise ShbError(f"setdiff artefact prunes {key!r}, which this model does not have: "
                               "was it fitted on another model?")
            m = modules[key]
            w = weight_oi(m).detach().clone(memory_format=torch.contiguous_format)
            w.view(-1)[idx.to(device=w.device, dtype=torch.long)] = 0
            out[m] = from_oi(m, w)
        return out

    def applied(self, lm):
        return swapped_weights(self._new_weights(lm))

    def parameters_modified(self, lm) -> ParamCount:
        """entries: stored weight values that change; dof: entries chosen for pruning."""
        entries = sum(int((new != m.weight).sum()) for m, new in self._new_weights(lm).items())
        dof = sum(int(idx.numel()) for idx in self.artefact.tensors.values())
        return ParamCount(entries, dof)

    @property
    def label(self) -> str:
        p = self.params
        return f"setdiff {p['importance']} (p={p['p']}, q={p['q']})"


def intervention(artefact: Artefact, params: dict) -> SetDifferencePruning:
    if artefact.kind != KIND:
        raise ValueError(f"not a setdiff artefact: {artefact.kind!r}")
    return SetDifferencePruning(artefact, params)
