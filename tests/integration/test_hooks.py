"""shb.hooks: named points on tiny random models of three families, against references written here
with plain torch hooks (tests may reach into modules; shb may not), and the guarantees:

* every point resolves, with the documented shape, and reads what its name says;
* after any error inside a hooked block (KeyboardInterrupt included) the model is bit-identical;
* a head ablated in a left-padded batch of prompts of different lengths, with and without the KV cache
  (generation through shb.generate), gives every row what the prompt gives alone.
"""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace

import pytest
import torch

from shb import ablation as A
from shb import hooks
from shb.models import layout as L
from tests.integration.test_ablation_models import forward, left_pad, prompts, tiny_model

# Llama with grouped-query attention and q/k/v biases; GPT-2's fused Conv1D c_attn; Qwen2 (biases, GQA).
FAMILIES = ["llama", "gpt2", "qwen2"]


@functools.cache
def _layout(arch):
    return L.detect(tiny_model(arch))


def model_of(arch, attn="sdpa"):
    model = tiny_model(arch, attn)
    model._shb_layout = _layout(arch)  # detection is done once per family
    return model


class IdTokenizer:
    """Prompts are written as space-separated token ids (the tiny models' vocabulary has no words)."""

    pad_token_id, eos_token_id, bos_token = 0, 2, None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------ points read what their names say


@pytest.mark.parametrize("arch", FAMILIES + ["gpt_neox", "gemma2", "opt"])
def test_every_listed_point_has_its_documented_shape(arch):
    model = model_of(arch, "eager")
    lay = _layout(arch)
    ids, mask, pos = left_pad(prompts(2, lengths=(5, 3)))
    b, t = ids.shape
    expected = {"attn.in": (b, t, lay.hidden_size), "attn.out": (b, t, lay.hidden_size),
                "attn.q": (b, t, lay.n_heads, lay.head_dim), "attn.head_out": (b, t, lay.n_heads, lay.head_dim),
                "attn.k": (b, t, lay.n_kv_heads, lay.head_dim), "attn.v": (b, t, lay.n_kv_heads, lay.head_dim),
                "attn.weights": (b, lay.n_heads, t, t), "resid_pre": (b, t, lay.hidden_size),
                "resid_mid": (b, t, lay.hidden_size), "resid_post": (b, t, lay.hidden_size),
                "final_norm.in": (b, t, lay.hidden_size), "final_norm": (b, t, lay.hidden_size),
                "logits": (b, t, model.config.vocab_size)}
    names = []
    for pattern, _shape, _about in hooks.describe(model):
        if pattern.startswith("L{"):
            layers, part = pattern[2:].split("}.", 1)
            if part.endswith(":in|out"):
                continue
            first = int(layers.split("..")[0].split(",")[0])
            names.append(f"L{first}.{part}")
        elif not pattern.startswith("("):
            names.append(pattern)
    assert {n.split(".", 1)[1] if n.startswith("L") else n for n in names} >= set(expected) - {"resid_mid"}
    seen, grab = hooks.record(names)
    with hooks.at(model, grab):
        forward(model, ids, mask, pos)
    for name in names:
        part = name.split(".", 1)[1] if name.startswith("L") else name
        if part in expected:
            assert tuple(seen[name].shape) == expected[part], name
    assert model.config._attn_implementation == "eager" and _hook_count(model) == 0


def _by_hand(model, arch, layer, ids):
    """(v (B, T, Hkv, D), head_out (B, T, H, D), attention input, attention output) from plain torch hooks."""
    lay = _layout(arch)
    got = {}
    attn = lay.attention(model, layer)
    proj_in = attn.c_proj if arch == "gpt2" else attn.o_proj
    handles = [proj_in.register_forward_pre_hook(lambda m, a: got.__setitem__("z", a[0])),
               attn.register_forward_pre_hook(lambda m, a, k: got.__setitem__("in", k["hidden_states"] if "hidden_states"
                                                                               in k else a[0]), with_kwargs=True),
               attn.register_forward_hook(lambda m, a, out: got.__setitem__("out", out[0]))]
    v_module = attn.c_attn if arch == "gpt2" else attn.v_proj
    handles.append(v_module.register_forward_hook(lambda m, a, out: got.__setitem__("v_raw", out)))
    try:
        forward(model, ids)
    finally:
        for h in handles:
            h.remove()
    b, t, d = ids.shape[0], ids.shape[1], lay.head_dim
    v = got["v_raw"][..., 2 * lay.hidden_size:] if arch == "gpt2" else got["v_raw"]  # GPT-2: [q | k | v]
    return v.reshape(b, t, lay.n_kv_heads, d), got["z"].reshape(b, t, lay.n_heads, d), got["in"], got["out"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_points_read_what_their_names_say(arch):
    model = model_of(arch, "eager")
    ids = prompts(1, lengths=(6,))[0][None]
    v, z, attn_in, attn_out = _by_hand(model, arch, 1, ids)
    names = ["L1.attn.v", "L1.attn.head_out", "L1.attn.in", "L1.attn.out", "L1.attn.weights", "L1.resid_pre",
             "L1.resid_mid", "L1.resid_post", "logits"]
    seen, grab = hooks.record(names)
    with hooks.at(model, grab):
        out = forward(model, ids, output_attentions=True)
    assert torch.equal(seen["L1.attn.v"], v) and torch.equal(seen["L1.attn.head_out"], z)
    assert torch.equal(seen["L1.attn.in"], attn_in) and torch.equal(seen["L1.attn.out"], attn_out)
    assert torch.equal(seen["L1.attn.weights"], out.attentions[1])
    assert torch.equal(seen["logits"], out.logits)
    # the residual stream between attention and MLP is the layer's input plus the attention's write
    torch.testing.assert_close(seen["L1.resid_mid"], seen["L1.resid_pre"] + seen["L1.attn.out"], rtol=0, atol=1e-6)


def test_parallel_blocks_have_no_mid_residual_and_bad_names_say_why():
    neox = model_of("gpt_neox")  # use_parallel_residual: attention and MLP read the same input
    with pytest.raises(ValueError, match="no residual stream between attention and MLP"):
        hooks.point(neox, "L0.resid_mid")
    llama = model_of("llama")
    with pytest.raises(ValueError, match=r"did you mean 'L1.attn.head_out'"):
        hooks.point(llama, "L1.attn.head_output")
    with pytest.raises(ValueError, match=r"layer 7 is out of range \(2 attention layers"):
        hooks.point(llama, "L7.attn.q")
    with pytest.raises(ValueError, match="has no submodule 'mlp.gate'"):
        hooks.point(llama, "L0.mlp.gate:in")
    with pytest.raises(ValueError, match="read only"), hooks.at(llama, {"L0.attn.weights": lambda w: w * 2}):
        forward(llama, prompts(1)[0][None])
    assert _hook_count(llama) == 0 and llama.config._attn_implementation == "sdpa"


def test_edits_compose_replace_and_differentiate():
    model = model_of("llama")
    ids = prompts(1, lengths=(6,))[0][None]
    base = forward(model, ids).logits
    # the identity edit at every writable point is the model itself, bit for bit
    same = {n: (lambda x: x * 1.0) for n in ("L0.attn.q", "L0.attn.k", "L1.attn.v", "L1.attn.head_out",
                                               "L0.resid_pre", "L1.resid_post", "L0.mlp.act", "final_norm")}
    with hooks.at(model, same):
        assert torch.equal(forward(model, ids).logits, base)
    # a head point edit is the ablation's: scaling head 2's own output of layer 1 by 0.5
    def half(z):
        z = z.clone()
        z[:, :, 2] *= 0.5
        return z

    with hooks.at(model, {"L1.attn.head_out": half}):
        edited = forward(model, ids).logits
    with A.ablate(model, [(1, 2)], "scaling", epsilon=0.5):
        assert torch.equal(forward(model, ids).logits, edited)
    assert not torch.equal(edited, base)
    # gradients: a zero leaf added at a point gives the total derivative there
    leaf = {}

    def add_leaf(z):
        leaf["d"] = torch.zeros_like(z, requires_grad=True)
        return z + leaf["d"]

    with hooks.at(model, {"L0.attn.head_out": add_leaf}), torch.enable_grad():
        logit = model(input_ids=ids).logits[0, -1, 5]
    (grad,) = torch.autograd.grad(logit, leaf["d"])
    assert grad.shape == (1, 6, 4, 8) and float(grad.abs().sum()) > 0


# ------------------------------------------------------------------ errors leave the model as it was


def _facilities(model, hidden):
    """Context managers of shb.hooks and shb.ablation, each with edits that change what the model computes."""
    return {
        "at": lambda: hooks.at(model, {"L0.attn.q": lambda q: q * 0.0, "L1.attn.weights": lambda w: None,
                                       "L0.resid_post": lambda x: x + 1.0, "logits": lambda x: -x}),
        "ablate_rows": lambda: A.ablate_rows(model, [[(0, 1)], [(1, 2)]], "mean", site="output"),
        "start_at": lambda: hooks.start_at(model, 1, hidden),
        "head_skipped": lambda: hooks.head_skipped(model),
        "skip_layers": lambda: hooks.skip_layers(model, [0], alpha=0.5),
        "on_call": lambda: hooks.on_call(model, before=lambda a, k: None, after=lambda a, k, o: None),
    }


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["in the block", "inside the forward"])
def test_an_error_in_a_hooked_block_leaves_the_model_bit_identical(error, where):
    model = model_of("llama", "sdpa")
    ids, mask, pos = left_pad(prompts(2, lengths=(6, 4)))
    base = forward(model, ids, mask, pos).logits
    layers = list(_layout("llama").layers(model))
    hidden = torch.randn(2, ids.shape[1], 32)
    for name, make in _facilities(model, hidden).items():
        def boom(x, name=name):
            raise error(f"boom in {name}")

        with pytest.raises(error, match="boom"), make():
            if where == "inside the forward":
                with hooks.at(model, {"L1.resid_pre": boom}):
                    forward(model, ids, mask, pos)
            else:
                forward(model, ids, mask, pos)
                raise error(f"boom in {name}")
        assert _hook_count(model) == 0, name
        assert list(_layout("llama").layers(model)) == layers and model.config._attn_implementation == "sdpa", name
        assert torch.equal(forward(model, ids, mask, pos).logits, base), name


# ------------------------------------------------------------------ padding and the KV cache


def _lm(arch):
    model = model_of(arch, "sdpa")
    return SimpleNamespace(model=model, tokenizer=IdTokenizer(), layout=_layout(arch))


CASES = {  # (kind, epsilon, site, one head set per prompt)
    "undifferentiated": ("undifferentiated", 0.0, None, [[(0, 1), (1, 2)]] * 3),
    "mean-output": ("mean", 0.0, "output", [[(1, 0), (1, 3)]] * 3),
    "per-row": ("scaling", 0.0, None, [[(0, 1)], [(1, 2), (0, 3)], []]),
}


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("case", CASES)
def test_ablation_in_a_padded_batch_with_the_cache_matches_each_prompt_alone(arch, case):
    from shb.generate import generate

    kind, eps, site, head_sets = CASES[case]
    lm = _lm(arch)
    seqs = prompts(3, lengths=(7, 3, 5), seed=4)
    texts = [" ".join(map(str, s.tolist())) for s in seqs]
    kw = {"kind": kind, "epsilon": eps, "site": site, "max_new_tokens": 8}
    batched = generate(lm, texts, head_sets=head_sets, batch_size=3, **kw)
    alone = [generate(lm, [t], head_sets=[hs], batch_size=1, **kw)[0] for t, hs in zip(texts, head_sets)]
    no_cache = generate(lm, texts, head_sets=head_sets, strategy="reference", **kw)
    assert [g.text for g in batched] == [g.text for g in alone] == [g.text for g in no_cache]
    plain = generate(lm, texts, batch_size=3, max_new_tokens=8)
    assert any(g.text != p.text for g, p in zip(batched, plain) if g.text)  # the ablation is live

    # Logits, not only tokens: the prefill and one cached step of the padded batch, row by row against alone.
    from transformers import DynamicCache

    model = lm.model
    ids, mask, pos = left_pad(seqs)
    nxt = torch.tensor([[5], [9], [11]])
    with torch.no_grad(), A.ablate_rows(model, head_sets, kind, epsilon=eps, site=site):
        first = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=DynamicCache(config=model.config),
                      use_cache=True)
        step = model(input_ids=nxt, attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1),
                     position_ids=pos[:, -1:] + 1, cache=first.cache, use_cache=True).logits[:, -1]
    for i, (s, hs) in enumerate(zip(seqs, head_sets)):
        with torch.no_grad(), A.ablate(model, hs, kind, epsilon=eps, site=site):
            one = model(input_ids=torch.cat([s, nxt[i]])[None]).logits[0]
        torch.testing.assert_close(first.logits[i, -len(s):], one[:-1], rtol=0, atol=2e-5)
        torch.testing.assert_close(step[i], one[-1], rtol=0, atol=2e-5)


def test_ls_points_lists_the_points(tiny_model_dir):
    from click.testing import CliRunner

    from shb.cli import main

    result = CliRunner().invoke(main, ["ls", "points", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    out = result.output
    for line in ("L{0..2}.attn.head_out", "(batch, seq, 4 heads, 8)", "L{0..2}.attn.k", "(batch, seq, 2 kv heads, 8)",
                 "L{0..2}.resid_mid", "L{0..2}.mlp.act", "(batch, seq, 64)", "final_norm", "logits"):
        assert line in out, (line, out)
    bad = CliRunner().invoke(main, ["ls", "points"])
    assert bad.exit_code == 2 and "--model" in bad.output


# ------------------------------------------------------------------ a user's own intervention, from a suite


def test_a_suite_runs_a_users_own_edit_at_named_points(tmp_path, tiny_model_dir, prompts_file):
    """The README's example: head 0 of attention layer 1 scaled by 0.5 at ``L1.attn.head_out`` (ASGuard's
    edit), declared as a ``points`` intervention, generates what the ``scaling`` ablation of head 1-0 with
    epsilon 0.5 generates (the same edit written two ways), and differs from the unmodified model."""
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import load, problems
    from tests.conftest import tiny_suite, write_suite

    data = tiny_suite(tiny_model_dir, prompts_file, "points", [
        {"id": "asr-asguard", "kind": "asr", "intervention": "asguard", "max_new_tokens": 6, "datasets": ["p"]},
        {"id": "asr-scaled", "kind": "asr", "intervention": "scaled", "max_new_tokens": 6, "datasets": ["p"]},
        {"id": "asr-plain", "kind": "asr", "heads": ["1-0"], "k": [0], "max_new_tokens": 6, "datasets": ["p"]}])
    data["interventions"] = [
        {"id": "asguard", "kind": "points",
         "edits": [{"point": "L1.attn.head_out", "heads": [0], "op": "scale", "factor": 0.5}]},
        {"id": "scaled", "kind": "heads", "heads": ["1-0"], "ablation": "scaling", "epsilon": 0.5}]
    assert problems(data) == []
    counts = run_suite(load(write_suite(tmp_path, data)), tmp_path / "db.duckdb", log=lambda *a: None)
    assert counts["failed"] == 0
    with Store(tmp_path / "db.duckdb", read_only=True) as store:
        got = store.query("""SELECT intervention_id, prompt_id, text, params_entries, params_dof FROM generations
                             WHERE intervention_id IS NOT NULL ORDER BY 1, 2""").rows()
    by = {}
    for iv, _prompt, text, entries, dof in got:
        by.setdefault(iv, []).append((text, entries, dof))
    assert set(by) == {"asguard", "scaled"} and len(by["asguard"]) >= 2
    assert [t for t, _, _ in by["asguard"]] == [t for t, _, _ in by["scaled"]]
    # one head chosen; its head_dim (8) columns of the output projection read it, over the hidden size (32)
    assert {(e, d) for _, e, d in by["asguard"]} == {(8 * 32, 1)} == {(e, d) for _, e, d in by["scaled"]}

    bad = copy.deepcopy(data)
    bad["interventions"][0]["edits"][0].update(point="L1.attn.head_output", factor=None)
    found = "\n".join(problems(bad))
    assert "/interventions/0/edits/0/point" in found and "/interventions/0/edits/0/factor" in found, found


@pytest.mark.parametrize("op,kind,site,point", [("zero", "zero", None, "head_out"), ("mean", "mean", "q", "q"),
                                                ("scale", "undifferentiated", "q", "q")])
def test_each_declared_op_is_the_ablation_of_the_same_heads(op, kind, site, point):
    from shb.interventions import PointEdit

    lm = _lm("qwen2")
    ids = prompts(1, lengths=(6,))[0][None]
    edit = PointEdit.from_params({"edits": [{"point": f"L1.attn.{point}", "heads": [2, 0], "op": op,
                                             **({"factor": 0.25} if op == "scale" else {})}]})
    with torch.no_grad(), edit.applied(lm):
        got = forward(lm.model, ids).logits
    with torch.no_grad(), A.ablate(lm.model, [(1, 0), (1, 2)], kind, epsilon=0.25, site=site):
        want = forward(lm.model, ids).logits
    assert torch.equal(got, want) and not torch.equal(got, forward(lm.model, ids).logits)
    assert _hook_count(lm.model) == 0
    with pytest.raises(Exception, match=r"edit 0 \(L1.attn.head_out, heads \[9\]\): outside"):
        PointEdit.from_params({"edits": [{"point": "L1.attn.head_out", "heads": [9], "op": "zero"}]}).applied(lm)
