"""Benign loss: next-token negative log-likelihood of a text set under the current model state.

For a text of tokens t_0 .. t_{n-1} (tokenized as shb feeds prompts: ``shb.models.encode_prompt``,
so a chat-formatted text is not given a second BOS), the summed NLL is
    sum_{i=1}^{n-1} -log p(t_i | t_<i)
over its n - 1 predicted tokens; the per-text value is that sum divided by n - 1, the same
quantity as ``transformers``' ``model(ids, labels=ids).loss`` on the text alone.

Texts are batched with right padding: a causal model's logits at real positions do not depend on
tokens that come after them, so the padding changes nothing at the positions that are scored
(a test compares with one text at a time). Run it inside an intervention's ``applied(lm)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextLoss:
    index: int          # position of the text in the input list
    sum_nll: float      # nats, summed over the predicted tokens
    n_predicted: int    # tokens predicted (n - 1)

    @property
    def mean_nll(self) -> float:
        return self.sum_nll / self.n_predicted if self.n_predicted else float("nan")


def text_losses(lm, texts: list[str], batch_size: int = 8, progress=None) -> list[TextLoss]:
    """One TextLoss per text (texts of a single token have n_predicted = 0 and mean_nll nan)."""
    import torch

    from shb.models import encode_prompt

    encoded = [encode_prompt(lm.tokenizer, t) for t in texts]
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    # Longest first, so each batch pads little and a memory problem shows at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out: dict[int, TextLoss] = {}
    device = lm.model.device
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
            mask[r, : len(encoded[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            logits = lm.model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).double()
        scored = mask[:, 1:].bool()
        for r, i in enumerate(rows):
            n = int(scored[r].sum())
            out[i] = TextLoss(i, float(-token_logp[r][scored[r]].sum()), n)
        if progress is not None:
            progress(len(rows))
    return [out[i] for i in range(len(texts))]
