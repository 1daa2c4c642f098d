"""Where each attention head lives inside a model, found from the loaded modules.

shb does not keep a table of architectures. `detect` reads the geometry from the config
(heads, kv heads, head_dim, layer types, windows) and from the modules themselves:

* the decoder layer list (the ModuleList with one entry per hidden layer);
* in each layer, the softmax-attention module (a child with query/key/output projections:
  separate `q_proj`/`k_proj`, fused `qkv_proj` [q | k | v], GPT-2's Conv1D `c_attn`, or
  GPT-NeoX's per-head interleaved `query_key_value`). Layers without one (linear attention,
  state-space or convolution mixers of hybrid models) have no heads: heads are named by their
  index among the attention layers (`attention_layers` maps it back to the decoder layer);
* query/key normalisation (`q_norm`/`k_norm`, or one `qk_norm` shared by both): the edit of the
  query must sit *after* it, because the norm undoes a scaling of the projection's output
  (per-head RMSNorm, Qwen3/Gemma-3) or spreads it over all heads (OLMo-2/3 normalise the whole
  projection). Where the norm's output holds the heads, and on which axis, is measured with one
  short probe forward pass of the live model (`probe=True`), not assumed;
* learned attention sinks (a `sinks` parameter of one logit per head, GPT-OSS).

Anything else on an attention module (an unknown parameter or a child with weights) raises
UnsupportedArchitecture naming it: shb cannot promise an exact ablation there.

Importable without torch: torch is imported inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shb.models.layout_norms import attention_norms, norm_layouts, norm_sites
from shb.models.projections import ProjSlice, UnsupportedArchitecture, text_config

# Families whose layouts tests check against an independent reference (HF `model_type` -> notes).
# Detection does not read this table; `shb run`'s preflight refuses a model type missing from it
# (unless the model brings its own code), and `shb ls` prints it.
SUPPORTED: dict[str, str] = {
    "llama": "Llama 1/2/3 and Vicuna (separate q/k/v/o projections, grouped-query attention)",
    "mistral": "Mistral (grouped-query attention, sliding window)",
    "qwen2": "Qwen2 / Qwen2.5 (biases on q, k, v; grouped-query attention)",
    "gemma": "Gemma (head_dim != hidden_size / n_heads)",
    "gemma2": "Gemma-2 (logit soft-capping, alternating sliding window)",
    "phi3": "Phi-3 (fused qkv_proj: [q | k | v])",
    "gpt2": "GPT-2 (fused c_attn, Conv1D weights stored (in, out))",
    "gpt_neox": "GPT-NeoX / Pythia (fused query_key_value, interleaved [q k v] per head)",
    "opt": "OPT (separate q/k/v/out projections with biases)",
    "qwen3": "Qwen3 (per-head q_norm/k_norm: hooked after the norm)",
    "qwen3_moe": "Qwen3-MoE (per-head q_norm/k_norm, mixture-of-experts MLP)",
    "gemma3_text": "Gemma-3 text (per-head q_norm/k_norm, sliding/global layers, soft-capping)",
    "olmo2": "OLMo-2 (q_norm over the whole projection, across heads: hooked after the norm)",
    "olmo3": "OLMo-3 (q_norm across heads, sliding/global layers)",
    "smollm3": "SmolLM3 (NoPE layers, grouped-query attention)",
    "mixtral": "Mixtral (mixture-of-experts MLP, grouped-query attention)",
    "gpt_oss": "GPT-OSS (learned attention sinks, sliding/global layers, attention biases)",
    "cohere": "Cohere Command-R (parallel block; with use_qk_norm a LayerNorm per head, weights (heads, head_dim))",
    "cohere2": "Cohere2 / Command R7B (rotary only on sliding layers)",
    "glm4": "GLM-4 (partial rotary, extra post-norms)",
    "granite": "Granite (attention multiplier instead of 1/sqrt(head_dim))",
    "llama4_text": "Llama-4 text (one qk_norm shared by query and key, chunked attention, NoPE layers)",
    "qwen3_next": "Qwen3-Next hybrid (gated-delta linear layers skipped; gated query [q | gate] per head)",
    "jamba": "Jamba hybrid (Mamba layers skipped, mixture-of-experts MLP)",
    "lfm2": "LFM2 hybrid (short-convolution layers skipped; per-head q/k layernorm, out_proj)",
}

OUTPUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj")
MLP_NAMES = ("mlp", "feed_forward")
# Attribute names of the final norm on the base models (Llama, Mistral, Qwen2, Gemma, Phi-3: ``norm``; GPT-2:
# ``ln_f``; GPT-NeoX, OPT's decoder: ``final_layer_norm``; Jamba, LFM2 and others: the rest).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_norm", "final_layernorm", "norm_f", "embedding_norm")
PROJECT_OUT_NAMES = ("project_out",)  # OPT with word_embed_proj_dim != hidden_size
HARMLESS_CHILDREN = ("rotary_emb", "rotary", "attn_dropout", "resid_dropout", "dropout")


@dataclass(frozen=True)
class AttentionLayout:
    arch: str
    n_layers: int  # softmax-attention layers (heads are named by this index)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    layers_path: str  # path of the decoder layer list inside the *ForCausalLM model
    attn_name: str  # attribute of a decoder layer that holds its attention module
    query: ProjSlice  # the query of each head as it enters the scores (projection output, or after its norm)
    key: ProjSlice  # the key of each kv head as it enters the scores
    output: ProjSlice  # each head's output, on the input of the output projection
    sliding_windows: tuple  # per attention layer: window length, or None
    n_params: int | None = None  # total parameters of the model (tied weights counted once)
    query_proj: ProjSlice | None = None  # the query on the projection's output (bakes); None: unknown
    key_proj: ProjSlice | None = None
    qk_norm: str = "none"  # "none", "per_head" (RMS over head_dim) or "across_heads" (over the projection)
    sinks: bool = False  # learned per-head sink logits in the softmax (GPT-OSS)
    attention_layers: tuple = ()  # decoder-layer index of each attention layer
    n_decoder_layers: int = 0
    chunk_sizes: tuple = ()  # per attention layer: chunk length of chunked attention (Llama-4), or None
    probed: bool = False  # tensor axes at the norms measured on the live model
    features: tuple = field(default_factory=tuple)  # notable features, for messages and docs
    norm_free_layers: tuple = ()  # attention layers without the q/k norm of the others (edited at the projection)
    norm_weight: str = "none"  # the q/k norm's weight: "per_head" (entries per head and feature), "shared", "none"
    norm_bias: bool = False  # the q/k norm has a bias (LayerNorm)
    padding_sensitive: str | None = None  # why left padding changes this model's outputs (None: it does not)
    value: ProjSlice | None = None  # each kv head's value on the value projection's output; None: not located

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def hybrid(self) -> bool:
        return self.n_decoder_layers != self.n_layers

    def geometry(self) -> str:
        extra = f", {self.n_decoder_layers} decoder layers" if self.hybrid else ""
        return (
            f"{self.arch}: {self.n_layers} layers x {self.n_heads} heads "
            f"({self.n_kv_heads} kv heads, head_dim {self.head_dim}, hidden {self.hidden_size}{extra})"
        )

    def site(self, which: str, layer: int) -> ProjSlice:
        """Where `which` ("q", "k" or "output") of attention layer `layer` is edited by the hooks."""
        if which == "output":
            return self.output
        if layer in self.norm_free_layers:
            return self.query_proj if which == "q" else self.key_proj
        return self.query if which == "q" else self.key

    def decoder_layer(self, layer: int) -> int:
        """Decoder-layer index of attention layer `layer`."""
        return self.attention_layers[layer] if self.attention_layers else layer

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
        return getattr(self.layers(model)[self.decoder_layer(layer)], self.attn_name)

    def module(self, model: Any, layer: int, proj: ProjSlice):
        obj = self.attention(model, layer)
        for p in proj.module.split("."):
            obj = getattr(obj, p)
        return obj

    def mlp(self, model: Any, decoder_layer: int):
        """(writers, reader) of decoder layer ``decoder_layer``'s MLP: the linear maps (nn.Linear or GPT-2's
        Conv1D) that produce its intermediate activation, and the one that reads it (Llama's down_proj,
        GPT-2's mlp.c_proj). Raises UnsupportedArchitecture where there is no such MLP (a mixture of
        experts, no ``mlp``/``feed_forward`` submodule)."""
        block = self.layers(model)[decoder_layer]
        mlp = next((m for m in (getattr(block, n, None) for n in MLP_NAMES) if m is not None), None)
        linears = [m for _, m in mlp.named_modules() if _is_linear(m)] if mlp is not None else []
        dims = [_linear_dims(m) for m in linears]
        if not linears or dims[-1][1] != self.hidden_size:
            raise UnsupportedArchitecture(
                f"decoder layer {decoder_layer} ({type(block).__name__}): no MLP whose last linear map writes the "
                f"hidden size (looked for {' / '.join(MLP_NAMES)}; a mixture of experts has no single one)")
        d_ff = dims[-1][0]
        return [m for m, (_, out, _) in zip(linears[:-1], dims[:-1]) if out == d_ff], linears[-1]


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


def _find_layers(model, n_layers: int) -> str:
    """Path of the ModuleList holding one module per decoder layer."""
    import torch

    found = [name for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.ModuleList) and len(mod) == n_layers and name.rsplit(".", 1)[-1] in ("layers", "h")]
    if not found:
        raise UnsupportedArchitecture(f"{type(model).__name__}: no list of {n_layers} decoder layers "
                                      "(a ModuleList named 'layers' or 'h') found")
    return min(found, key=len)


def _is_linear(module) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def final_chain(model) -> list[tuple[Any, str]]:
    """(parent, attribute name) of the final norm and output projection (OPT's project_out) that sit between
    the last decoder layer and the LM head, in call order. Raises UnsupportedArchitecture without a final norm."""
    import torch

    base = getattr(model, "base_model", None)
    inner = getattr(model, "model", None)  # Llama-4's base_model_prefix names no attribute of the causal LM
    containers = [c for c in (base, getattr(base, "decoder", None), inner, getattr(inner, "decoder", None))
                  if isinstance(c, torch.nn.Module) and c is not model]
    slots, norm_seen = [], False
    for names in (FINAL_NORM_NAMES, PROJECT_OUT_NAMES):
        for container in containers:
            # hasattr, not _modules: a module set to None (OPT-350m's final_layer_norm) is a plain attribute
            found = [n for n in names if hasattr(container, n)]
            if not found:
                continue
            norm_seen = norm_seen or names is FINAL_NORM_NAMES
            if isinstance(getattr(container, found[0]), torch.nn.Module):
                slots.append((container, found[0]))
            break
    if not norm_seen:
        raise UnsupportedArchitecture(f"no final norm found on {type(model).__name__} (looked for "
                                      f"{', '.join(FINAL_NORM_NAMES)})")
    return slots


def _linear_dims(mod) -> tuple[int, int, bool] | None:
    """(in, out, conv1d) of an nn.Linear-like or GPT-2 Conv1D module, else None."""
    w = getattr(mod, "weight", None)
    if w is None or w.dim() != 2:
        return None
    if type(mod).__name__ == "Conv1D":
        return w.shape[0], w.shape[1], True
    return w.shape[1], w.shape[0], False


def _has_bias(mod) -> bool:
    return getattr(mod, "bias", None) is not None


def _attention_child(layer):
    """(attribute name, module) of the softmax-attention module of a decoder layer, or None."""
    for name, child in layer.named_children():
        if any(hasattr(child, p) for p in ("q_proj", "qkv_proj", "c_attn", "query_key_value")) and any(
                hasattr(child, o) for o in OUTPUT_NAMES):
            return name, child
    return None


def _projections(attn, n_heads, n_kv, d, hidden, where):
    """(query, key, value or None, output) ProjSlices on the projections of one attention module."""
    o_name = next(o for o in OUTPUT_NAMES if hasattr(attn, o))
    o_dims = _linear_dims(getattr(attn, o_name))
    if o_dims is None or o_dims[0] != n_heads * d:
        raise UnsupportedArchitecture(f"{where}.{o_name}: expected an output projection reading "
                                      f"{n_heads} heads x {d} = {n_heads * d} features, got {o_dims}")
    output = ProjSlice(o_name, o_dims[2], 0, d, 0, n_heads, d, False)
    if hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
        qd, kd = _linear_dims(attn.q_proj), _linear_dims(attn.k_proj)
        if qd is None or kd is None or kd[1] != n_kv * d:
            raise UnsupportedArchitecture(f"{where}.k_proj: expected {n_kv} kv heads x {d} output features")
        if qd[1] == n_heads * d:
            q = ProjSlice("q_proj", qd[2], 0, d, 0, n_heads, d, _has_bias(attn.q_proj))
        elif qd[1] == 2 * n_heads * d:
            # Gated query (Qwen3-Next): per head [query | gate]; the probe confirms where the query is.
            q = ProjSlice("q_proj", qd[2], 0, 2 * d, 0, n_heads, d, _has_bias(attn.q_proj))
        else:
            raise UnsupportedArchitecture(f"{where}.q_proj: {qd[1]} output features, expected "
                                          f"{n_heads} heads x {d} (or twice that for a gated query)")
        k = ProjSlice("k_proj", kd[2], 0, d, 0, n_kv, d, _has_bias(attn.k_proj))
        vd = _linear_dims(getattr(attn, "v_proj", None))
        v = ProjSlice("v_proj", vd[2], 0, d, 0, n_kv, d, _has_bias(attn.v_proj)) if vd and vd[1] == n_kv * d else None
        return q, k, v, output, ("q_proj", "k_proj", "v_proj", o_name)
    name = next((n for n in ("qkv_proj", "c_attn", "query_key_value") if hasattr(attn, n)), None)
    if name is None:
        children = ", ".join(n for n, _ in attn.named_children())
        raise UnsupportedArchitecture(f"{where} ({type(attn).__name__}): no query/key projections shb knows "
                                      f"(separate q_proj/k_proj, or fused qkv_proj/c_attn/query_key_value); "
                                      f"it has: {children}")
    dims = _linear_dims(getattr(attn, name))
    if dims is None or dims[1] != (n_heads + 2 * n_kv) * d:
        raise UnsupportedArchitecture(f"{where}.{name}: expected a fused projection of "
                                      f"({n_heads} + 2 x {n_kv}) x {d} output features, got {dims}")
    bias = _has_bias(getattr(attn, name))
    if name == "query_key_value":
        if n_kv != n_heads:
            raise UnsupportedArchitecture(f"{where}.query_key_value with grouped kv heads: the interleaving "
                                          "of a fused grouped projection is not known to shb")
        # GPT-NeoX: the output viewed as (n_heads, 3 * d) holds per head [q | k | v]
        q = ProjSlice(name, dims[2], 0, 3 * d, 0, n_heads, d, bias)
        k = ProjSlice(name, dims[2], 0, 3 * d, d, n_heads, d, bias)
        v = ProjSlice(name, dims[2], 0, 3 * d, 2 * d, n_heads, d, bias)
    else:
        # [q (n_heads * d) | k (n_kv * d) | v (n_kv * d)]
        q = ProjSlice(name, dims[2], 0, d, 0, n_heads, d, bias)
        k = ProjSlice(name, dims[2], n_heads * d, d, 0, n_kv, d, bias)
        v = ProjSlice(name, dims[2], (n_heads + n_kv) * d, d, 0, n_kv, d, bias)
    return q, k, v, output, (name, o_name)


def _check_no_unknown_parts(attn, known: set, where: str) -> bool:
    """Refuse parameters or weighted children that shb does not understand. Returns: has sinks."""
    sinks = False
    for pname, p in attn.named_parameters(recurse=False):
        if pname == "sinks":
            sinks = True
            continue
        raise UnsupportedArchitecture(f"{where}.{pname}: a parameter of the attention module that shb does not "
                                      f"know ({tuple(p.shape)}); its effect on an ablated head is undefined")
    for cname, child in attn.named_children():
        if cname in known or cname in HARMLESS_CHILDREN:
            continue
        if any(True for _ in child.parameters()):
            raise UnsupportedArchitecture(f"{where}.{cname} ({type(child).__name__}): a weighted submodule of the "
                                          "attention that shb does not know; it may mix heads or rescale the query")
    return sinks


def _windows(cfg, attn, decoder_index: int):
    """(sliding window or None, chunk size or None) of one attention layer."""
    layer_types = getattr(cfg, "layer_types", None)
    kind = layer_types[decoder_index] if layer_types is not None else None
    if kind == "chunked_attention":
        return None, getattr(cfg, "attention_chunk_size", None)
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", None) is False:
        return None, None
    if layer_types is not None:
        return (window if kind == "sliding_attention" else None), None
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window, None
    return window, None


SOFTMAX_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention", None}


def detect(model_or_config: Any, probe: bool = True) -> AttentionLayout:
    """The attention layout of a transformers model (or LoadedModel, or config).

    A config is instantiated on the meta device (no weights) to read its modules. A live model is
    also probed (one forward pass of a few tokens) where a query/key norm sits between the
    projection and the scores, to measure which axis of the norm's output holds the heads.
    Raises UnsupportedArchitecture naming the module or feature shb cannot ablate exactly.
    """
    cfg, model = _config_of(model_or_config)
    if model is None:
        model = _meta_model(cfg)
        live = False
    else:
        live = next(model.parameters()).device.type != "meta"
    tcfg = text_config(cfg)
    arch = getattr(tcfg, "model_type", None) or getattr(cfg, "model_type", None)
    n_dec = tcfg.num_hidden_layers
    n_heads = tcfg.num_attention_heads
    hidden = tcfg.hidden_size
    n_kv = getattr(tcfg, "num_key_value_heads", None) or n_heads
    d = getattr(tcfg, "head_dim", None) or hidden // n_heads
    layers_path = _find_layers(model, n_dec)
    layers = model.get_submodule(layers_path)
    layer_types = getattr(tcfg, "layer_types", None)
    att_layers, attn_name, shapes = [], None, None
    windows, chunks, sinks_any = [], [], set()
    q = k = o = v = None
    norm_free = []
    for i, layer in enumerate(layers):
        found = _attention_child(layer)
        where = f"{layers_path}.{i}"
        if found is None:
            continue
        name, attn = found
        where = f"{where}.{name}"
        if layer_types is not None and layer_types[i] not in SOFTMAX_LAYER_TYPES:
            raise UnsupportedArchitecture(f"{where}: layer type {layer_types[i]!r} is not softmax attention, "
                                          "but the layer has query/key projections; shb cannot tell what they do")
        if attn_name not in (None, name):
            raise UnsupportedArchitecture(f"{where}: attention modules under different names ({attn_name}, {name})")
        attn_name = name
        lq, lk, lv, lo, proj_names = _projections(attn, n_heads, n_kv, d, hidden, where)
        lqn, lkn, _ = attention_norms(attn)
        if shapes is None:
            q, k, v, o = shapes = lq, lk, lv, lo
        elif (lq, lk, lv, lo) != shapes:
            raise UnsupportedArchitecture(f"{where}: attention projections differ from those of earlier layers")
        if lqn is None:
            # A norm-free layer among normed ones (Llama-4's NoPE layers have no qk_norm): edit the projection.
            norm_free.append(len(att_layers))
        known = set(proj_names) | {n for n in (lqn, lkn) if n}
        if _check_no_unknown_parts(attn, known, where):
            sinks_any.add(i)
        w, c = _windows(tcfg, attn, i)
        windows.append(w)
        chunks.append(c)
        att_layers.append(i)
    if not att_layers:
        raise UnsupportedArchitecture(f"{type(model).__name__} ({arch}): no decoder layer has a softmax-attention "
                                      "module with query/key/output projections; there are no heads to ablate")
    if sinks_any and len(sinks_any) != len(att_layers):
        raise UnsupportedArchitecture(f"{arch}: attention sinks on some attention layers only")
    layouts = norm_layouts(model, layers, attn_name, att_layers, n_heads, n_kv, d, live and probe)
    qk_norm, query, key, query_proj, key_proj = norm_sites(layouts, q, k, n_heads, n_kv, d)
    norm_weight, norm_bias = "none", False
    if qk_norm != "none":
        normed = next(i for i in att_layers if attention_norms(getattr(layers[i], attn_name))[0] is not None)
        qnorm = getattr(getattr(layers[normed], attn_name), layouts["q"].module)
        w, b = getattr(qnorm, "weight", None), getattr(qnorm, "bias", None)
        norm_bias = b is not None
        if w is not None:
            norm_weight = "per_head" if w.numel() == n_heads * d else "shared"
    n_params = count_parameters(model)
    features = []
    if n_kv != n_heads:
        features.append("grouped-query" if n_kv > 1 else "multi-query")
    if qk_norm != "none":
        features.append(f"q/k norm {qk_norm.replace('_', ' ')}")
    if sinks_any:
        features.append("attention sinks")
    if any(w for w in windows):
        features.append("sliding window")
    if any(c for c in chunks):
        features.append("chunked attention")
    if len(att_layers) != n_dec:
        features.append(f"hybrid: {n_dec - len(att_layers)} of {n_dec} layers without softmax attention")
    padding = []
    if getattr(tcfg, "attn_temperature_tuning", False) and norm_free:
        # Llama-4's NoPE layers scale the query by log(floor(position / floor_scale)) with positions
        # counted from the first (padded) token, not from position_ids (measured: left padding moves logits).
        padding.append("attention temperature tuning scales queries by their padded position")
    return AttentionLayout(
        padding_sensitive="; ".join(padding) or None,
        arch=arch, n_layers=len(att_layers), n_heads=n_heads, n_kv_heads=n_kv, head_dim=d, hidden_size=hidden,
        layers_path=layers_path, attn_name=attn_name, query=query, key=key, output=o,
        sliding_windows=tuple(windows), n_params=n_params, query_proj=query_proj, key_proj=key_proj,
        qk_norm=qk_norm, sinks=bool(sinks_any), attention_layers=tuple(att_layers), n_decoder_layers=n_dec,
        chunk_sizes=tuple(chunks), probed=live and probe, features=tuple(features),
        norm_free_layers=tuple(norm_free) if qk_norm != "none" else (),
        norm_weight=norm_weight, norm_bias=norm_bias, value=v,
    )


def _meta_model(cfg):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def count_parameters(model: Any) -> int:
    """Parameters of a live model; `parameters()` yields tied weights once."""
    return sum(p.numel() for p in model.parameters())
