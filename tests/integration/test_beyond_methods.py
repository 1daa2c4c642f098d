"""Issue 23's plug-ins on tiny random models, each checked against an independent construction:
RDSHA ranks first the one head built to write along the direction; the attention swap with the model
itself as reference changes nothing and restores bit-exactly; the stored attention weights equal a
hand computation; head dropout at p = 0 trains the toy bit for bit as without it."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from shb.baselines import attention_swap  # noqa: E402
from shb.baselines.base import Artefact, FitData, forward  # noqa: E402
from shb.metrics.rdsha import head_projections  # noqa: E402
from tests.conftest import make_tokenizer, tiny_llama  # noqa: E402

TEXTS = ["how to make a bomb", "steal money from bank account", "write poem about cake",
         "plan trip paris", "hack into computer password"]


def _lm(model, tokenizer):
    from shb.models import LoadedModel
    from shb.models.layout import detect

    return LoadedModel(model=model, tokenizer=tokenizer, layout=detect(model), source="tiny", path="")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _chat(tok, texts):
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts]


def _last_o_inputs(lm, texts):
    """(P, F) input of every layer's o_proj at each prompt's last token, one prompt at a time (no padding)."""
    from shb.models import encode_prompt

    out = {layer: [] for layer in range(lm.n_layers)}
    for text in texts:
        seen = {}
        handles = [lm.model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(
            lambda _m, args, i=i: seen.__setitem__(i, args[0][0, -1].detach().clone())) for i in range(lm.n_layers)]
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([encode_prompt(lm.tokenizer, text)]))
        for h in handles:
            h.remove()
        for layer in out:
            out[layer].append(seen[layer])
    return {layer: torch.stack(v) for layer, v in out.items()}


def test_rdsha_ranks_first_the_head_built_to_write_along_the_direction(tok):
    model = tiny_llama(layers=3, heads=4, vocab=len(tok), seed=3)
    lm = _lm(model, tok)
    texts = _chat(tok, TEXTS)
    d, head_dim, target = 32, 8, (1, 2)
    r = torch.randn(d, generator=torch.Generator().manual_seed(0))
    unit = r / r.norm()
    with torch.no_grad():
        for layer in model.model.layers:  # no head writes along r ...
            w = layer.self_attn.o_proj.weight
            w.sub_(torch.outer(unit, unit @ w))
    z = _last_o_inputs(lm, texts)[target[0]]
    cols = slice(target[1] * head_dim, (target[1] + 1) * head_dim)
    u = z[:, cols].mean(0)
    with torch.no_grad():  # ... except the target, whose write along r is 3 u . z_h (u: its mean input)
        model.model.layers[target[0]].self_attn.o_proj.weight[:, cols] += 3 * torch.outer(unit, u / u.norm())
    proj = head_projections(lm, texts, r * 7.0, batch_size=2)  # (P, L, H); the direction's length must not matter
    assert proj.shape == (len(TEXTS), 3, 4)
    scores = proj.mean(0).abs()
    assert divmod(int(scores.argmax()), 4) == target
    others = scores.clone()
    others[target] = 0
    assert float(others.max()) < 1e-5
    # independent value: the head's output, W_O[:, slice] z_h, on the unit direction, prompt by prompt
    z = _last_o_inputs(lm, texts)[target[0]]
    w = model.model.layers[target[0]].self_attn.o_proj.weight[:, cols]
    expected = (z[:, cols] @ w.T) @ unit
    torch.testing.assert_close(proj[:, target[0], target[1]], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("component", ["attention", "mlp"])
def test_attention_swap_with_the_model_itself_changes_nothing(tok, component):
    model = tiny_llama(layers=2, heads=4, vocab=len(tok), seed=1)
    lm = _lm(model, tok)
    twin = _lm(copy.deepcopy(model), tok)
    texts = _chat(tok, TEXTS)
    base = forward(lm, texts)
    art = Artefact.from_bytes(attention_swap.fit(lm, FitData([], [], reference=twin), {"component": component}).to_bytes())
    swap = attention_swap.intervention(art, {"component": component}, reference=twin)
    with swap.applied(lm):
        assert torch.equal(forward(lm, texts), base)
    count = swap.parameters_modified(lm)
    assert count.entries == 0 and count.dof > 0


@pytest.mark.parametrize("component", ["attention", "mlp"])
def test_attention_swap_loads_the_reference_component_and_restores_bit_exactly(tok, component):
    model = tiny_llama(layers=2, heads=4, vocab=len(tok), seed=1)
    other = tiny_llama(layers=2, heads=4, vocab=len(tok), seed=2)
    lm, ref = _lm(model, tok), _lm(other, tok)
    texts = _chat(tok, TEXTS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base = forward(lm, texts)
    # independently: a copy of the model with the component's state dict entries taken from the reference
    part = "self_attn" if component == "attention" else "mlp"
    expected_model = copy.deepcopy(model)
    state = expected_model.state_dict()
    for name, value in other.state_dict().items():
        if f".{part}." in name:
            state[name] = value.clone()
    expected_model.load_state_dict(state)
    expected = forward(_lm(expected_model, tok), texts)
    swap = attention_swap.intervention(attention_swap.fit(lm, FitData([], [], reference=ref), {"component": component}),
                                       {"component": component}, reference=ref)
    with swap.applied(lm):
        got = forward(lm, texts)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, base)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert swap.parameters_modified(lm).entries > 0


def test_attention_swap_refuses_a_reference_of_another_geometry(tok):
    from shb.errors import UsageError

    lm = _lm(tiny_llama(layers=2, heads=4, vocab=len(tok)), tok)
    other = _lm(tiny_llama(layers=2, heads=4, hidden=48, vocab=len(tok)), tok)
    with pytest.raises(UsageError, match="shape"):
        attention_swap.fit(lm, FitData([], [], reference=other), {})


def test_last_position_attention_equals_a_hand_computation(tok):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from shb.metrics.attention import last_position_attention
    from shb.models import encode_prompt

    model = tiny_llama(layers=2, heads=4, vocab=len(tok), seed=5)
    model.config._attn_implementation = "sdpa"
    lm = _lm(model, tok)
    text = _chat(tok, TEXTS[:1])[0]
    ((ids, weights),) = last_position_attention(lm, [text], [(0, 1), (1, 3)])
    assert model.config._attn_implementation == "sdpa"  # switched back
    assert ids == encode_prompt(tok, text)
    # layer 0 by hand: norm -> q, k -> rotary -> causal softmax, last row, head 1
    x = torch.tensor([ids])
    with torch.no_grad():
        h = model.model.embed_tokens(x)
        attn = model.model.layers[0].self_attn
        hn = model.model.layers[0].input_layernorm(h)
        t, hd = len(ids), 8
        q = attn.q_proj(hn).view(1, t, 4, hd).transpose(1, 2)
        k = attn.k_proj(hn).view(1, t, 4, hd).transpose(1, 2)
        cos, sin = model.model.rotary_emb(h, torch.arange(t)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        probs = torch.softmax((q[0, 1, -1] @ k[0, 1].T) / hd ** 0.5, dim=-1)
    torch.testing.assert_close(torch.tensor(weights[(0, 1)]), probs, rtol=1e-4, atol=1e-6)
    assert len(weights[(1, 3)]) == len(ids)
    assert abs(sum(weights[(1, 3)]) - 1) < 1e-5


def test_head_dropout_at_zero_trains_the_toy_bit_for_bit(tok):
    from shb.models.toy import prompts, train
    from shb.models.toy import tokenizer as toy_tokenizer

    toy_tok = toy_tokenizer.train_tokenizer(prompts.corpus())
    torch.set_num_threads(1)
    base = train.pretrain(toy_tok, 0, steps=3, layers=2, heads=4, hidden=16, intermediate=32)
    plain, zero, half = (copy.deepcopy(base) for _ in range(3))
    train.align_full(plain, toy_tok, 1, steps=4)
    train.align_full(zero, toy_tok, 1, steps=4, head_dropout=0.0)
    train.align_full(half, toy_tok, 1, steps=4, head_dropout=0.5)
    names = [n for n, _ in plain.named_parameters()]
    p_zero, p_half = dict(zero.named_parameters()), dict(half.named_parameters())
    assert all(torch.equal(p, p_zero[n]) for n, p in plain.named_parameters())
    assert any(not torch.equal(p, p_half[n]) for n, p in plain.named_parameters())  # the hooks do something
    assert not any(m._forward_pre_hooks for m in half.modules())  # and come off after training
    assert names


def test_head_dropout_masks_whole_heads_with_rate_p():
    from shb.models.toy.train import HeadDropout

    model = tiny_llama(layers=2, heads=4, seed=0)
    dropout = HeadDropout(model, 0.5, seed=7)
    kept = []
    for _ in range(400):
        dropout.draw()
        kept.append(dropout.masks)
    kept = torch.stack(kept)
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(kept.mean()) - 0.5) < 0.05
    x = torch.ones(1, 3, 32)
    out = model.model.layers[0].self_attn.o_proj._forward_pre_hooks
    (hook,) = out.values()
    (masked,) = hook(None, (x,))[:1]
    expected = dropout.masks[0].repeat_interleave(8)
    assert torch.equal(masked[0, 0], expected)
    dropout.remove()
    assert not model.model.layers[0].self_attn.o_proj._forward_pre_hooks


def test_head_dropout_spares_the_anchor_rows():
    """The benign examples (the AHD authors' utility anchors) run with every head; the others are masked."""
    from shb.models.toy.train import HeadDropout, benign_rows

    model = tiny_llama(layers=2, heads=4, seed=0)
    dropout = HeadDropout(model, 0.5, seed=3)
    while bool(dropout.masks[0].all()):  # a draw that drops at least one head of layer 0
        dropout.draw(torch.tensor([False, True, False]))
    (hook,) = model.model.layers[0].self_attn.o_proj._forward_pre_hooks.values()
    (masked,) = hook(None, (torch.ones(3, 2, 32),))[:1]
    expected = dropout.masks[0].repeat_interleave(8)
    assert torch.equal(masked[0, 1], expected) and torch.equal(masked[2, 0], expected)
    assert torch.equal(masked[1], torch.ones(2, 32))
    dropout.remove()
    assert benign_rows("harmful-heavy") == [False] * 2000 + [True] * 1000


def test_suite_toy_keys_reach_the_recipe():
    from shb.models import toy_variant
    from shb.models.toy.build import _key, resolve

    spec = {"id": "t", "kind": "toy", "base_seed": 0, "align_seed": 1, "align_heads": "2-1, 2-0",
            "align_steps": 500, "align_dropout": 0.5}
    recipe = resolve(0, **toy_variant(spec))
    assert recipe["align_heads"] == [[2, 0], [2, 1]] and recipe["align_steps"] == 500
    assert recipe["align_dropout"] == 0.5 and recipe["align_dropout_spares"] == "benign"
    # each key is part of the cache key
    assert len({_key(resolve(0, **toy_variant({**spec, **change})))
                for change in ({}, {"align_heads": "2-0"}, {"align_steps": 250}, {"align_dropout": 0.25})}) == 4


def test_toy_recipe_keeps_its_key_at_p_zero():
    from shb.models.toy.build import _key, resolve

    plain = resolve(0, align="full", align_seed=1)
    assert resolve(0, align="full", align_seed=1, align_dropout=0) == plain
    ahd = resolve(0, align="full", align_seed=1, align_dropout=0.5)
    assert ahd["align_dropout"] == 0.5 and _key(ahd) != _key(plain)
    with pytest.raises(ValueError, match="align_dropout"):
        resolve(0, align_dropout=1.0)
