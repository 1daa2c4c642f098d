"""Safety neurons: GTAC ranking and DAP patching (Chen et al. 2024, "Finding Safety Neurons in Large
Language Models", arXiv 2406.14144; later "Towards Understanding Safety Alignment: A Mechanistic
Perspective from Safety Neurons").

Neurons: the MLP's intermediate activations, i.e. the input of the MLP's last linear map (Llama's
down_proj input act(gate(x)) * up(x); GPT-2's mlp.c_proj input), in every decoder layer but the last.

GTAC (generation-time activation contrasting), as fitted here: the reference (unaligned) model
greedily completes the fit prompts (``prompts``: the harmful ones by default - Chen et al. use
HH-RLHF's red-team prompts); the aligned model and the reference both run teacher-forced on
prompt + completion; neuron i scores sqrt(mean_t (a_i^aligned - a_i^reference)^2), the mean over
every completion token of every prompt. Neurons are ranked globally (across layers; ties go to
the lower layer, then the lower index). ``neurons``: a count, or a float in (0, 1) as a fraction of
all candidates, rounded up.

DAP (dynamic activation patching). Chen et al. patch the aligned model's activations into the
unaligned model to restore safety. Zhou et al.'s Table 1 uses GTAC&DAP to *remove* safety from
the aligned model (its ASR rises), so the direction here is the reverse: while the intervention
is applied, the aligned model's top-``neurons`` neurons are overwritten with the reference
model's activations on the same tokens. The reference runs alongside on every forward call (same
input ids, mask and positions; its own KV cache, paired with the aligned model's cache), so
patching works token by token during generation. How Zhou et al. ran it is unverified
(docs/methods.md, "Chen et al. safety neurons").

parameters_modified: no stored weight changes; like a head ablation (its slice counted), the
patched neurons' weights are counted, both as entries and as dof: per neuron, its row in every
MLP map that writes the intermediate activation (gate and up: d_model each, plus a bias entry
where there is one) and its column in the map that reads it (down: d_model). 3 d_model per Llama
neuron.
"""

from __future__ import annotations

import contextlib
import hashlib

from shb.baselines.base import Artefact, FitData, answers_work, fit_cost, teacher_forced_work
from shb.baselines.fitting import greedy_responses, teacher_forced, weight_oi
from shb.interventions import Intervention, ParamCount

KIND = "safety_neurons"
PROMPTS = ("harmful", "harmless", "both")
DEFAULTS = {"neurons": 0.05, "prompts": "harmful"}


def _params(params: dict) -> dict:
    from shb.errors import UsageError

    p = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    if p["prompts"] not in PROMPTS:
        raise UsageError(f"safety_neurons prompts must be one of {', '.join(PROMPTS)}, got {p['prompts']!r}")
    n = p["neurons"]
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 0 or (isinstance(n, float) and n >= 1):
        raise UsageError(f"safety_neurons neurons must be a count >= 0 or a fraction in (0, 1), got {n!r}")
    return p


def mlp_maps(lm, layer: int):
    """(writers, reader): the MLP maps that produce the intermediate activation, and the one that reads it
    (its input is the point ``L<layer>.mlp.act``)."""
    from shb.errors import ShbError
    from shb.models.layout import UnsupportedArchitecture

    try:
        return lm.layout.mlp(lm.model, layer)
    except UnsupportedArchitecture as exc:
        raise ShbError(f"safety_neurons: {exc}") from None


def candidate_layers(lm) -> range:
    return range(lm.n_layers - 1)


def _batch_activations(lm, ids, mask, response) -> dict:
    """Per candidate layer, (completion tokens of the batch, d_ff) float32 inputs of the MLP's reader map."""
    import torch

    from shb import hooks

    names = {}
    for layer in candidate_layers(lm):
        mlp_maps(lm, layer)  # a missing MLP is refused with the method's name
        names[layer] = f"L{layer}.mlp.act"
    seen, grab = hooks.record(names.values(), keep=lambda x: x[response].float())
    with torch.no_grad(), hooks.at(lm, grab):
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    return {layer: seen[name] for layer, name in names.items()}


def gtac_scores(lm, ref, seqs) -> dict:
    """layer -> (d_ff,) sqrt(mean over completion tokens of (a_aligned - a_reference)^2).

    Both models run batch by batch on the same teacher-forced tokens; only the sums are kept."""
    sums = {}
    for ids, mask, response in teacher_forced(lm, seqs):
        aligned, reference = _batch_activations(lm, ids, mask, response), _batch_activations(ref, ids, mask, response)
        for layer in aligned:
            sq = (aligned[layer] - reference[layer]).pow(2).sum(0)
            sums[layer] = sums[layer] + sq if layer in sums else sq
    return {layer: (total / seqs.n_response_tokens).sqrt().cpu() for layer, total in sums.items()}


def fit_work(params: dict, n_harmful: int, n_harmless: int, n_layers: int, max_new_tokens: int) -> dict:
    """Forward-pass equivalents of ``fit``: the reference model's greedy answers, then a pass of each model
    over every prompt with its answer (GTAC)."""
    n = {"harmful": n_harmful, "harmless": n_harmless, "both": n_harmful + n_harmless}[_params(params)["prompts"]]
    return fit_cost(generate=answers_work(n, max_new_tokens), forward=2 * teacher_forced_work(n, max_new_tokens))


def fit(lm, data: FitData, params: dict, progress=None) -> Artefact:
    """GTAC scores of every candidate neuron; ``progress(1)`` after generation and after scoring."""
    from shb.errors import UsageError
    from shb.models import encode_prompt

    p = _params(params)
    ref = data.reference
    if ref is None:
        raise UsageError("safety_neurons needs a reference (unaligned) model in its fit data")
    prompts = {"harmful": data.harmful, "harmless": data.harmless, "both": data.harmful + data.harmless}[p["prompts"]]
    for prompt in prompts:
        if encode_prompt(lm.tokenizer, prompt) != encode_prompt(ref.tokenizer, prompt):
            raise UsageError("safety_neurons: the reference model tokenizes the prompts differently from the "
                             "aligned model; it must share the tokenizer (e.g. the base of the chat model)")
    seqs = greedy_responses(ref, prompts, data.max_new_tokens)
    if seqs.n_response_tokens == 0:
        raise UsageError("safety_neurons: the reference model's completions are all empty: nothing to score")
    if progress is not None:
        progress(1)
    tensors = {f"scores.{layer}": score for layer, score in gtac_scores(lm, ref, seqs).items()}
    if progress is not None:
        progress(1)
    meta = {"params": p, "n_tokens": seqs.n_response_tokens, "reference": {"source": ref.source, "path": ref.path}}
    return Artefact(KIND, tensors, meta)


def top_neurons(artefact: Artefact, neurons) -> dict:
    """layer -> sorted neuron indices of the globally top-``neurons`` scores (ties: lower layer, index)."""
    import math

    import torch

    layers = sorted(int(k.split(".")[1]) for k in artefact.tensors if k.startswith("scores."))
    scores = [artefact.tensors[f"scores.{layer}"] for layer in layers]
    flat = torch.cat(scores)
    k = math.ceil(neurons * flat.numel()) if isinstance(neurons, float) else min(int(neurons), flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    bounds = torch.tensor([0] + [s.numel() for s in scores]).cumsum(0)
    out = {}
    for i, layer in enumerate(layers):
        chosen = order[(order >= bounds[i]) & (order < bounds[i + 1])] - bounds[i]
        if chosen.numel():
            out[layer] = chosen.sort().values
    return out


def _cache_of(output):
    """The KV cache a forward returned (``cache`` in transformers 5, ``past_key_values`` before)."""
    try:
        return output.cache
    except AttributeError:
        return getattr(output, "past_key_values", None)


class NeuronPatch(Intervention):
    """DAP: the aligned model's top neurons take the reference model's activations on the same tokens."""

    kind = KIND

    def __init__(self, artefact: Artefact, params: dict, reference=None):
        self.artefact = artefact
        self.params = _params(params)
        self.reference = reference      # a LoadedModel; needed by applied(), not stored in the identity
        self.neurons = top_neurons(artefact, self.params["neurons"])
        # the framework records the stored blob's hash in meta; hash the artefact only when it did not
        self._digest = artefact.meta.get("_sha256") or hashlib.sha256(artefact.to_bytes()).hexdigest()

    def identity(self) -> dict:
        return {"kind": KIND, "params": self.params, "artefact": self._digest,
                "reference": self.artefact.meta.get("reference")}

    @contextlib.contextmanager
    def applied(self, lm):
        import torch
        from transformers import DynamicCache

        from shb import hooks
        from shb.errors import ShbError

        ref = self.reference
        if ref is None:
            raise ShbError("safety_neurons (DAP) needs the reference model while applied: pass reference= to "
                           "shb.baselines.safety_neurons.intervention() or set the intervention's .reference")
        state = {"in_ref": False, "acts": {}, "caches": {}}

        def run_reference(args, kwargs):
            if state["in_ref"]:
                return None         # the reference is this very model: its own pass is not patched
            kw = dict(kwargs)
            for key in ("cache", "past_key_values"):
                cache = kw.get(key)
                if cache is None:
                    continue
                if cache.get_seq_length() == 0:
                    state["caches"].clear()     # a new sequence: the reference starts a new cache too
                    kw[key] = DynamicCache(config=ref.model.config)
                elif id(cache) in state["caches"]:
                    kw[key] = state["caches"][id(cache)][1]
                else:
                    raise ShbError("safety_neurons (DAP): the model got a KV cache the reference has no twin for")
            state["in_ref"] = True
            try:
                with torch.no_grad():
                    out = ref.model(*args, **kw)
            finally:
                state["in_ref"] = False
            state["ref_cache"] = _cache_of(out)
            return None

        def pair_caches(_args, _kwargs, output):
            if not state["in_ref"] and _cache_of(output) is not None and state.get("ref_cache") is not None:
                # keep the aligned cache alive beside its twin, so that its id cannot be reused
                state["caches"][id(_cache_of(output))] = (_cache_of(output), state["ref_cache"])

        def capture(layer, idx):
            def fn(x):
                if state["in_ref"]:
                    state["acts"][layer] = x[..., idx].clone()
            return fn

        def patch(layer, idx):
            def fn(x):
                if state["in_ref"]:
                    return None
                if layer not in state["acts"]:
                    raise ShbError("safety_neurons (DAP): an MLP ran without the model's forward (call lm.model, "
                                   "not a submodule, while the intervention is applied)")
                x = x.clone()
                x[..., idx] = state["acts"].pop(layer).to(x.dtype)
                return x
            return fn

        for layer in self.neurons:  # a missing MLP is refused with the method's name
            mlp_maps(ref, layer)
            mlp_maps(lm, layer)
        index = {layer: idx.to(lm.device) for layer, idx in self.neurons.items()}
        try:
            with hooks.on_call(lm, before=run_reference, after=pair_caches), \
                    hooks.at(ref, {f"L{layer}.mlp.act": capture(layer, idx) for layer, idx in index.items()}), \
                    hooks.at(lm, {f"L{layer}.mlp.act": patch(layer, idx) for layer, idx in index.items()}):
                yield
        finally:
            state.clear()

    def parameters_modified(self, lm) -> ParamCount:
        """The patched neurons' weights (rows of the maps that write them, columns of the one that reads them)."""
        count = chosen = 0
        for layer, idx in self.neurons.items():
            writers, reader = mlp_maps(lm, layer)
            per_neuron = weight_oi(reader).shape[0] + sum(
                weight_oi(m).shape[1] + (m.bias is not None) for m in writers)
            count += per_neuron * int(idx.numel())
            chosen += int(idx.numel())
        return ParamCount(count, chosen)   # dof: the neurons chosen (their values come from the reference run)

    @property
    def label(self) -> str:
        return f"safety neurons DAP (top {self.params['neurons']})"


def intervention(artefact: Artefact, params: dict, reference=None) -> NeuronPatch:
    """``reference``: the unaligned model (a LoadedModel) whose activations are patched in."""
    if artefact.kind != KIND:
        raise ValueError(f"not a safety_neurons artefact: {artefact.kind!r}")
    return NeuronPatch(artefact, params, reference)
