"""Query/key norms between the projections and the attention scores (part of shb.models.layout).

A norm decides where the query edit of `undifferentiated` must sit: after it, because a per-head
RMSNorm undoes a scaling of its input and a norm over the whole projection (OLMo-2) spreads it
over every head. Which tensor the norm returns ((B, T, H*D), (B, T, H, D) or (B, H, T, D)), and
whether it reads a view of the projection's output (and where each head sits there: Qwen3-Next's
gated query interleaves [query | gate] per head), is measured with one short forward pass of the
live model rather than read from the architecture's name.

Importable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from shb.models.projections import KEY_NORMS, QUERY_NORMS, SHARED_NORMS, ProjSlice, UnsupportedArchitecture, text_config


def attention_norms(attn):
    """(query norm name or None, key norm name or None, shared: bool)."""
    for name in SHARED_NORMS:
        if hasattr(attn, name):
            return name, name, True
    qn = next((n for n in QUERY_NORMS if hasattr(attn, n)), None)
    kn = next((n for n in KEY_NORMS if hasattr(attn, n)), None)
    if qn and kn and getattr(attn, qn) is getattr(attn, kn):
        return qn, qn, True
    return qn, kn, False


@dataclass(frozen=True)
class _NormSite:
    module: str  # norm attribute on the attention module
    call: int  # 0: first call in one attention forward
    kind: str  # "per_head" / "across_heads"
    axis: int | None  # head axis of a 4-D output; None: (B, T, F)
    start: int | None = None  # where the norm's input sits on the projection output (None: not a view of it)
    head_stride: int | None = None


def norm_layouts(model, layers, attn_name, att_layers, n_heads, n_kv, d, probe):
    """{"q": _NormSite or None, "k": ...} shared by every attention layer that has norms.

    Without a probe (config or meta model) the axis stays unknown; hooks need a probed layout.
    """
    normed = [i for i in att_layers if attention_norms(getattr(layers[i], attn_name)) != (None, None, False)]
    first = getattr(layers[normed[0] if normed else att_layers[0]], attn_name)
    qn, kn, shared = attention_norms(first)
    for i in normed:
        lq, lk, ls = attention_norms(getattr(layers[i], attn_name))
        if (lq, lk, ls) != (qn, kn, shared):
            raise UnsupportedArchitecture(f"layer {i}: query/key norms ({lq}, {lk}) differ from layer "
                                          f"{normed[0]}'s ({qn}, {kn})")
    if qn is None and kn is None:
        return {"q": None, "k": None}
    if (qn is None) != (kn is None):
        raise UnsupportedArchitecture(f"{attn_name}: a norm on only one of query and key ({qn or kn}); not handled")

    def kind_of(name, heads):
        # A guess from the weight, replaced by what the probe sees (3-D output: across heads; 4-D: per head).
        w = getattr(getattr(first, name), "weight", None)
        if w is None or w.numel() == d:
            return "per_head"
        if w.numel() == heads * d:
            return "across_heads" if w.dim() == 1 else "per_head"  # Cohere: LayerNorm weights (heads, head_dim)
        raise UnsupportedArchitecture(f"{attn_name}.{name}: a norm weight of {w.numel()} entries is neither per head "
                                      f"({d}) nor over the whole projection ({heads} x {d})")

    sites = {"q": _NormSite(qn, 0, kind_of(qn, n_heads), None), "k": _NormSite(kn, 1 if shared else 0,
                                                                                   kind_of(kn, n_kv), None)}
    if probe:
        sites = _probe(model, layers, attn_name, att_layers, sites, n_heads, n_kv, d)
    return sites


def _probe(model, layers, attn_name, att_layers, sites, n_heads, n_kv, d):
    """One forward pass of a few tokens to see the tensors the norms return (and read)."""
    import torch

    from shb.hooks.raw import Attached

    t = 2
    while t in (n_heads, n_kv):
        t += 1
    seen: dict = {}
    attached = Attached()
    calls: dict = {}

    for i in att_layers:
        attn = getattr(layers[i], attn_name)
        if not hasattr(attn, sites["q"].module):
            continue  # a layer without norms (Llama-4 NoPE layers)
        outs: dict = {}

        def pre(_m, _a, i=i):
            for key in list(calls):
                if key[0] == i:
                    calls[key] = 0

        def norm_hook(mod, args, out, key=None, outs=outs):
            c = calls.get(key, 0)
            calls[key] = c + 1
            seen.setdefault(key, {})[c] = (tuple(out.shape), args[0] if args else None, dict(outs))

        attached.pre(attn, pre)
        for which, pname in (("q", "q_proj"), ("k", "k_proj")):
            if hasattr(attn, pname):
                attached.post(getattr(attn, pname), lambda m, a, out, which=which, outs=outs: outs.__setitem__(which, out))
        for n in {sites["q"].module, sites["k"].module}:
            attached.post(getattr(attn, n), lambda m, a, out, key=(i, n), f=norm_hook: f(m, a, out, key=key))
    vocab = getattr(text_config(model.config), "vocab_size", 8)
    device = next(model.parameters()).device
    ids = (torch.arange(t, device=device) % max(1, vocab - 3) + 3)[None]
    try:
        with attached, torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except Exception as exc:
        raise UnsupportedArchitecture(f"probing the query/key norms with a {t}-token forward pass failed: "
                                      f"{type(exc).__name__}: {exc}") from exc
    result = {}
    for which, heads in (("q", n_heads), ("k", n_kv)):
        site = sites[which]
        found = set()
        for (i, name), per_call in seen.items():
            if name != site.module:
                continue
            if site.call not in per_call:
                raise UnsupportedArchitecture(f"layer {i}: {attn_name}.{site.module} was called "
                                              f"{len(per_call)} time(s) in one forward; expected query and key")
            shape, inp, outs = per_call[site.call]
            found.add(_axis_from(shape, inp, outs.get(which), t, heads, d, f"{attn_name}.{site.module}", site.kind))
        if len(found) != 1:
            raise UnsupportedArchitecture(f"{attn_name}.{site.module}: the heads sit on different axes in different "
                                          f"layers ({sorted(found, key=str)})")
        axis, start, stride = found.pop()
        kind = "across_heads" if axis is None else "per_head"
        result[which] = _NormSite(site.module, site.call, kind, axis, start, stride)
    return result


def _axis_from(shape, inp, proj_out, t, heads, d, where, kind):
    """(head axis or None, start, head_stride on the projection output or None) of one norm call."""
    if len(shape) == 3:
        if shape[1:] != (t, heads * d):
            raise UnsupportedArchitecture(f"{where}: returns {shape}; expected (B, {t}, {heads} x {d}) for a norm "
                                          "over the whole projection")
        return None, 0, d
    if len(shape) != 4 or shape[-1] != d:
        raise UnsupportedArchitecture(f"{where}: returns shape {shape}; shb expects (B, T, H, {d}) or (B, H, T, {d})")
    if shape[1:3] == (t, heads):
        axis = 2
    elif shape[1:3] == (heads, t):
        axis = 1
    else:
        raise UnsupportedArchitecture(f"{where}: returns {shape}; no axis holds the {heads} heads")
    start = stride = None
    if inp is not None and proj_out is not None and inp.untyped_storage().data_ptr() == \
            proj_out.untyped_storage().data_ptr() and inp.stride(-1) == 1:
        # The norm reads a view of the projection output: its offset and head stride locate each head there.
        start = inp.storage_offset() - proj_out.storage_offset()
        stride = inp.stride(axis)
    return axis, start, stride


def norm_sites(layouts, q, k, n_heads, n_kv, d):
    """(qk_norm kind, query hook slice, key hook slice, query projection slice, key projection slice)."""
    qs, ks = layouts["q"], layouts["k"]
    if qs is None:
        return "none", q, k, q, k
    if qs.kind != ks.kind:
        raise UnsupportedArchitecture(f"query norm {qs.module} is {qs.kind} but key norm {ks.module} is {ks.kind}")

    def hook_slice(site, heads):
        return ProjSlice(site.module, False, 0, d, 0, heads, d, False, axis=site.axis, call=site.call)

    def proj_slice(site, proj):
        if site.kind == "across_heads" or site.start is None:
            # Across heads the projection keeps its own layout; a norm after other ops (Llama-4: after rotary)
            # reads heads in the projection's order when that is contiguous.
            return proj if proj.head_stride == d else None
        return ProjSlice(proj.module, proj.conv1d, site.start, site.head_stride, 0, proj.n_heads, d, proj.bias)

    return qs.kind, hook_slice(qs, n_heads), hook_slice(ks, n_kv), proj_slice(qs, q), proj_slice(ks, k)


