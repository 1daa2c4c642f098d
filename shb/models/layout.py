"""Where each attention head lives inside a model, per architecture.

This is the only module in shb that knows the names of attention submodules
(q_proj, o_proj, c_attn, query_key_value, qkv_proj, dense, out_proj, ...).
Everything else (hooks, weight surgery, parameter counts) is written against
`AttentionLayout` and `ProjSlice`, so adding an architecture is one entry in
`_ARCHS` below.

Importable without torch: torch is imported inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# arch (HF `config.model_type`) -> short description, for error messages and `shb ls`.
SUPPORTED: dict[str, str] = {
    "llama": "Llama 1/2/3 and Vicuna (separate q/k/v/o projections, grouped-query attention)",
    "mistral": "Mistral (grouped-query attention, sliding window)",
    "qwen2": "Qwen2 / Qwen2.5 (biases on q, k, v; grouped-query attention)",
    "gemma": "Gemma (head_dim != hidden_size / n_heads)",
    "gemma2": "Gemma-2 (head_dim != hidden_size / n_heads, logit soft-capping, alternating sliding window)",
    "phi3": "Phi-3 (fused qkv_proj: [q | k | v])",
    "gpt2": "GPT-2 (fused c_attn, Conv1D weights stored (in, out))",
    "gpt_neox": "GPT-NeoX / Pythia (fused query_key_value, interleaved [q k v] per head)",
    "opt": "OPT (separate q/k/v/out projections with biases)",
}


class UnsupportedArchitecture(ValueError):
    """The model's architecture has no attention layout in shb."""


@dataclass(frozen=True)
class ProjSlice:
    """Where the per-head features of one projection live.

    The features of head h are
        start + h * head_stride + inner + arange(head_dim)
    along the projection's output (query/key side) or input (output side).
    This one formula covers separate projections (stride = head_dim), fused
    [q | k | v] blocks (start = offset of the block) and per-head interleaved
    [q k v] (GPT-NeoX: stride = 3 * head_dim, inner = 0 / head_dim).
    """

    module: str  # attribute path relative to the attention module, e.g. "q_proj"
    conv1d: bool  # weight stored (in, out) as in GPT-2's Conv1D, instead of nn.Linear's (out, in)
    start: int
    head_stride: int
    inner: int
    n_heads: int  # heads in this projection (n_heads for the query, n_kv_heads for the key)
    head_dim: int
    bias: bool  # whether the projection has a bias on these features

    def features(self, head: int) -> range:
        first = self.start + head * self.head_stride + self.inner
        return range(first, first + self.head_dim)

    @property
    def end(self) -> int:
        """One past the last feature of the block that `view(n_heads, head_stride)` covers."""
        return self.start + self.n_heads * self.head_stride


@dataclass(frozen=True)
class AttentionLayout:
    arch: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    layers_path: str  # path of the decoder layer list inside the *ForCausalLM model
    attn_name: str  # attribute of a decoder layer that holds its attention module
    query: ProjSlice  # query of each head, on the output of `query.module`
    key: ProjSlice  # key of each kv head, on the output of `key.module`
    output: ProjSlice  # each head's output, on the input of `output.module`
    sliding_windows: tuple  # per layer: window length, or None for full causal attention
    n_params: int | None = None  # total parameters of the model (tied weights counted once)

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def geometry(self) -> str:
        return (
            f"{self.arch}: {self.n_layers} layers x {self.n_heads} heads "
            f"({self.n_kv_heads} kv heads, head_dim {self.head_dim}, hidden {self.hidden_size})"
        )

    def layers(self, model: Any):
        """The decoder layer list of `model` (a *ForCausalLM model or its base model)."""
        parts = self.layers_path.split(".")
        # A base model (e.g. LlamaModel) lacks the first component ("model", "transformer", ...).
        for skip in range(len(parts)):
            obj = model
            try:
                for p in parts[skip:]:
                    obj = getattr(obj, p)
                return obj
            except AttributeError:
                continue
        raise AttributeError(f"cannot find the decoder layers ({self.layers_path}) in {type(model).__name__}")

    def attention(self, model: Any, layer: int):
        return getattr(self.layers(model)[layer], self.attn_name)

    def module(self, model: Any, layer: int, proj: ProjSlice):
        obj = self.attention(model, layer)
        for p in proj.module.split("."):
            obj = getattr(obj, p)
        return obj


def _config_of(model_or_config: Any):
    """(config, live model or None) from a model, a LoadedModel (has `.model`) or a config."""
    obj = model_or_config
    if not (hasattr(obj, "config") and hasattr(obj, "parameters")) and hasattr(obj, "model"):
        obj = obj.model  # shb LoadedModel
    if hasattr(obj, "config") and hasattr(obj, "parameters"):
        return obj.config, obj
    if hasattr(obj, "model_type"):
        return obj, None
    raise TypeError(f"expected a transformers model, a LoadedModel or a config, got {type(model_or_config).__name__}")


def _sliding_windows(cfg, n_layers: int) -> tuple:
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    if getattr(cfg, "use_sliding_window", None) is False:
        return (None,) * n_layers
    return (window,) * n_layers


def _separate(names, n_heads, n_kv, d, q_bias, k_bias):
    """Separate q/k/o projections as nn.Linear: head h at h * d."""
    q, k, o = names
    return (
        ProjSlice(q, False, 0, d, 0, n_heads, d, q_bias),
        ProjSlice(k, False, 0, d, 0, n_kv, d, k_bias),
        ProjSlice(o, False, 0, d, 0, n_heads, d, False),
    )


def detect(model_or_config: Any) -> AttentionLayout:
    """The attention layout of a transformers model (or LoadedModel, or config).

    Raises UnsupportedArchitecture listing the supported architectures.
    """
    cfg, model = _config_of(model_or_config)
    arch = getattr(cfg, "model_type", None)
    if arch not in SUPPORTED:
        listing = "\n".join(f"  {k}: {v}" for k, v in SUPPORTED.items())
        raise UnsupportedArchitecture(
            f"shb has no attention layout for architecture {arch!r}. Supported:\n{listing}"
        )
    n_layers = cfg.num_hidden_layers
    n_heads = cfg.num_attention_heads
    hidden = cfg.hidden_size
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d = getattr(cfg, "head_dim", None) or hidden // n_heads
    attn = "self_attn"
    if arch in ("llama", "mistral", "gemma", "gemma2"):
        bias = bool(getattr(cfg, "attention_bias", False))
        q, k, o = _separate(("q_proj", "k_proj", "o_proj"), n_heads, n_kv, d, bias, bias)
        layers_path = "model.layers"
    elif arch == "qwen2":
        # Qwen2 always has biases on q, k, v (not on o).
        q, k, o = _separate(("q_proj", "k_proj", "o_proj"), n_heads, n_kv, d, True, True)
        layers_path = "model.layers"
    elif arch == "opt":
        bias = bool(getattr(cfg, "enable_bias", True))
        q, k, o = _separate(("q_proj", "k_proj", "out_proj"), n_heads, n_kv, d, bias, bias)
        layers_path = "model.decoder.layers"
    elif arch == "phi3":
        # qkv_proj output: [q (n_heads * d) | k (n_kv * d) | v (n_kv * d)]
        q = ProjSlice("qkv_proj", False, 0, d, 0, n_heads, d, False)
        k = ProjSlice("qkv_proj", False, n_heads * d, d, 0, n_kv, d, False)
        o = ProjSlice("o_proj", False, 0, d, 0, n_heads, d, False)
        layers_path = "model.layers"
    elif arch == "gpt2":
        # c_attn output: [q (hidden) | k (hidden) | v (hidden)], Conv1D weights (in, out)
        q = ProjSlice("c_attn", True, 0, d, 0, n_heads, d, True)
        k = ProjSlice("c_attn", True, hidden, d, 0, n_heads, d, True)
        o = ProjSlice("c_proj", True, 0, d, 0, n_heads, d, False)
        layers_path, attn = "transformer.h", "attn"
    elif arch == "gpt_neox":
        # query_key_value output viewed as (n_heads, 3 * d): per head [q | k | v]
        bias = bool(getattr(cfg, "attention_bias", True))
        q = ProjSlice("query_key_value", False, 0, 3 * d, 0, n_heads, d, bias)
        k = ProjSlice("query_key_value", False, 0, 3 * d, d, n_heads, d, bias)
        o = ProjSlice("dense", False, 0, d, 0, n_heads, d, False)
        layers_path, attn = "gpt_neox.layers", "attention"
    else:  # pragma: no cover - SUPPORTED and this chain must list the same archs
        raise AssertionError(arch)
    n_params = count_parameters(model) if model is not None else count_parameters_from_config(cfg)
    return AttentionLayout(
        arch=arch,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=d,
        hidden_size=hidden,
        layers_path=layers_path,
        attn_name=attn,
        query=q,
        key=k,
        output=o,
        sliding_windows=_sliding_windows(cfg, n_layers),
        n_params=n_params,
    )


def count_parameters(model: Any) -> int:
    """Parameters of a live model; `parameters()` yields tied weights once."""
    return sum(p.numel() for p in model.parameters())


def count_parameters_from_config(cfg: Any) -> int:
    """Parameters of the model a config describes, without allocating its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return count_parameters(model)
