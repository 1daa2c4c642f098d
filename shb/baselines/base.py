"""What a fitted method consumes (FitData) and produces (Artefact), and the helpers methods share.

An Artefact is stored in the ``fits`` table as safetensors bytes: the tensors, plus the kind and
the JSON meta in the safetensors header (one key, so the bytes are the same in every process). No pickle, so a database from elsewhere is safe to read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

ARTEFACT_FORMAT = "shb-artefact-1"


# For cost estimates at plan time (shb.plan, the asr and utility kinds, fits), when prompts are not
# tokenized: the tokens of a chat prompt. One value, here because this module imports nothing of shb's.
ASSUMED_PROMPT_TOKENS = 48


def answers_work(n: int, max_new_tokens: int) -> float:
    """Forward-pass equivalents of a full prompt for ``n`` greedy answers of ``max_new_tokens`` tokens (a
    cached decode step priced as a prompt-token's share of a pass, as shb.metrics.asr prices them)."""
    return n * (1 + max_new_tokens / ASSUMED_PROMPT_TOKENS)


def teacher_forced_work(n: int, max_new_tokens: int) -> float:
    """One pass over each of ``n`` prompts with its answer appended."""
    return answers_work(n, max_new_tokens)


def fit_cost(forward: float = 0.0, generate: float = 0.0) -> dict[str, float]:
    """A fit's work in forward-pass equivalents by cost class: ``forward`` (passes over given text) and
    ``generate`` (greedy answers); shb.plan prices each at its class's measured rate, as it prices units."""
    return {"forward": float(forward), "generate": float(generate)}


@dataclass
class FitData:
    harmful: list[str]                 # formatted prompts, exactly as fed to the model
    harmless: list[str]
    reference: Any = None              # shb.models.LoadedModel of the unaligned model, or None
    max_new_tokens: int = 32           # for methods that fit on the model's own responses


@dataclass
class Artefact:
    kind: str
    tensors: dict = field(default_factory=dict)   # name -> torch.Tensor
    meta: dict = field(default_factory=dict)      # JSON-able

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in self.tensors.items()}  # no shared storage
        # One metadata key: safetensors writes its metadata map in an order that varies between
        # processes, and a fit's bytes (hashed into artefact_sha256) must not.
        header = json.dumps({"format": ARTEFACT_FORMAT, "kind": self.kind, "meta": self.meta}, sort_keys=True)
        return save(tensors, metadata={"shb": header})

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Artefact":
        from safetensors.torch import load

        tensors = load(bytes(blob))
        # The header is an 8-byte little-endian length and JSON; its __metadata__ holds kind and meta.
        n = int.from_bytes(bytes(blob[:8]), "little")
        header = json.loads(bytes(blob[8:8 + n]))
        stored = json.loads((header.get("__metadata__") or {}).get("shb") or "{}")
        if stored.get("format") != ARTEFACT_FORMAT:
            raise ValueError(f"not an shb artefact (format {stored.get('format')!r}, expected {ARTEFACT_FORMAT})")
        return cls(kind=stored["kind"], tensors=dict(tensors), meta=stored.get("meta") or {})

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def encode_batch(lm, texts: list[str]):
    """Left-padded input ids and attention mask of formatted prompts (as generation tokenizes them)."""
    import torch

    from shb.models import encode_prompt

    ids = [encode_prompt(lm.tokenizer, t) for t in texts]
    width = max(len(x) for x in ids)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x)
        mask[row, width - len(x):] = 1
    return input_ids.to(lm.device), mask.to(lm.device)


def forward(lm, texts: list[str]):
    """Logits (B, T, V) of left-padded prompts; position ids follow the mask, as in generation."""
    import torch

    input_ids, mask = encode_batch(lm, texts)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
