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
NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_norm")
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
        return logits, hidden


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
    containers = [c for c in (base, getattr(base, "decoder", None)) if isinstance(c, torch.nn.Module)]
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
