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

import torch

from shb import hooks
from shb.hooks.raw import unhooked_copy


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
        seen, grab = hooks.record(["final_norm.in"], detach=False)
        with hooks.at(model, grab):
            own = model(input_ids=ids).logits[0, -1].to(self.dtype)  # (V,)
        chain = self(seen["final_norm.in"][:, -1])[0][0]  # (V,)
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
    return unhooked_copy(module).to(dtype)


def _chain_slots(model) -> list[tuple[torch.nn.Module, str]]:
    """(parent, name) of the final norm and output projection that sit between the last decoder layer and the LM head."""
    from shb.models.layout import UnsupportedArchitecture

    try:
        return hooks.final_slots(model)
    except UnsupportedArchitecture as exc:
        raise RuntimeError(f"{exc}; shb cannot score this architecture in float32") from None
