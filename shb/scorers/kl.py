"""Ships (paper Eq. 9): KL(p_base || p_ablated) of the next-token distribution at the last prompt position.

The log-softmax and the KL sum run in float64 whatever the model's dtype: the result is then the
KL between the two distributions the model's logits define, to ~1e-15, so it is never negative
beyond that and weak heads (KL ~ 1e-7) keep their digits. The cost is one pass over the
vocabulary per row, small next to the forward pass.
"""

from __future__ import annotations

import torch


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last (vocabulary) dimension, in float64."""
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def kl_from_log_probs(base_logp: torch.Tensor, ablated_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension from log-probabilities (..., V) -> (...), in float64.

    Entries where p is exactly 0 contribute 0 (the limit p log p -> 0), never NaN.
    """
    if base_logp.shape[-1] != ablated_logp.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: {base_logp.shape[-1]} vs {ablated_logp.shape[-1]}")
    lp = base_logp.to(torch.float64)
    lq = ablated_logp.to(torch.float64)
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros((), dtype=lp.dtype, device=lp.device))
    return terms.sum(-1)
