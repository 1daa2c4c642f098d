"""Ships (paper Eq. 9): KL(p_base || p_ablated) of the next-token distribution at the last prompt position."""

from __future__ import annotations

import torch


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in float32, whatever the model's dtype (bf16 logits lose the tail)."""
    return torch.log_softmax(logits.float(), dim=-1)


def kl_from_log_probs(base_logp: torch.Tensor, ablated_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dimension, from log-probabilities (..., V) -> (...), accumulated in float32.

    Vocabulary entries where p is exactly 0 contribute 0 (the limit p log p -> 0), never NaN.
    """
    if base_logp.shape[-1] != ablated_logp.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: {base_logp.shape[-1]} vs {ablated_logp.shape[-1]}")
    lp = base_logp.float()
    lq = ablated_logp.float()
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros((), dtype=lp.dtype, device=lp.device))
    return terms.sum(-1)
