"""ActSVD: safety-critical ranks of every linear map (Wei et al., ICML 2024, "Assessing the
Brittleness of Safety Alignment via Pruning and Low-Rank Modifications", arXiv 2402.05162).

Definition implemented. Safety data: the harmful prompts with the model's own greedy responses;
utility data: the harmless prompts with the model's own greedy responses (Wei et al. use Alpaca's
reference answers; shb fits on what the model says). X is the input of a linear map at the
response tokens only (rows = tokens). For every linear map W (d_out x d_in; nn.Linear or GPT-2's
Conv1D) inside the decoder layers - not the embeddings nor lm_head - the top-r left singular vectors
U_r of W X^T (computed as the right singular vectors of S = X W^T) span the projection
Pi = U_r U_r^T, and Pi W is the best rank-r approximation of W X^T's action. Two edits:

- ``variant: "top_remove"``: W <- (I - Pi_s) W with Pi_s of rank ``rank_safety`` from safety data.
- ``variant: "orthogonal"`` ("isolated safety ranks"): W <- W - (I - Pi_u) Pi_s W, with Pi_u of rank
  ``rank_utility`` from utility data: only safety directions outside the utility subspace go, and
  rank(dW) <= rank_safety; dW = 0 when the two data sets coincide and rank_utility >= rank_safety.

Rank naming: ``rank_safety`` (r_s) and ``rank_utility`` (r_u) are the ranks of the projections
Pi_s and Pi_u themselves. Wei et al.'s code takes ``rank_neg`` and ``rank_pos`` and projects onto
d - rank_neg (safety) and d - rank_pos (utility) directions (docs/methods.md, "Wei et al. 2024"; its README names
them the other way), so their (rank_pos=3000, rank_neg=4000) at d=4096 is rank_utility=1096,
rank_safety=96 here. A float in (0, 1) is a fraction of each matrix's smaller side, rounded up.

Layers are fitted in order: the activations of layer l come from a model whose layers < l already
carry their edit (as Wei et al.'s ``make_low_rank``); the maps of one layer are fitted together.
The artefact stores, per edited map, two (d_out x k) factors A and U with dW = A U^T W
(top_remove: A = U = U_s, stored once as U; orthogonal: the SVD of (I - Pi_u) U_s truncated at singular value 1e-4,
so directions that lie inside the utility subspace up to rounding are no edit at all).
"""

from __future__ import annotations

from shb.baselines.base import Artefact, FitData, answers_work, fit_cost, teacher_forced_work
from shb.baselines.fitting import (
    ArtefactEdit,
    from_oi,
    greedy_responses,
    layer_linears,
    resolve_rank,
    run_until,
    swapped_weights,
    teacher_forced,
    weight_oi,
)
from shb.interventions import Intervention, ParamCount

KIND = "actsvd"
VARIANTS = ("top_remove", "orthogonal")
DEFAULTS = {"variant": "orthogonal", "rank_safety": 0.025, "rank_utility": 0.25}
EXACT_SVD_MAX = 1024    # exact SVD when the smaller side of S is at most this, else torch.svd_lowrank
TOLERANCE = 1e-4        # singular values of (I - Pi_u) U_s below this are rounding, not an edit


def _params(params: dict) -> dict:
    from shb.errors import UsageError

    p = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    if p["variant"] not in VARIANTS:
        raise UsageError(f"actsvd variant must be one of {', '.join(VARIANTS)}, got {p['variant']!r}")
    if p["variant"] == "top_remove":
        del p["rank_utility"]     # unused: not part of the fit's identity
    return p


def top_directions(s, r: int, exact: bool | None = None):
    """(d_out, r) orthonormal: the top-r right singular vectors of s (n, d_out), r clamped to its rank bound."""
    import torch

    r = min(r, *s.shape)
    if r == 0:
        return s.new_zeros((s.shape[1], 0))
    if exact is None:
        exact = min(s.shape) <= EXACT_SVD_MAX
    if exact:
        return torch.linalg.svd(s, full_matrices=False).Vh[:r].T.contiguous()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)    # svd_lowrank draws a random sketch: fix it so a refit gives the same artefact
    try:
        _, _, v = torch.svd_lowrank(s, q=min(r + 10, *s.shape), niter=6)
    finally:
        torch.random.set_rng_state(generator_state)
    return v[:, :r].contiguous()


def edit_factors(w, x_safety, x_utility, variant: str, r_s: int, r_u: int):
    """(A, U), each (d_out, k): the edit dW = A U^T w of one map w (d_out, d_in), float32."""
    import torch

    u_s = top_directions(x_safety @ w.T, r_s)
    if variant == "top_remove":
        return u_s, u_s
    u_u = top_directions(x_utility @ w.T, r_u)
    residual = u_s - u_u @ (u_u.T @ u_s)                      # (I - Pi_u) U_s
    p, sigma, qh = torch.linalg.svd(residual, full_matrices=False)
    keep = sigma > TOLERANCE
    return (p[:, keep] * sigma[keep]).contiguous(), (u_s @ qh[keep].T).contiguous()


def _inputs(lm, layer: int, seqs, modules):
    """name -> (n_response_tokens, d_in) float32 inputs of each map of ``layer``."""
    import torch

    rows = {name: [] for name, _ in modules}
    state = {}

    def capture(name):
        def fn(x):
            rows[name].append(x[state["response"]].float())
        return fn

    edits = {f"L{layer}.{name}:in": capture(name) for name, _ in modules}
    with torch.no_grad():
        for ids, mask, response in teacher_forced(lm, seqs):
            state["response"] = response
            run_until(lm, layer, ids, mask, edits)
    return {name: torch.cat(chunks) for name, chunks in rows.items()}


def fit_work(params: dict, n_harmful: int, n_harmless: int, n_layers: int, max_new_tokens: int) -> dict:
    """Forward-pass equivalents of ``fit``: the greedy answers, then for layer l a pass through layers 0..l
    over every prompt with its answer ((L + 1) / 2 full passes each); the SVDs are not counted."""
    n = n_harmful + (n_harmless if _params(params)["variant"] == "orthogonal" else 0)
    return fit_cost(generate=answers_work(n, max_new_tokens),
                    forward=(n_layers + 1) / 2 * teacher_forced_work(n, max_new_tokens))


def fit(lm, data: FitData, params: dict, progress=None) -> Artefact:
    """Fit the edit of every linear map of every decoder layer; ``progress(1)`` after each layer."""
    from shb.errors import UsageError

    p = _params(params)
    safety = greedy_responses(lm, data.harmful, data.max_new_tokens)
    utility = greedy_responses(lm, data.harmless, data.max_new_tokens) if p["variant"] == "orthogonal" else None
    for name, seqs in (("harmful", safety), ("harmless", utility)):
        if seqs is not None and seqs.n_response_tokens == 0:
            raise UsageError(f"actsvd: the model's responses to the {name} prompts are empty: nothing to fit on")
    tensors, ranks, edits = {}, {}, {}
    for layer in range(lm.n_layers):
        modules = layer_linears(lm, layer)
        with swapped_weights(edits):    # the layers before this one carry their edit
            xs = _inputs(lm, layer, safety, modules)
            xu = _inputs(lm, layer, utility, modules) if utility is not None else xs
        for name, module in modules:
            w = weight_oi(module).detach().float()
            r_s = resolve_rank(p["rank_safety"], *w.shape, "actsvd rank_safety")
            r_u = resolve_rank(p.get("rank_utility", 0), *w.shape, "actsvd rank_utility")
            a, u = edit_factors(w, xs[name], xu[name], p["variant"], r_s, r_u)
            key = f"{layer}.{name}"
            ranks[key] = int(a.shape[1])
            if a.shape[1]:
                tensors[key + ".U"] = u.cpu()
                if a is not u:          # top_remove: A = U, stored once
                    tensors[key + ".A"] = a.cpu()
                edits[module] = _edited(module, a, u)
        if progress is not None:
            progress(1)
    meta = {"params": p, "ranks": ranks, "n_safety_tokens": safety.n_response_tokens,
            "n_utility_tokens": utility.n_response_tokens if utility is not None else None}
    return Artefact(KIND, tensors, meta)


def _edited(module, a, u):
    """The module's weight with dW = A U^T W removed, in its own dtype and layout."""
    w = weight_oi(module).detach()
    w32 = w.float()
    a, u = a.to(w.device), u.to(w.device)
    return from_oi(module, (w32 - a @ (u.T @ w32)).to(w.dtype))


def _modules(lm, artefact: Artefact) -> dict:
    """'layer.name' -> module for every map the artefact edits."""
    from shb.errors import ShbError

    found = {f"{layer}.{name}": m for layer in range(lm.n_layers) for name, m in layer_linears(lm, layer)}
    out = {}
    for key, rank in artefact.meta["ranks"].items():
        if rank:
            if key not in found:
                raise ShbError(f"actsvd artefact edits {key!r}, which this model does not have: "
                               "was it fitted on another model?")
            out[key] = found[key]
    return out


class LowRankEdit(ArtefactEdit, Intervention):
    """The fitted ActSVD edit: every map's weight swapped for W - A U^T W while applied."""

    kind = KIND
    _params = staticmethod(_params)

    def _new_weights(self, lm) -> dict:
        return {m: _edited(m, *self._factors(key)) for key, m in _modules(lm, self.artefact).items()}

    def _factors(self, key: str):
        t = self.artefact.tensors
        return t.get(key + ".A", t[key + ".U"]), t[key + ".U"]

    def applied(self, lm):
        return swapped_weights(self._new_weights(lm))

    def parameters_modified(self, lm) -> ParamCount:
        """entries: weight entries whose stored value changes; dof: k (d_in + d_out) per map of edit rank k."""
        import torch

        entries = dof = 0
        with torch.no_grad():
            for key, module in _modules(lm, self.artefact).items():
                a, u = self._factors(key)
                new = _edited(module, a, u)
                entries += int((new != module.weight).sum())
                d_out, d_in = weight_oi(module).shape
                dof += int(a.shape[1]) * (d_in + d_out)
        return ParamCount(entries, dof)

    @property
    def label(self) -> str:
        p = self.params
        ranks = f"r_s={p['rank_safety']}" + (f", r_u={p['rank_utility']}" if p["variant"] == "orthogonal" else "")
        return f"actsvd {p['variant']} ({ranks})"


def intervention(artefact: Artefact, params: dict) -> LowRankEdit:
    if artefact.kind != KIND:
        raise ValueError(f"not an actsvd artefact: {artefact.kind!r}")
    return LowRankEdit(artefact, params)

