"""Ships (paper Eq. 9): KL(p_base || p_ablated) of the next-token distribution at the last prompt position."""

from __future__ import annotations

import torch


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in float64, whatever the model's dtype.

    Only the last position is scored (P x V values), so float64 costs nothing, and it keeps the
    cancellation in log p - log q from dominating small KL values (fp32 gave ~1e-4 relative error
    at KL ~ 1e-3)."""
    return torch.log_softmax(logits.double(), dim=-1)


def kl_from_log_probs(base_logp: torch.Tensor, ablated_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dimension, from log-probabilities (..., V) -> (...), accumulated in float64.

    Vocabulary entries where p is exactly 0 contribute 0 (the limit p log p -> 0), never NaN.
    """
    if base_logp.shape[-1] != ablated_logp.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: {base_logp.shape[-1]} vs {ablated_logp.shape[-1]}")
    lp = base_logp.double()
    lq = ablated_logp.double()
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros((), dtype=lp.dtype, device=lp.device))
    return terms.sum(-1)
