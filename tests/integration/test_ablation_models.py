"""Tiny random-initialised models of every supported architecture, and layout checks on them.

The builders here are shared by the other test_ablation_*.py files and test_surgery.py
(imported relatively when tests/integration is a package, else from this directory on sys.path).
"""

from __future__ import annotations

import functools

import pytest
import torch

from shb.models import layout as L

ARCHS = ["llama", "mistral", "qwen2", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox", "opt"]
VOCAB = 61
# transformers has no sdpa path for Gemma-2 (logit soft-capping): tiny_model(.., "sdpa") gives eager there
NO_SDPA = {"gemma2"}
WINDOW = 3  # sliding window of mistral / gemma2 tiny models: shorter than the test prompts


def tiny_config(arch: str, attn: str = "eager"):
    import transformers as T

    common = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    rope = {"num_key_value_heads": 2, "intermediate_size": 48, "max_position_embeddings": 64}
    if arch == "llama":
        # attention_bias=True so that the query bias is exercised on a GQA model too
        cfg = T.LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, attention_bias=True, **rope)
    elif arch == "mistral":
        cfg = T.MistralConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, sliding_window=WINDOW, **rope)
    elif arch == "qwen2":
        cfg = T.Qwen2Config(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, **rope)
    elif arch == "gemma":
        # head_dim 16 != hidden 32 / 4 heads
        cfg = T.GemmaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, head_dim=16, **rope)
    elif arch == "gemma2":
        cfg = T.Gemma2Config(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=2, head_dim=16, sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"], attn_logit_softcapping=5.0,
            final_logit_softcapping=10.0, query_pre_attn_scalar=16, **rope,
        )
    elif arch == "phi3":
        cfg = T.Phi3Config(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, **rope)
    elif arch == "gpt2":
        cfg = T.GPT2Config(n_embd=32, n_head=4, n_layer=2, n_positions=64)
    elif arch == "gpt_neox":
        cfg = T.GPTNeoXConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48,
            max_position_embeddings=64, rotary_pct=0.5,
        )
    elif arch == "opt":
        cfg = T.OPTConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=2, ffn_dim=48,
            max_position_embeddings=64, word_embed_proj_dim=32,
        )
    else:
        raise KeyError(arch)
    for k, v in common.items():
        setattr(cfg, k, v)
    cfg._attn_implementation = attn
    return cfg


@functools.cache
def _state(arch: str):
    """Random weights for `arch`, with non-zero biases and a spread that makes attention non-uniform."""
    import transformers as T

    torch.manual_seed(1234)
    model = T.AutoModelForCausalLM.from_config(tiny_config(arch))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.25)
    return {k: v.clone() for k, v in model.state_dict().items()}


@functools.cache
def _template(arch: str, attn: str):
    import transformers as T

    model = T.AutoModelForCausalLM.from_config(tiny_config(arch, attn))
    model.load_state_dict(_state(arch))
    return model.eval()


def tiny_model(arch: str, attn: str = "eager"):
    """A fresh fp32 tiny model (2 layers, 4 heads, 2 kv heads where the arch has GQA) in eval mode.

    A deep copy of a cached template (building from a config is the slow part), so tests may edit it.
    """
    import copy

    if arch in NO_SDPA:
        attn = "eager"
    return copy.deepcopy(_template(arch, attn))


def prompts(n: int = 3, lengths=(7, 4, 6), seed: int = 0):
    """n random token sequences of the given lengths (ids >= 3: no pad/bos/eos)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (lengths[i % len(lengths)],), generator=g) for i in range(n)]


def left_pad(seqs):
    """(input_ids, attention_mask, position_ids), each (B, T), left-padded with id 0."""
    t = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = s
        mask[i, t - len(s):] = 1
    # absolute-position models (GPT-2, OPT) need positions that start at the first real token
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def forward(model, ids, mask=None, pos=None, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)


# ---------------------------------------------------------------- layout checks


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_slices_match_module_shapes(arch):
    model = tiny_model(arch)
    lay = L.detect(model)
    cfg = model.config
    assert lay.arch == arch
    assert (lay.n_layers, lay.n_heads) == (2, 4)
    assert lay.n_kv_heads == (getattr(cfg, "num_key_value_heads", None) or 4)
    assert lay.n_params == sum(p.numel() for p in model.parameters())
    for layer in range(lay.n_layers):
        for proj in (lay.query, lay.key):
            mod = lay.module(model, layer, proj)
            out_features = mod.weight.shape[1] if proj.conv1d else mod.weight.shape[0]
            feats = [f for h in range(proj.n_heads) for f in proj.features(h)]
            assert max(feats) < out_features and len(set(feats)) == len(feats)
            assert (getattr(mod, "bias", None) is not None) == proj.bias
        o = lay.module(model, layer, lay.output)
        in_features = o.weight.shape[0] if lay.output.conv1d else o.weight.shape[1]
        assert in_features == lay.n_heads * lay.head_dim


def test_query_and_key_slices_do_not_overlap_on_fused_projections():
    for arch in ("phi3", "gpt2", "gpt_neox"):
        lay = L.detect(tiny_config(arch))
        q = {f for h in range(lay.n_heads) for f in lay.query.features(h)}
        k = {f for h in range(lay.n_kv_heads) for f in lay.key.features(h)}
        assert not q & k, arch


def test_detect_accepts_config_and_loaded_model_wrapper():
    model = tiny_model("llama")

    class Loaded:  # stands in for shb's LoadedModel
        pass

    lm = Loaded()
    lm.model = model
    assert L.detect(lm).n_params == L.detect(model).n_params == L.detect(model.config).n_params


def test_every_supported_architecture_has_a_tiny_model():
    # the families added by issue 13 have theirs in test_archs.py
    from tests.integration.test_archs import FAMILIES

    assert set(ARCHS) | set(FAMILIES) == set(L.SUPPORTED)


def test_unsupported_architecture_names_the_obstacle():
    import transformers as T

    with pytest.raises(L.UnsupportedArchitecture, match="decoder layers"):
        L.detect(T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=32))


def test_sliding_windows_per_layer():
    assert L.detect(tiny_config("gemma2")).sliding_windows == (WINDOW, None)
    assert L.detect(tiny_config("mistral")).sliding_windows == (WINDOW, WINDOW)
    assert L.detect(tiny_config("llama")).sliding_windows == (None, None)
