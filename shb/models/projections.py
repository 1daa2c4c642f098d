"""Where a head's features sit on a projection (``ProjSlice``), the names of query/key norms, and the
error for attention shb cannot ablate exactly: the pieces shb.models.layout and
shb.models.layout_norms share. Importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

QUERY_NORMS = ("q_norm", "query_norm", "q_layernorm")
KEY_NORMS = ("k_norm", "key_norm", "k_layernorm")
SHARED_NORMS = ("qk_norm",)


class UnsupportedArchitecture(ValueError):
    """The model's attention cannot be ablated exactly by shb (the message names the obstacle)."""


@dataclass(frozen=True)
class ProjSlice:
    """Where the per-head features of one tensor live, on the output (query/key) or input (output side)
    of the module `module` (a path relative to the attention module).

    axis None: a (B, T, F) tensor; head h holds features start + h * head_stride + inner + arange(head_dim).
    This covers separate projections (stride = head_dim), fused [q | k | v] blocks (start = offset of
    the block), per-head interleaved [q k v] (GPT-NeoX: stride = 3 * head_dim) and a norm over the whole
    projection (OLMo-2). axis 1 or 2: a 4-D tensor (B, H, T, D) or (B, T, H, D) with the heads on `axis`.
    `call`: which call of `module` in one attention forward carries this tensor (a norm shared by
    query and key is called twice: 0 query, 1 key).
    """

    module: str
    conv1d: bool  # weight stored (in, out) as in GPT-2's Conv1D, instead of nn.Linear's (out, in)
    start: int
    head_stride: int
    inner: int
    n_heads: int  # heads in this tensor (n_heads for the query, n_kv_heads for the key)
    head_dim: int
    bias: bool  # whether the module has a bias on these features
    axis: int | None = None
    call: int = 0

    def features(self, head: int) -> range:
        first = self.start + head * self.head_stride + self.inner
        return range(first, first + self.head_dim)

    @property
    def end(self) -> int:
        """One past the last feature of the block that `view(n_heads, head_stride)` covers."""
        return self.start + self.n_heads * self.head_stride


def text_config(cfg: Any):
    """The text part of a (possibly multimodal) config."""
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg
