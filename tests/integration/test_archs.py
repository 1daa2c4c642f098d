"""Issue 13: head ablation on the families researchers use in 2026, each against a reference written
from the attention formula.

Every family is a tiny random model built from its config (2 layers, hidden 32, vocab 128, biases,
norm weights and sinks randomised, weights large enough that attention is sharp). The reference
never goes through shb: a custom attention function (registered with transformers'
AttentionInterface) receives the module's own query/key/value as they enter the scores and
computes softmax(q k^T * scaling + mask [, sink]) v by hand, with the ablation applied to q there;
output-side kinds edit the output projection's input with a hook written here.
"""

from __future__ import annotations

import copy
import functools
import math
from types import SimpleNamespace

import pytest
import torch

from shb import ablation as A
from shb.models import layout as L
from tests.conftest import make_tokenizer

VOCAB = 128
WINDOW = 3  # sliding window / chunk: shorter than the prompts
TOL = {"rtol": 0, "atol": 2e-5}


def _config(family: str):
    import transformers as T

    base = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 48, "max_position_embeddings": 64,
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    moe = {"num_experts_per_tok": 2}
    if family == "qwen3":
        return T.Qwen3Config(**base, head_dim=16, attention_bias=True, use_sliding_window=True,
                             sliding_window=WINDOW, max_window_layers=1)
    if family == "qwen3_moe":
        return T.Qwen3MoeConfig(**base, head_dim=16, num_experts=4, moe_intermediate_size=16, **moe)
    if family == "gemma3_text":
        return T.Gemma3TextConfig(**base, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16,
                                  layer_types=["sliding_attention", "full_attention"], attention_bias=True)
    if family == "olmo2":
        return T.Olmo2Config(**base, attention_bias=True)
    if family == "olmo3":
        return T.Olmo3Config(**base, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"])
    if family == "smollm3":
        return T.SmolLM3Config(**base, no_rope_layers=[1, 0], attention_bias=True)
    if family == "mixtral":
        return T.MixtralConfig(**base, num_local_experts=4, sliding_window=WINDOW, **moe)
    if family == "gpt_oss":
        return T.GptOssConfig(**base, head_dim=16, num_local_experts=4, sliding_window=WINDOW, attention_bias=True,
                              layer_types=["sliding_attention", "full_attention"], **moe)
    if family == "cohere2":
        return T.Cohere2Config(**base, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"])
    if family == "cohere":
        # Command-R with use_qk_norm: a LayerNorm per head with weights (heads, head_dim)
        return T.CohereConfig(**base, use_qk_norm=True, logit_scale=0.5)
    if family == "glm4":
        return T.Glm4Config(**base, attention_bias=True, partial_rotary_factor=0.5)
    if family == "granite":
        return T.GraniteConfig(**base, attention_multiplier=0.3, attention_bias=True)
    if family == "llama4_text":
        # layer 0: rotary, shared qk_norm, chunked attention; layer 1: NoPE, no norm, temperature tuning
        return T.Llama4TextConfig(**base, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
                                  intermediate_size_mlp=48, no_rope_layers=[1, 0], attention_chunk_size=WINDOW,
                                  floor_scale=2, use_qk_norm=True)
    if family == "qwen3_next":
        # hybrid: layer 0 gated-delta linear attention, layer 1 softmax attention with a gated query
        return T.Qwen3NextConfig(**base, head_dim=16, layer_types=["linear_attention", "full_attention"],
                                 linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                                 linear_num_value_heads=4, num_experts=4, moe_intermediate_size=16,
                                 shared_expert_intermediate_size=16, **moe)
    if family == "jamba":
        # hybrid: layer 0 Mamba, layer 1 attention (with a mixture-of-experts MLP)
        return T.JambaConfig(**base, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                             expert_layer_offset=1, num_experts=2, mamba_d_state=4, mamba_dt_rank=4, mamba_expand=2)
    if family == "lfm2":
        # hybrid: layer 0 short convolution, layer 1 attention with per-head q/k layernorms
        return T.Lfm2Config(**{k: v for k, v in base.items() if k != "intermediate_size"}, intermediate_size=48,
                            layer_types=["conv", "full_attention"])
    raise KeyError(family)


FAMILIES = ["qwen3", "qwen3_moe", "gemma3_text", "olmo2", "olmo3", "smollm3", "mixtral", "gpt_oss", "cohere",
            "cohere2", "glm4", "granite", "llama4_text", "qwen3_next", "jamba", "lfm2"]
HYBRID = {"qwen3_next": 1, "jamba": 1, "lfm2": 1}  # decoder layer of the single attention layer
NO_SDPA = {"gpt_oss"}  # transformers has no sdpa path for learned sinks: tiny(.., "sdpa") gives eager there
# per-head q/k norm with one weight shared by all heads: only epsilon = 0 bakes into weights
PER_HEAD_NORM = {"qwen3", "qwen3_moe", "gemma3_text", "llama4_text", "qwen3_next", "lfm2"}


@functools.cache
def _state(family: str):
    import transformers as T

    torch.manual_seed(7)
    cfg = _config(family)
    cfg._attn_implementation = "eager"
    model = T.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif name.endswith("sinks"):
                p.normal_(0.0, 1.0)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.25)
            else:  # norm weights (around 1 + their init, so RMSNorm and Gemma's 1 + w both end near 2)
                p.add_(torch.empty_like(p).normal_(1.0, 0.3))
    return {k: v.clone() for k, v in model.state_dict().items()}


@functools.cache
def _template(family: str, attn: str):
    import transformers as T

    cfg = _config(family)
    cfg._attn_implementation = attn
    model = T.AutoModelForCausalLM.from_config(cfg)
    model.load_state_dict(_state(family))
    return model.eval()


def tiny(family: str, attn: str = "eager"):
    if family in NO_SDPA:
        attn = "eager"
    return copy.deepcopy(_template(family, attn))


def _batch(lengths=(7, 4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, VOCAB, (n,), generator=g) for n in lengths]
    t = max(lengths)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = s
        mask[i, t - len(s):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _logits(model, ids, mask, pos, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kw)


def _attention_layers(cfg):
    """Decoder layers with softmax attention, from the config (independent of shb's detection)."""
    if cfg.model_type == "jamba":
        return [i for i in range(cfg.num_hidden_layers) if i % cfg.attn_layer_period == cfg.attn_layer_offset]
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    return [i for i, t in enumerate(types) if t not in ("linear_attention", "conv")]


def _heads(family):
    """Head set used by the tests: two heads of different layers (one layer for the hybrid)."""
    return [(0, 1), (0, 2)] if family in HYBRID else [(0, 1), (1, 3)]


# -- the reference -------------------------------------------------------------------------------------

_REF: dict = {}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                         s_aux=None, **_):
    """softmax(q k^T * scaling [soft-capped] + mask [, sink]) v, by hand; q edited per _REF first.

    query (B, H, T, D), key/value (B, Hkv, S, D) exactly as the module hands them to attention.
    """
    heads = _REF.get("heads", {}).get(module.layer_idx, [])
    q = query.clone()
    key = key.clone()
    for h in heads:
        if _REF["kind"] == "undifferentiated" and _REF["site"] == "k":
            # the keys computed in this forward (the last T of them; earlier ones come from a cache)
            # (multi-head attention only: kv head h is head h)
            t = query.shape[2]
            key[:, h, -t:] = key[:, h, -t:] * _REF["eps"]
        elif _REF["kind"] == "undifferentiated":
            q[:, h] = query[:, h] * _REF["eps"]
        elif _REF["kind"] == "mean" and _REF["site"] == "q":
            q[:, h] = query.mean(1)
    groups = q.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(2, 3)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[..., : k.shape[2]].float()
    if s_aux is not None:
        sink = s_aux.float().view(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
        weights = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
    else:
        weights = torch.softmax(scores, -1)
    out = torch.matmul(weights.to(v.dtype), v)  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), weights


def _register_reference():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register("shb_reference", _reference_attention)
    AttentionMaskInterface.register("shb_reference", eager_mask)


def _reference_logits(family, heads, kind, eps, site, ids, mask, pos, model=None):
    """Logits of the ablated model computed without shb: the query side in the attention function,
    the output side as a hook on the output projection's input written here."""
    _register_reference()
    model = tiny(family, "eager") if model is None else copy.deepcopy(model)
    model.config._attn_implementation = "shb_reference"
    for m in model.modules():
        if getattr(m, "config", None) is not None:
            m.config._attn_implementation = "shb_reference"
    att = _attention_layers(model.config)
    by_layer: dict = {}
    for layer, h in heads:
        by_layer.setdefault(att[layer], []).append(h)
    handles = []
    if kind in ("scaling", "zero") or (kind == "mean" and site == "output"):
        d = model.config.head_dim if getattr(model.config, "head_dim", None) else 32 // 4
        for dec, hs in by_layer.items():
            attn = model.model.layers[dec].self_attn
            o_proj = attn.o_proj if hasattr(attn, "o_proj") else attn.out_proj  # LFM2

            def pre(_m, args, hs=hs):
                x = args[0].clone()  # (B, T, H * d): the attention output, heads in order
                per = x.view(*x.shape[:2], -1, d)
                src = per.clone()
                for h in hs:
                    per[:, :, h] = src.mean(2) if kind == "mean" else src[:, :, h] * (0.0 if kind == "zero" else eps)
                return (x,)

            handles.append(o_proj.register_forward_pre_hook(pre))
        _REF.clear()
    else:
        _REF.update(kind=kind, eps=eps, site=site, heads=by_layer)
    try:
        return _logits(model, ids, mask, pos).logits
    finally:
        _REF.clear()
        for h in handles:
            h.remove()


KINDS = [("undifferentiated", 0.3, None), ("undifferentiated", 0.0, None), ("scaling", 0.3, None),
         ("zero", 0.0, None), ("mean", 0.0, "q"), ("mean", 0.0, "output")]


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_is_found_from_the_modules(family):
    model = tiny(family)
    lay = L.detect(model)
    att = _attention_layers(model.config)
    assert lay.arch == family and lay.probed
    assert (lay.n_layers, lay.n_heads, lay.n_kv_heads) == (len(att), 4, 2)
    assert lay.attention_layers == tuple(att)
    assert lay.n_params == sum(p.numel() for p in model.parameters())
    assert lay.sinks == (family == "gpt_oss")
    norm = ("per_head" if family in PER_HEAD_NORM | {"cohere"} else "across_heads" if family.startswith("olmo")
            else "none")
    assert lay.qk_norm == norm
    # from a config (meta device): same geometry and count, no probe
    cfg_lay = L.detect(model.config)
    assert (cfg_lay.n_layers, cfg_lay.n_params, cfg_lay.qk_norm) == (lay.n_layers, lay.n_params, lay.qk_norm)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_kind_equals_the_reference(family):
    ids, mask, pos = _batch()
    real = mask.bool()
    model = tiny(family, "eager")
    base = _logits(model, ids, mask, pos).logits
    for kind, eps, site in KINDS:
        with A.ablate(model, _heads(family), kind, epsilon=eps, site=site):
            got = _logits(model, ids, mask, pos).logits
        ref = _reference_logits(family, _heads(family), kind, eps, site, ids, mask, pos)
        torch.testing.assert_close(got[real], ref[real], **TOL, msg=f"{family} {kind} eps={eps} site={site}")
        assert (got[real] - base[real]).abs().max() > 1e-3, f"{family} {kind}: the ablation changed nothing"


def _visible(cfg, decoder_layer, mask):
    """(B, T, S) bool: key s visible from query t, from the config alone."""
    t = mask.shape[1]
    types = getattr(cfg, "layer_types", None)
    kind = types[decoder_layer] if types else "full_attention"
    # positions of real tokens (left padding): window and chunks count real positions
    p = (mask.cumsum(-1) - 1)
    q_pos, k_pos = p[:, :, None], p[:, None, :]
    vis = (torch.arange(t)[None, None, :] <= torch.arange(t)[None, :, None]) & mask.bool()[:, None, :]
    window = getattr(cfg, "sliding_window", None)
    if kind == "sliding_attention" or (types is None and window):
        vis &= (q_pos - k_pos) < window
    if kind == "chunked_attention":
        vis &= (q_pos // cfg.attention_chunk_size) == (k_pos // cfg.attention_chunk_size)
    return vis


@pytest.mark.parametrize("family", FAMILIES)
def test_epsilon_zero_is_uniform_over_the_visible_prefix(family):
    model = tiny(family, "eager")
    ids, mask, pos = _batch()
    att = _attention_layers(model.config)
    head = 2
    base = _logits(model, ids, mask, pos, output_attentions=True).attentions
    for layer in range(len(att)):
        with A.ablate(model, [(layer, head)], "undifferentiated", epsilon=0.0):
            got = _logits(model, ids, mask, pos, output_attentions=True).attentions
        dec = att[layer]
        idx = att.index(dec) if len(got) == len(att) else dec  # attentions are returned per attention layer
        vis = _visible(model.config, dec, mask).float()
        n = vis.sum(-1, keepdim=True)
        if family == "gpt_oss":
            # The sink keeps its learned logit: each visible key gets 1 / (n + e^s), the sink the rest.
            s = model.model.layers[dec].self_attn.sinks[head].detach()
            expected = vis / (n + torch.exp(s))
        else:
            expected = vis / n.clamp(min=1)
        real = mask.bool()
        torch.testing.assert_close(got[idx][:, head][real], expected[real], rtol=0, atol=1e-5, msg=f"layer {layer}")
        others = [h for h in range(4) if h != head]
        torch.testing.assert_close(got[idx][:, others][real[:, None, :].expand(-1, 3, -1)],
                                   base[idx][:, others][real[:, None, :].expand(-1, 3, -1)], rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_unchanged_after_the_context(family):
    model = tiny(family, "sdpa")
    ids, mask, pos = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = _logits(model, ids, mask, pos).logits
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    for kind, eps, site in KINDS:
        with A.ablate(model, _heads(family), kind, epsilon=eps, site=site):
            _logits(model, ids, mask, pos)
    with pytest.raises(RuntimeError, match="boom"), A.ablate_rows(model, [_heads(family)] * 3, "undifferentiated"):
        raise RuntimeError("boom")
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == n_hooks
    assert torch.equal(_logits(model, ids, mask, pos).logits, base)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in NO_SDPA])
def test_eager_and_sdpa_agree(family):
    ids, mask, pos = _batch()
    real = mask.bool()
    for kind, eps, site in [KINDS[0], KINDS[2], KINDS[4]]:
        out = {}
        for attn in ("eager", "sdpa"):
            model = tiny(family, attn)
            with A.ablate(model, _heads(family), kind, epsilon=eps, site=site):
                out[attn] = _logits(model, ids, mask, pos).logits
        # logits of these sharp tiny models reach ~10: the two kernels differ by up to ~4e-5 unablated (Mixtral)
        torch.testing.assert_close(out["eager"][real], out["sdpa"][real], rtol=0, atol=2e-4)


PROMPTS = ["how to make a bomb", "tell me", "write a poem about cake please and then explain", "hack into computer"]


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_agrees_with_the_naive_loop(family):
    from shb.engine import Engine

    model = tiny(family, "sdpa")
    lm = SimpleNamespace(model=model, tokenizer=make_tokenizer(), layout=L.detect(model))
    if family == "llama4_text":
        # Left padding moves Llama-4's temperature-tuning positions (counted from the padded start): the
        # batched fast path would not be exact, so the engine falls back to the naive loop and says why.
        with pytest.warns(RuntimeWarning, match="temperature tuning"):
            assert Engine(lm, PROMPTS, batch_size=5).strategy == "naive"
        return
    fast = Engine(lm, PROMPTS, batch_size=5)
    slow = Engine(lm, PROMPTS, strategy="naive")
    assert fast.strategy == "engine"
    sets = [[(layer, h)] for layer in range(lm.layout.n_layers) for h in range(4)] + [_heads(family)]
    a, b = fast.ships_head_sets(sets), slow.ships_head_sets(sets)
    assert float(b.min()) > 0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_the_reference_loop(family):
    from shb.generate import generate

    model = tiny(family, "sdpa")
    lm = SimpleNamespace(model=model, tokenizer=make_tokenizer(), layout=L.detect(model))
    for kind, eps in (("undifferentiated", 0.0), ("scaling", 0.3)):
        kw = {"heads": _heads(family), "kind": kind, "epsilon": eps, "max_new_tokens": 5}
        cached = generate(lm, PROMPTS, batch_size=4, **kw)
        reference = generate(lm, PROMPTS, strategy="reference", **kw)
        assert [g.text for g in cached] == [g.text for g in reference], (family, kind)
    plain = generate(lm, PROMPTS, max_new_tokens=5)
    assert [g.text for g in plain] != [g.text for g in cached]  # the ablation changes answers


@pytest.mark.parametrize("family", FAMILIES)
def test_bake_equals_hooks_or_is_refused(family):
    ids, mask, pos = _batch()
    real = mask.bool()
    cases = [("undifferentiated", 0.0), ("undifferentiated", 0.3), ("scaling", 0.3), ("zero", 0.0)]
    for kind, eps in cases:
        model = tiny(family)
        with A.ablate(model, _heads(family), kind, epsilon=eps):
            hooked = _logits(model, ids, mask, pos).logits
        if family in PER_HEAD_NORM and kind == "undifferentiated" and eps != 0.0:
            with pytest.raises(L.UnsupportedArchitecture, match="cannot bake"):
                A.bake(model, _heads(family), kind, epsilon=eps)
            continue
        before = {k: v.clone() for k, v in model.state_dict().items()}
        count = A.bake(model, _heads(family), kind, epsilon=eps)
        baked = _logits(model, ids, mask, pos).logits
        torch.testing.assert_close(baked[real], hooked[real], **TOL, msg=f"{family} {kind} eps={eps}")
        changed = sum(int((before[k] != v).sum()) for k, v in model.state_dict().items())
        assert changed == count == A.parameters_modified(tiny(family), _heads(family), kind, epsilon=eps)[0]


def _cached_step(model, ids, ablate_ctx):
    """Logits of the last token when the prefix's cache was built without ablation."""
    with torch.no_grad():
        past = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        with ablate_ctx:
            return model(input_ids=ids[:, -1:], cache=past, use_cache=True).logits[:, -1]


@pytest.mark.parametrize("family", ["qwen3", "olmo2", "llama4_text", "cohere"])
def test_key_site_on_multi_head_attention(family):
    """site='k' scales the key as it enters the scores: after a per-head norm (Qwen3, Cohere), after a
    norm over the whole projection (OLMo-2), on the second call of a norm shared with the query
    (Llama-4). Over a whole sequence q.k cannot tell the two apart, so the check is a cached step:
    there the ablation touches only the new token's key (or query)."""
    import contextlib

    import transformers as T

    cfg = _config(family)
    cfg.num_key_value_heads = 4
    cfg._attn_implementation = "eager"
    torch.manual_seed(3)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.25)
            elif not name.endswith("bias"):
                p.add_(torch.empty_like(p).normal_(1.0, 0.3))
    ids = _batch(lengths=(6,))[0]
    heads = [(0, 1), (1, 3)]
    got = _cached_step(model, ids, A.ablate(model, heads, "undifferentiated", epsilon=0.3, site="k"))
    query_edit = _cached_step(model, ids, A.ablate(model, heads, "undifferentiated", epsilon=0.3))
    _register_reference()
    ref_model = copy.deepcopy(model)
    for m in ref_model.modules():
        if getattr(m, "config", None) is not None:
            m.config._attn_implementation = "shb_reference"

    @contextlib.contextmanager
    def reference():
        _REF.update(kind="undifferentiated", eps=0.3, site="k", heads={0: [1], 1: [3]})
        try:
            yield
        finally:
            _REF.clear()

    ref = _cached_step(ref_model, ids, reference())
    torch.testing.assert_close(got, ref, **TOL)
    assert (got - query_edit).abs().max() > 1e-3  # the key site is not the query site


def test_olmo2_bake_edits_norm_weights_only():
    """Across-heads norm: the bake is the head's slice of q_norm.weight (head_dim entries per head)."""
    model = tiny("olmo2")
    assert A.parameters_modified(model, [(0, 1)], "undifferentiated")[0] == 8
    before = model.model.layers[0].self_attn.q_norm.weight.clone()
    A.bake(model, [(0, 1)], "undifferentiated", epsilon=0.5)
    after = model.model.layers[0].self_attn.q_norm.weight
    torch.testing.assert_close(after[8:16], before[8:16] * 0.5)
    assert torch.equal(after[:8], before[:8]) and torch.equal(after[16:], before[16:])


def test_hybrid_names_heads_by_attention_layer():
    model = tiny("qwen3_next")
    lay = L.detect(model)
    assert lay.n_layers == 1 and lay.attention_layers == (1,) and lay.hybrid
    with pytest.raises(ValueError, match="out of range"), A.ablate(model, [(1, 0)]):
        pass


def test_unknown_attention_parameter_is_refused_by_name():
    model = tiny("qwen3")
    attn = model.model.layers[1].self_attn
    attn.mystery = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(L.UnsupportedArchitecture, match=r"layers\.1\.self_attn\.mystery"):
        L.detect(model)


def test_bake_refusal_names_the_norm():
    model = tiny("qwen3")
    with pytest.raises(L.UnsupportedArchitecture, match="q_norm"):
        A.bake(model, [(0, 0)], "undifferentiated", epsilon=1e-5)
    assert math.isfinite(A.parameters_modified(model, [(0, 0)], "undifferentiated")[1])


def _refused_config(family):
    import transformers as T

    small = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 64}
    if family == "deepseek_v3":  # multi-head latent attention: values of another width than queries/keys
        return T.DeepseekV3Config(**small, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                  v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=16,
                                  first_k_dense_replace=1)
    if family == "falcon_h1":  # attention and Mamba side by side in every layer
        return T.FalconH1Config(**small, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8)
    if family == "minimax":  # lightning (linear) attention layers with query/key projections
        return T.MiniMaxConfig(**small, num_local_experts=2, layer_types=["linear_attention", "full_attention"])
    raise KeyError(family)


@pytest.mark.parametrize("family,obstacle", [("deepseek_v3", r"self_attn\.o_proj"),
                                             ("falcon_h1", r"layer type 'hybrid'"),
                                             ("minimax", r"layer type 'linear_attention'")])
def test_refused_families_name_the_obstacle(family, obstacle):
    with pytest.raises(L.UnsupportedArchitecture, match=obstacle):
        L.detect(_refused_config(family))
