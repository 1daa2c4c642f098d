"""Head-ablation hooks on tiny models of every supported architecture.

(a) epsilon = 0 flattens exactly the ablated head's attention (causal, unpadded, in-window);
(c) empty head set / epsilon = 1 are the identity, bit for bit;
(d) left-padded batches equal prompts run one by one;
(e) hooks come off, also on exceptions;
(f) ablate_rows (per-row head sets) equals running each head set on its own;
and the same hooked logits under eager and sdpa attention.
Baking (b) is in test_surgery.py.
"""

from __future__ import annotations

import pytest
import torch

from shb import ablation as A
from shb.models import layout as L
from tests.integration.test_ablation_models import ARCHS, NO_SDPA, forward, left_pad, prompts, tiny_model

TOL = {"rtol": 0, "atol": 1e-5}
MHA_ARCHS = [a for a in ARCHS if L.detect(tiny_model(a).config).n_kv_heads == 4]


def _allowed(mask, window):
    """(B, T, S) bool: key s visible from query t (causal, not padding, within the window)."""
    t = mask.shape[1]
    q = torch.arange(t)[:, None]
    s = torch.arange(t)[None, :]
    vis = (s <= q) & mask.bool()[:, None, :]
    if window is not None:
        vis &= (q - s) < window
    return vis


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer", [0, 1])
def test_epsilon_zero_flattens_only_the_ablated_head(arch, layer):
    model = tiny_model(arch, "eager")
    lay = L.detect(model)
    ids, mask, pos = left_pad(prompts(3, lengths=(7, 4, 6)))
    head = 2
    base = forward(model, ids, mask, pos, output_attentions=True).attentions
    with A.ablate(model, [(layer, head)], "undifferentiated", epsilon=0.0):
        abl = forward(model, ids, mask, pos, output_attentions=True).attentions
    vis = _allowed(mask, lay.sliding_windows[layer])  # (B, T, T)
    expected = vis.float() / vis.sum(-1, keepdim=True).clamp(min=1)
    real = mask.bool()  # queries at padding positions are not compared
    got = abl[layer][:, head]  # (B, T, S)
    torch.testing.assert_close(got[real], expected[real], **TOL)
    # the other heads of the layer and every earlier layer are untouched
    others = [h for h in range(lay.n_heads) if h != head]
    # (their queries are multiplied by exactly 1.0 and their keys are unchanged: bit-identical)
    torch.testing.assert_close(abl[layer][:, others], base[layer][:, others], rtol=0, atol=0, equal_nan=True)
    for earlier in range(layer):
        assert torch.equal(abl[earlier], base[earlier])


def _cached_step_attention(model, ids, **ablation):
    """Layer-0 attention of the last token when the prefix's cache was built without ablation.

    Query and key are symmetric in q . k over a whole sequence, so only a cached step tells
    them apart: a query edit touches only the new token's query, a key edit only its key.
    Layer 0's cached keys do not depend on any ablation, so the expectation is exact there.
    """
    with torch.no_grad():
        past = model(input_ids=ids[:, :-1], use_cache=True).past_key_values  # (v5: the cache object)
        with A.ablate(model, [(0, 1)], "undifferentiated", epsilon=0.0, **ablation):
            out = model(input_ids=ids[:, -1:], cache=past, use_cache=True, output_attentions=True)
    return out.attentions[0][0, 1, -1]  # (S,) head 1, the new token


@pytest.mark.parametrize("arch", ARCHS)
def test_query_site_acts_on_the_query(arch):
    model = tiny_model(arch, "eager")
    lay = L.detect(model)
    ids = prompts(1, lengths=(6,))[0][None]
    att = _cached_step_attention(model, ids)
    window = lay.sliding_windows[0]
    n = 6 if window is None else min(6, window)
    # a sliding-window cache may keep only the window: then att is shorter than the prompt
    expected = torch.zeros(att.shape[0])
    expected[-n:] = 1.0 / n
    torch.testing.assert_close(att, expected, **TOL)
    if lay.n_kv_heads == lay.n_heads:
        # the key site leaves the new query intact: its pattern is not flat
        assert not torch.allclose(_cached_step_attention(model, ids, site="k"), expected, atol=1e-3)


@pytest.mark.parametrize("arch", MHA_ARCHS)
def test_key_site_flattens_attention_on_mha(arch):
    model = tiny_model(arch, "eager")
    ids, mask, pos = left_pad(prompts(2, lengths=(6, 3)))
    with A.ablate(model, [(1, 3)], "undifferentiated", epsilon=0.0, site="k"):
        att = forward(model, ids, mask, pos, output_attentions=True).attentions[1][:, 3]
    vis = _allowed(mask, None)
    expected = vis.float() / vis.sum(-1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(att[mask.bool()], expected[mask.bool()], **TOL)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in MHA_ARCHS])
def test_key_site_refused_under_gqa(arch):
    model = tiny_model(arch)
    with pytest.raises(ValueError, match="grouped-query"), A.ablate(model, [(0, 0)], "undifferentiated", site="k"):
        pass


KIND_CASES = [("undifferentiated", 1e-5, None), ("undifferentiated", 0.0, None), ("scaling", 0.3, None),
              ("zero", 0.0, None), ("mean", 0.0, "q"), ("mean", 0.0, "output")]


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_cases_are_bit_identical(arch):
    model = tiny_model(arch, "sdpa")
    ids, mask, pos = left_pad(prompts(2))
    base = forward(model, ids, mask, pos).logits
    with A.ablate(model, [], "undifferentiated") as hooks:
        assert hooks.n_hooks == 0
        assert torch.equal(forward(model, ids, mask, pos).logits, base)
    for kind in ("undifferentiated", "scaling"):
        with A.ablate(model, [(0, 1), (1, 3)], kind, epsilon=1.0) as hooks:
            assert hooks.n_hooks == 2
            assert torch.equal(forward(model, ids, mask, pos).logits, base)
    # and an ablation that should change something does (the check above can fail)
    with A.ablate(model, [(0, 1)], "undifferentiated", epsilon=0.0):
        assert not torch.allclose(forward(model, ids, mask, pos).logits, base)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind,eps,site", [KIND_CASES[1], KIND_CASES[3], KIND_CASES[4]])
def test_left_padded_batch_matches_one_by_one(arch, kind, eps, site):
    model = tiny_model(arch, "eager")
    seqs = prompts(3, lengths=(7, 3, 5))
    ids, mask, pos = left_pad(seqs)
    heads = [(0, 1), (1, 2)]
    with A.ablate(model, heads, kind, epsilon=eps, site=site):
        batch = forward(model, ids, mask, pos).logits
        for i, s in enumerate(seqs):
            alone = forward(model, s[None]).logits[0]  # (T_i, V)
            torch.testing.assert_close(batch[i, -len(s):], alone, **TOL)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_detach_also_on_exception(arch):
    model = tiny_model(arch)
    before = _hook_count(model)
    with A.ablate(model, [(0, 0), (0, 3), (1, 1)], "mean") as hooks:
        assert hooks.n_hooks == 2 and hooks.layers == [0, 1]  # one hook per touched layer
        assert _hook_count(model) == before + 2
    assert _hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"), A.ablate_rows(model, [[(1, 0)], [(0, 2)]], "scaling", epsilon=0.0):
        assert _hook_count(model) == before + 2
        raise RuntimeError("boom")
    assert _hook_count(model) == before


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind,eps,site", KIND_CASES)
def test_ablate_rows_equals_set_by_set(arch, kind, eps, site):
    model = tiny_model(arch, "sdpa")
    ids = prompts(1, lengths=(6,))[0]
    head_sets = [[], [(0, 1)], [(0, 1), (1, 3)], [(1, 0), (1, 2), (0, 3)]]
    batch_ids = ids[None].expand(len(head_sets), -1)
    with A.ablate_rows(model, head_sets, kind, epsilon=eps, site=site) as hooks:
        assert hooks.n_hooks == 2
        rows = forward(model, batch_ids).logits
    for i, hs in enumerate(head_sets):
        with A.ablate(model, hs, kind, epsilon=eps, site=site):
            one = forward(model, ids[None]).logits[0]
        torch.testing.assert_close(rows[i], one, **TOL)
    assert not torch.allclose(rows[0], rows[2])  # different head sets do give different rows


def test_ablate_rows_rejects_wrong_batch_size():
    model = tiny_model("llama")
    with A.ablate_rows(model, [[(0, 1)], []]), pytest.raises(ValueError, match="len\\(head_sets\\)"):
        forward(model, prompts(1)[0][None].expand(3, -1))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind,eps,site", [KIND_CASES[0], KIND_CASES[1], KIND_CASES[2], KIND_CASES[4]])
def test_eager_and_sdpa_agree(arch, kind, eps, site):
    if arch in NO_SDPA:
        pytest.skip(f"transformers has no sdpa attention for {arch}")
    ids, mask, pos = left_pad(prompts(2, lengths=(6, 4)))
    out = {}
    for attn in ("eager", "sdpa"):
        model = tiny_model(arch, attn)
        with A.ablate(model, [(0, 2), (1, 1)], kind, epsilon=eps, site=site):
            out[attn] = forward(model, ids, mask, pos).logits
    real = mask.bool()
    torch.testing.assert_close(out["eager"][real], out["sdpa"][real], **TOL)


def test_out_of_range_heads_name_the_geometry():
    model = tiny_model("qwen2")
    for bad in ([(2, 0)], [(0, 4)], [(-1, 0)]):
        with pytest.raises(ValueError, match="2 layers x 4 heads"), A.ablate(model, bad):
            pass


def test_bad_kind_and_site():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="known kinds"), A.ablate(model, [(0, 0)], "nope"):
        pass
    with pytest.raises(ValueError, match="site"), A.ablate(model, [(0, 0)], "scaling", site="q"):
        pass


def test_loaded_model_wrapper_is_accepted():
    model = tiny_model("llama")

    class Loaded:
        pass

    lm = Loaded()
    lm.model = model
    ids = prompts(1)[0][None]
    with A.ablate(lm, [(0, 0)], "zero"):
        a = forward(model, ids).logits
    with A.ablate(model, [(0, 0)], "zero"):
        b = forward(model, ids).logits
    assert torch.equal(a, b)
