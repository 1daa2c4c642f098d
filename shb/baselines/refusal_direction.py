"""Refusal direction (Arditi et al., "Refusal in Language Models Is Mediated by a Single Direction",
NeurIPS 2024), from the paper's definitions:

- candidates: r_{i,l} = mean over harmful prompts minus mean over harmless prompts of the residual
  stream at the input of layer l (resid_pre), at each post-instruction position i (the tokens of
  the prompt format after the instruction: here the longest token suffix every prompt shares,
  at least the last position), from the training part of the fit data;
- refusal score of a prompt: log P(R) - log(1 - P(R)) at the last position, R the refusal tokens
  (``refusal_tokens`` strings, first token of each; by default the ``n_refusal_tokens`` tokens
  whose mean probability on harmful training prompts most exceeds that on harmless ones);
- selection on held-out prompts (the last ``n_val`` of each class): the candidate that most lowers
  the mean refusal score on harmful prompts when ablated, among those with l < 0.8 L, mean
  KL(base || ablated) on harmless prompts at the last position below ``kl_max`` (0.1), and whose
  addition at layer l raises the mean harmless refusal score above 0 (``induce``). When no
  candidate passes every filter, the best one under the layer bound is kept and the artefact says
  so (meta ``fallback``);
- intervention: directional ablation (x <- x - r r^T x at every layer's input and output, all
  positions: ``apply: "hooks"``) or the equivalent weight orthogonalisation (embedding, every
  attention output projection and MLP output projection, biases included: ``apply: "weights"``).
  A test checks the two give the same logits on a model with its own LM head. With tied
  embeddings (SmolLM2, Gemma) the embedding matrix is also the LM head; Arditi et al.'s code
  orthogonalises it all the same (``orthogonalize_gemma_weights`` edits ``embed_tokens``, which
  Gemma's head shares), so shb does too: the head then reads x - r r^T x as well, a small
  difference from the hooks (0.03 in logits on the toy) that is the paper's own, and the shared
  matrix is counted once in the entries changed.

Parameters modified: entries changed by the orthogonalisation, counted from the edited matrices;
degrees of freedom: d (the direction).
"""

from __future__ import annotations

import contextlib
import math

from shb.baselines.base import Artefact, FitData, batches, encode_batch, fit_cost, forward
from shb.errors import UsageError
from shb.interventions import Intervention, ParamCount

KIND = "refusal_direction"
DEFAULTS = {"n_val": 16, "max_positions": 5, "kl_max": 0.1, "max_layer_fraction": 0.8, "refusal_tokens": None,
            "n_refusal_tokens": 1, "induce": True, "apply": "weights", "batch_size": 16}
# Architectures whose residual stream is written only by the token embedding, the attention output
# projection and the MLP output projection, with no norm after those writes: orthogonalising
# exactly those weights equals the hooks. Others (positional embeddings, post-norms) use the hooks.
WEIGHT_ARCHS = {"llama": "mlp.down_proj", "mistral": "mlp.down_proj", "qwen2": "mlp.down_proj",
                "gemma": "mlp.down_proj", "phi3": "mlp.down_proj"}


def options(params: dict) -> dict:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise UsageError(f"refusal_direction: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **params}


# -- fit ---------------------------------------------------------------------------------------
def post_instruction_positions(lm, texts: list[str], cap: int) -> int:
    """Length of the token suffix all prompts share (the format's post-instruction tokens), in [1, cap]."""
    from shb.models import encode_prompt

    ids = [encode_prompt(lm.tokenizer, t) for t in texts]
    n = 0
    while n < min(len(x) for x in ids) and len({tuple(x[len(x) - n - 1:]) for x in ids}) == 1:
        n += 1
    return max(1, min(n, cap))


def mean_residuals(lm, texts: list[str], n_pos: int, batch_size: int):
    """(n_layers, n_pos, d): the mean over prompts of each layer's input at the last n_pos positions."""
    import torch

    from shb.baselines.residual import capture_residual

    total = None
    for chunk in batches(texts, batch_size):
        input_ids, mask = encode_batch(lm, chunk)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad(), capture_residual(lm) as seen:
            lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions)
        stacked = torch.stack([h[:, -n_pos:, :].float() for h in seen[:lm.n_layers]], dim=1)  # (B, L, P, d)
        part = stacked.sum(0)
        total = part if total is None else total + part
    return total / len(texts)


def last_logprobs(lm, texts: list[str], batch_size: int):
    import torch

    return torch.cat([forward(lm, chunk)[:, -1, :].float().log_softmax(-1) for chunk in batches(texts, batch_size)])


def refusal_score(logprobs, tokens):
    """log P(R) - log(1 - P(R)) per prompt, P(R) the probability of any refusal token."""
    import torch

    log_p = torch.logsumexp(logprobs[:, tokens], dim=-1)
    return log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))


def choose_refusal_tokens(lm, harmful_lp, harmless_lp, opts) -> list[int]:
    if opts["refusal_tokens"]:
        tokens = []
        for text in opts["refusal_tokens"]:
            ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise UsageError(f"refusal_direction: refusal token {text!r} tokenizes to nothing")
            tokens.append(ids[0])
        return sorted(set(tokens))
    gap = harmful_lp.exp().mean(0) - harmless_lp.exp().mean(0)
    return gap.topk(opts["n_refusal_tokens"]).indices.tolist()


def split(texts: list[str], n_val: int, what: str) -> tuple[list[str], list[str]]:
    n_val = min(n_val, len(texts) // 2)
    if n_val < 1:
        raise UsageError(f"refusal_direction: {what} fit data needs at least 2 prompts (training and held out), "
                         f"got {len(texts)}")
    return texts[:-n_val], texts[-n_val:]


def fit_work(params: dict, n_harmful: int, n_harmless: int, n_layers: int, max_new_tokens: int) -> dict:
    """Forward-pass equivalents of ``fit`` (shb.plan prices a pending fit with them): the means and the
    refusal tokens on the training part, the base scores on the held-out part, then every candidate
    (layers below ``max_layer_fraction`` x ``max_positions``, an upper bound: the shared suffix may be
    shorter) ablated on both held-out classes and added on the harmless one."""
    opts = options(params)
    val_harm, val_safe = min(opts["n_val"], n_harmful // 2), min(opts["n_val"], n_harmless // 2)
    train = (n_harmful - val_harm) + (n_harmless - val_safe)
    candidates = max(1, math.ceil(opts["max_layer_fraction"] * n_layers)) * opts["max_positions"]
    return fit_cost(forward=2 * train + val_harm + val_safe
                    + candidates * (val_harm + val_safe + (val_safe if opts["induce"] else 0)))


def fit(lm, data: FitData, params: dict, progress=None) -> Artefact:
    import torch

    from shb.baselines.residual import add_direction, directional_ablation

    opts = options(params)
    bs = opts["batch_size"]
    harm_train, harm_val = split(data.harmful, opts["n_val"], "harmful")
    safe_train, safe_val = split(data.harmless, opts["n_val"], "harmless")
    n_pos = post_instruction_positions(lm, data.harmful + data.harmless, opts["max_positions"])
    candidates = mean_residuals(lm, harm_train, n_pos, bs) - mean_residuals(lm, safe_train, n_pos, bs)  # (L, P, d)
    tokens = choose_refusal_tokens(lm, last_logprobs(lm, harm_train, bs), last_logprobs(lm, safe_train, bs), opts)
    base_harm = refusal_score(last_logprobs(lm, harm_val, bs), tokens).mean().item()
    base_safe_lp = last_logprobs(lm, safe_val, bs)
    max_layer = math.ceil(opts["max_layer_fraction"] * lm.n_layers)  # layers l < 0.8 L
    rows = []
    for layer in range(max(1, max_layer)):
        for pos in range(n_pos):
            r = candidates[layer, pos]
            if not torch.isfinite(r).all() or r.norm() == 0:
                continue
            with directional_ablation(lm, r):
                harm = refusal_score(last_logprobs(lm, harm_val, bs), tokens).mean().item()
                ablated = last_logprobs(lm, safe_val, bs)
            kl = (base_safe_lp.exp() * (base_safe_lp - ablated)).sum(-1).mean().item()
            induced = None
            if opts["induce"]:
                with add_direction(lm, layer, r):
                    induced = refusal_score(last_logprobs(lm, safe_val, bs), tokens).mean().item()
            ok = kl < opts["kl_max"] and (induced is None or induced > 0)
            rows.append({"layer": layer, "position": pos - n_pos, "refusal_score": harm, "kl": kl,
                         "induced_score": induced, "passes": ok})
            if progress is not None:
                progress(1)
    if not rows:
        raise UsageError("refusal_direction: every candidate direction is zero (harmful and harmless means coincide)")
    passing = [r for r in rows if r["passes"]]
    best = min(passing or rows, key=lambda r: (r["refusal_score"], r["layer"], r["position"]))
    direction = candidates[best["layer"], n_pos + best["position"]]
    meta = {"layer": best["layer"], "position": best["position"], "n_positions": n_pos, "refusal_tokens": tokens,
            "base_refusal_score": base_harm, "selected": best, "fallback": not passing, "candidates": rows,
            "n_train": [len(harm_train), len(safe_train)], "n_val": [len(harm_val), len(safe_val)]}
    return Artefact(KIND, {"direction": direction.float().cpu(), "candidates": candidates.float().cpu()}, meta)


# -- intervention ------------------------------------------------------------------------------
def residual_writers(lm) -> list[tuple[object, bool]]:
    """(module, is_embedding) for every module whose output is added to the residual stream."""
    arch = lm.layout.arch
    if arch not in WEIGHT_ARCHS:
        raise UsageError(f"refusal_direction: weight orthogonalisation is implemented for {sorted(WEIGHT_ARCHS)}; "
                         f"this model is {arch!r}: set \"apply\": \"hooks\" (directional ablation, same effect)")
    out = [(lm.model.get_input_embeddings(), True)]
    for index, layer in enumerate(lm.layout.layers(lm.model)):
        out.append((lm.layout.module(lm.model, index, lm.layout.output), False))
        module = layer
        for part in WEIGHT_ARCHS[arch].split("."):
            module = getattr(module, part)
        out.append((module, False))
    return out


def orthogonalised(weight, unit, is_embedding: bool):
    """The matrix with the direction removed from what it writes: embedding rows (V, d) or Linear
    outputs (d, d_in); a bias (d,) as a vector."""
    r = unit.to(dtype=weight.dtype, device=weight.device)
    if weight.dim() == 1:
        return weight - (weight @ r) * r
    if is_embedding:
        return weight - (weight @ r).unsqueeze(-1) * r
    return weight - r.unsqueeze(-1) * (r @ weight)


class RefusalDirection(Intervention):
    kind = KIND

    def __init__(self, direction, apply: str = "weights", fit_hash: str | None = None):
        if apply not in ("weights", "hooks"):
            raise UsageError(f"refusal_direction: apply must be 'weights' or 'hooks', got {apply!r}")
        self.direction = direction
        self.unit = direction / direction.norm()
        self.apply = apply
        self.fit_hash = fit_hash

    def identity(self) -> dict:
        return {"kind": KIND, "apply": self.apply, "artefact": self.fit_hash}

    def _edits(self, lm):
        for module, is_embedding in residual_writers(lm):
            for name in ("weight", "bias"):
                tensor = getattr(module, name, None)
                if tensor is not None:
                    yield tensor, orthogonalised(tensor.data, self.unit, is_embedding and name == "weight")

    @contextlib.contextmanager
    def _weights(self, lm):
        saved = []
        try:
            for tensor, new in list(self._edits(lm)):
                saved.append((tensor, tensor.data.clone()))
                tensor.data.copy_(new)
            yield
        finally:
            for tensor, old in saved:
                tensor.data.copy_(old)

    def applied(self, lm):
        if self.apply == "hooks":
            from shb.baselines.residual import directional_ablation

            return directional_ablation(lm, self.unit)
        return self._weights(lm)

    def parameters_modified(self, lm) -> ParamCount:
        try:
            entries = sum(int((new != tensor.data).sum()) for tensor, new in self._edits(lm))
        except UsageError:
            # Hooks on an architecture without a weight form here: no edited matrices to count from,
            # so the entry count is unknown (NULL in the database), not a made-up number.
            entries = None
        return ParamCount(entries, int(self.unit.numel()))

    @property
    def label(self) -> str:
        return f"refusal direction ({self.apply})"


def intervention(artefact: Artefact, params: dict) -> RefusalDirection:
    opts = options(params)
    return RefusalDirection(artefact.tensors["direction"], opts["apply"], artefact.meta.get("_sha256"))
