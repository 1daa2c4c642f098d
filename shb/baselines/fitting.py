"""Pieces shared by the weight-level methods (ActSVD, set difference, safety neurons).

- the linear maps inside the decoder layers, found generically (nn.Linear and GPT-2's Conv1D),
  with their weight seen as (d_out, d_in) whatever the storage;
- the fit data of Wei et al. 2024: prompts with the model's own greedy responses, fed teacher-forced
  with a mask that keeps response tokens only;
- a weight swap that restores the original tensors bit-exactly, also on exceptions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from shb.baselines.base import batches


def is_linear(module) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def is_conv1d(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def layer_linears(lm, layer: int) -> list[tuple[str, object]]:
    """(name inside the layer, module) of every linear map of decoder layer ``layer``, in module order."""
    block = lm.layout.layers(lm.model)[layer]
    return [(name, m) for name, m in block.named_modules() if name and is_linear(m)]


def weight_oi(module):
    """The weight as (d_out, d_in): a view for nn.Linear, the transpose for Conv1D (stored (in, out))."""
    w = module.weight
    return w.t() if is_conv1d(module) else w


def from_oi(module, w_oi):
    """A (d_out, d_in) matrix in the module's storage layout, contiguous like the original weight."""
    return (w_oi.t() if is_conv1d(module) else w_oi).contiguous()


@contextlib.contextmanager
def swapped_weights(new_weights: dict):
    """Set ``module.weight.data`` to each new tensor; put the original tensor objects back on exit.

    The originals are kept, not recomputed, so restoring is bit-exact whatever the edit was."""
    saved = []
    try:
        for module, tensor in new_weights.items():
            saved.append((module, module.weight.data))
            module.weight.data = tensor
        yield
    finally:
        for module, original in reversed(saved):
            module.weight.data = original


def resolve_rank(rank, d_out: int, d_in: int, what: str) -> int:
    """An int rank as is; a float in (0, 1) as that fraction of min(d_out, d_in), rounded up."""
    import math

    from shb.errors import UsageError

    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise UsageError(f"{what} must be an int >= 0 or a fraction in (0, 1), got {rank!r}")
    if isinstance(rank, float):
        if not 0.0 < rank < 1.0:
            raise UsageError(f"{what} as a float is a fraction of the matrix's smaller side: "
                             f"it must lie in (0, 1), got {rank}")
        return max(1, math.ceil(rank * min(d_out, d_in)))
    if rank < 0:
        raise UsageError(f"{what} must be >= 0, got {rank}")
    return int(rank)


def fraction(value, what: str) -> float:
    from shb.errors import UsageError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise UsageError(f"{what} must be a fraction in [0, 1], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- responses


@dataclass
class Sequences:
    """Prompt + response token ids, and where the response starts in each."""

    ids: list[list[int]]
    starts: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_response_tokens(self) -> int:
        return sum(len(x) - s for x, s in zip(self.ids, self.starts))


def greedy_responses(lm, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> Sequences:
    """Each prompt with ``lm``'s own greedy answer (shb.generate's cached loop, no intervention)."""
    from shb.generate import cached_batch, normalize_decoding
    from shb.models import encode_prompt

    spec = normalize_decoding({"mode": "greedy"})
    encoded = [encode_prompt(lm.tokenizer, p) for p in prompts]
    out = Sequences([], [])
    for chunk in batches(encoded, batch_size):
        answers = cached_batch(lm, chunk, [0] * len(chunk), [()] * len(chunk),
                                {"kind": "undifferentiated", "epsilon": 0.0, "site": None}, spec, max_new_tokens)
        for ids, (answer, _reason) in zip(chunk, answers):
            out.ids.append(list(ids) + list(answer))
            out.starts.append(len(ids))
    return out


def teacher_forced(lm, seqs: Sequences, batch_size: int = 8):
    """Yield (input_ids, attention_mask, response_mask), each (B, T), right-padded.

    response_mask marks the positions whose input token is a response token: activations are taken
    there, and the NLL of Wei et al. counts the predictions of those tokens. Right padding leaves
    the real tokens' positions and causal context as they are alone."""
    import torch

    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    rows = list(zip(seqs.ids, seqs.starts))
    for chunk in batches(rows, batch_size):
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        response = torch.zeros((len(chunk), width), dtype=torch.bool)
        for b, (ids, start) in enumerate(chunk):
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[b, : len(ids)] = 1
            response[b, start : len(ids)] = True
        device = lm.device
        yield input_ids.to(device), mask.to(device), response.to(device)


def run_until(lm, layer: int, input_ids, mask, edits: dict | None = None):
    """Forward ``lm`` up to and including decoder layer ``layer`` (``edits`` attached), then stop."""
    from shb import hooks

    hooks.run_until(lm, f"L{layer}.resid_post", input_ids=input_ids, attention_mask=mask, use_cache=False, edits=edits)


class ArtefactEdit:
    """Mixin for interventions defined by a fitted artefact and their parameters: identity is the
    kind, the parameters and the artefact's hash (the framework records the stored blob's hash in
    meta; the artefact is hashed only when it did not)."""

    kind = ""

    def __init__(self, artefact, params: dict):
        import hashlib

        self.artefact = artefact
        self.params = self._params(params)
        self._digest = artefact.meta.get("_sha256") or hashlib.sha256(artefact.to_bytes()).hexdigest()

    @staticmethod
    def _params(params: dict) -> dict:
        return dict(params)

    def identity(self) -> dict:
        return {"kind": self.kind, "params": self.params, "artefact": self._digest}
