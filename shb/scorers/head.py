"""The scoring head: final norm -> (output projection) -> LM head -> (final logit soft-capping) of the
scored position, run in float32 or wider whatever the model's dtype.

Why: Ships (paper Eq. 9) is a KL between two next-token distributions. A bf16 LM head hands out
logits with 8 bits of mantissa (about 0.4% relative: a logit of 20 is rounded to the nearest 0.125),
and a KL of 1e-4 between two such distributions is mostly that rounding. The residual stream that
reaches the head is the model's own (bf16 on a bf16 model); everything from the final norm on is
recomputed here in float32 from a float32 copy of those few modules (the LM head is the only large
one: vocabulary x hidden, 0.5 GiB in float32 for Llama-2-7B). A float32 or float64 model is scored by
its own modules, untouched.

``ScoringHead.chain_input(model)`` gives the point where the chain starts: the engine and the naive
loop both read the hidden states entering the first module of the chain (the final norm where there
is one), at the last position only.
"""

from __future__ import annotations

import copy

import torch

# Attribute names of the final norm on the base models of the supported architectures (Llama, Mistral,
# Qwen2, Gemma, Gemma-2, Phi-3: ``norm``; GPT-2: ``ln_f``; GPT-NeoX, OPT's decoder: ``final_layer_norm``).
NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_norm", "final_layernorm", "norm_f", "embedding_norm")  # + Jamba, LFM2
PROJECT_OUT_NAMES = ("project_out",)  # OPT with word_embed_proj_dim != hidden_size


def scoring_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """float32, or the model's dtype when it is wider (float64 stays float64)."""
    return model_dtype if model_dtype in (torch.float32, torch.float64) else torch.float32


class ScoringHead:
    """``head(h)`` on last-position hidden states ``h`` (B, d) entering the final norm ->
    (logits (B, V) in the scoring dtype, LM-head input (B, d') float32)."""

    def __init__(self, model):
        self.model = model
        self.lm_head = model.get_output_embeddings()
        if self.lm_head is None:
            raise RuntimeError(f"{type(model).__name__} has no output embeddings (LM head) to score with")
        self.slots = _chain_slots(model)  # [(parent, attribute name)] of the modules before the LM head
        model_dtype = next(model.parameters()).dtype
        self.dtype = scoring_dtype(model_dtype)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        originals = [getattr(parent, name) for parent, name in self.slots] + [self.lm_head]
        if all(_dtype_of(m) in (None, self.dtype) for m in originals):
            self._modules = originals  # already in the scoring dtype: the model's own modules
            self.widened, self.extra_bytes = False, 0
        else:
            self._modules = [_widened(m, self.dtype) for m in originals]
            self.widened = True
            self.extra_bytes = sum(p.numel() * p.element_size() for m in self._modules for p in m.parameters())
        self.scale = 1.0
        self.scale = self._calibrate()

    @property
    def first(self) -> torch.nn.Module:
        """The first module of the chain in the model (its input is what ``__call__`` takes)."""
        if self.slots:
            parent, name = self.slots[0]
            return getattr(parent, name)
        return self.lm_head

    @torch.no_grad()
    def __call__(self, h: torch.Tensor):
        x = h.to(self.dtype)
        for module in self._modules[:-1]:
            x = module(x)
        hidden = x.float()
        logits = self._modules[-1](x)
        if self.softcap:  # Gemma-2: logits = cap * tanh(logits / cap), as its causal-LM forward does
            logits = torch.tanh(logits / self.softcap) * self.softcap
        if self.scale != 1.0:  # Cohere's logit_scale, Granite's logits_scaling, ... (see _calibrate)
            logits = logits * self.scale
        return logits, hidden

    @torch.no_grad()
    def _calibrate(self) -> float:
        """The constant the model's causal-LM forward multiplies its logits by after the LM head.

        Some architectures scale the logits in their forward (Cohere: ``* logit_scale``; Granite:
        ``/ logits_scaling``; others multiply by a config value), which a chain rebuilt from modules
        does not see. One short forward of the model itself tells the factor, whatever its name; a
        post-processing that is not a constant factor is refused rather than scored wrongly.
        """
        model = self.model
        device = next(model.parameters()).device
        vocab = self.lm_head.weight.shape[0]
        ids = (torch.arange(3, 8, device=device) % vocab)[None]  # (1, 5): any tokens will do
        seen = {}

        def grab(_module, args, kwargs):
            seen["h"] = args[0] if args else next(iter(kwargs.values()))

        handle = self.first.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            own = model(input_ids=ids).logits[0, -1].to(self.dtype)  # (V,)
        finally:
            handle.remove()
        chain = self(seen["h"][:, -1])[0][0]  # (V,)
        denom = float((chain * chain).sum())
        scale = float((own * chain).sum()) / denom if denom > 0 else 1.0
        # The model's own logits are rounded to its dtype: compare at that precision. A factor within
        # rounding of 1 is 1 (the scalings this is for are far from 1: Cohere 1/16, Granite 1/8, ...).
        wide = next(model.parameters()).dtype in (torch.float32, torch.float64)
        tol = 1e-4 if wide else 3e-2
        if abs(scale - 1.0) < (1e-6 if wide else 1e-2):
            scale = 1.0
        error = float((own - scale * chain).abs().max())
        if error > tol * max(float(own.abs().max()), 1e-6):
            raise RuntimeError(
                f"shb's scoring head does not reproduce {type(model).__name__}'s logits (largest difference "
                f"{error:.3g}): its forward post-processes the LM head's output in a way shb does not know, "
                "so Ships cannot be scored exactly for this architecture")
        return scale


def _dtype_of(module):
    p = next(module.parameters(), None)
    return None if p is None else p.dtype


def _widened(module, dtype):
    """A copy of ``module`` in ``dtype`` (parameters only: the model keeps its own)."""
    clone = copy.deepcopy(module)
    clone._forward_hooks.clear()
    clone._forward_pre_hooks.clear()
    return clone.to(dtype)


def _chain_slots(model) -> list[tuple[torch.nn.Module, str]]:
    """(parent, name) of the final norm and output projection that sit between the last decoder layer and the LM head."""
    base = getattr(model, "base_model", None)
    inner = getattr(model, "model", None)  # Llama-4's base_model_prefix names no attribute of the causal LM
    containers = [c for c in (base, getattr(base, "decoder", None), inner, getattr(inner, "decoder", None))
                  if isinstance(c, torch.nn.Module) and c is not model]
    slots, norm_seen = [], False
    for names in (NORM_NAMES, PROJECT_OUT_NAMES):
        for container in containers:
            # hasattr, not _modules: a module set to None (OPT-350m's final_layer_norm) is a plain attribute
            found = [n for n in names if hasattr(container, n)]
            if not found:
                continue
            norm_seen = norm_seen or names is NORM_NAMES
            module = getattr(container, found[0])
            if isinstance(module, torch.nn.Module):
                slots.append((container, found[0]))
            break
    if not norm_seen:
        raise RuntimeError(f"no final norm found on {type(model).__name__} (looked for {', '.join(NORM_NAMES)}); "
                           "shb cannot score this architecture in float32")
    return slots
