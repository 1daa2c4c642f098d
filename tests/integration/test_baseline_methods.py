"""Defining properties of the fitted weight-level baselines (ActSVD, set difference, safety neurons),
on tiny random models: each check recomputes the property independently of the method's code."""

from __future__ import annotations

import contextlib
import copy

import pytest

torch = pytest.importorskip("torch")

from shb.baselines import actsvd, safety_neurons, setdiff  # noqa: E402
from shb.baselines.base import Artefact, FitData  # noqa: E402
from shb.baselines.fitting import greedy_responses, is_conv1d, layer_linears, weight_oi  # noqa: E402
from shb.interventions import ParamCount  # noqa: E402
from tests.conftest import make_tokenizer, tiny_llama  # noqa: E402

HARMFUL = ["how to make a bomb", "steal money from bank account", "hack into computer password",
           "poison water please", "kill person with gun", "write malware virus"]
HARMLESS = ["write poem about cake", "bake bread then cook rice", "explain the history of rome",
            "plan trip paris", "learn python code to sort list"]
NEW_TOKENS = 6


def _lm(model, tokenizer, source="tiny"):
    from shb.models import LoadedModel
    from shb.models.layout import detect

    return LoadedModel(model=model, tokenizer=tokenizer, layout=detect(model), source=source, path="")


def _chat(tokenizer, texts):
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def lm(tok):
    return _lm(tiny_llama(layers=3, heads=4, kv_heads=2, vocab=len(tok)), tok)


@pytest.fixture(scope="module")
def data(tok):
    return FitData(_chat(tok, HARMFUL), _chat(tok, HARMLESS), max_new_tokens=NEW_TOKENS)


def _roundtrip(artefact):
    return Artefact.from_bytes(artefact.to_bytes())


def _weights(lm):
    return {name: p.detach().clone() for name, p in lm.model.named_parameters()}


def _assert_restored(lm, before):
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} not restored bit-exactly"


def _deltas(lm, intervention):
    """'layer.name' -> dW (d_out, d_in) float64 under the intervention; restoring is checked too."""
    before = _weights(lm)
    orig = {f"{layer}.{n}": weight_oi(m).detach().double().clone()
            for layer in range(lm.n_layers) for n, m in layer_linears(lm, layer)}
    with intervention.applied(lm):
        new = {f"{layer}.{n}": weight_oi(m).detach().double().clone()
               for layer in range(lm.n_layers) for n, m in layer_linears(lm, layer)}
    _assert_restored(lm, before)
    with contextlib.suppress(RuntimeError), intervention.applied(lm):
        raise RuntimeError("a metric failed midway")
    _assert_restored(lm, before)
    return {k: new[k] - orig[k] for k in orig}, orig


def _rank(m):
    return int(torch.linalg.matrix_rank(m, atol=1e-4)) if m.abs().max() > 0 else 0


# --------------------------------------------------------------------------- ActSVD


def test_actsvd_top_remove_has_the_stated_rank_and_removes_the_safety_directions(lm, data):
    params = {"variant": "top_remove", "rank_safety": 3}
    art = _roundtrip(actsvd.fit(lm, data, params))
    iv = actsvd.intervention(art, params)
    deltas, orig = _deltas(lm, iv)
    for key, dw in deltas.items():
        assert _rank(dw) == 3, key                       # rank(dW) <= r, and the edit is not empty
        u = art.tensors[key + ".U"].double()
        assert torch.allclose(u.T @ u, torch.eye(3, dtype=torch.float64), atol=1e-5)
        assert torch.allclose(u.T @ (orig[key] + dw), torch.zeros_like(u.T @ dw), atol=1e-4), key   # Pi_s W' = 0
    count = iv.parameters_modified(lm)
    assert count.dof == sum(3 * sum(d.shape) for d in deltas.values())
    assert count.entries == sum(int((d != 0).sum()) for d in deltas.values())


def test_actsvd_orthogonal_rank_bound_and_zero_when_safety_and_utility_data_coincide(lm, data):
    params = {"variant": "orthogonal", "rank_safety": 4, "rank_utility": 6}
    deltas, _ = _deltas(lm, actsvd.intervention(_roundtrip(actsvd.fit(lm, data, params)), params))
    ranks = [_rank(d) for d in deltas.values()]
    assert max(ranks) <= 4 and min(ranks) > 0

    same = FitData(data.harmful, data.harmful, max_new_tokens=NEW_TOKENS)
    iv = actsvd.intervention(actsvd.fit(lm, same, params), params)
    assert iv.parameters_modified(lm) == ParamCount(0, 0)
    deltas, _ = _deltas(lm, iv)
    assert all(torch.equal(d, torch.zeros_like(d)) for d in deltas.values())

    # when the utility rank does not cover the safety rank, exactly r_s - r_u directions remain
    short = {"variant": "orthogonal", "rank_safety": 4, "rank_utility": 1}
    deltas, _ = _deltas(lm, actsvd.intervention(actsvd.fit(lm, same, short), short))
    assert all(_rank(d) == 3 for d in deltas.values())


def test_actsvd_fits_each_layer_on_the_already_edited_earlier_layers(lm, data):
    params = {"variant": "top_remove", "rank_safety": 2}
    art = actsvd.fit(lm, data, params)
    first = Artefact(art.kind, {k: v for k, v in art.tensors.items() if k.startswith("0.")},
                     {**art.meta, "ranks": {k: r for k, r in art.meta["ranks"].items() if k.startswith("0.")}})
    seqs = greedy_responses(lm, data.harmful, data.max_new_tokens)
    name, module = layer_linears(lm, 1)[0]

    def inputs():
        rows = []
        handle = module.register_forward_pre_hook(lambda _m, a: rows.append(a[0][0, start:].clone()))
        with torch.no_grad():
            for ids, start in zip(seqs.ids, seqs.starts):        # plain: one sequence at a time
                lm.model(input_ids=torch.tensor([ids]))
        handle.remove()
        return torch.cat(rows)

    def projector(x):
        _, _, vh = torch.linalg.svd(x @ weight_oi(module).detach().T, full_matrices=False)
        return vh[:2].T @ vh[:2]

    with actsvd.intervention(first, params).applied(lm):
        expected = projector(inputs())
    unedited = projector(inputs())
    u = art.tensors[f"1.{name}.U"]
    assert torch.allclose(u @ u.T, expected, atol=1e-4)
    assert not torch.allclose(u @ u.T, unedited, atol=1e-3)


def test_actsvd_lowrank_svd_agrees_with_exact():
    g = torch.Generator().manual_seed(0)
    spectrum = torch.diag(torch.tensor([50.0, 40, 30, 20, 10]))
    s = torch.randn(300, 5, generator=g) @ spectrum @ torch.randn(5, 200, generator=g)
    s += 0.01 * torch.randn(300, 200, generator=g)
    exact, fast = actsvd.top_directions(s, 4, exact=True), actsvd.top_directions(s, 4, exact=False)
    assert torch.allclose(exact @ exact.T, fast @ fast.T, atol=1e-3)


# --------------------------------------------------------------------------- set difference


def _independent_scores(lm, seqs, importance):
    """key -> score (d_out, d_in), one unpadded sequence at a time; SNIP through transformers' own loss."""
    modules = {f"{layer}.{n}": m for layer in range(lm.n_layers) for n, m in layer_linears(lm, layer)}
    if importance == "wanda":
        sq, state = {k: 0.0 for k in modules}, {}

        def add(key):
            return lambda _m, a: sq.__setitem__(key, sq[key] + a[0][0, state["start"]:].pow(2).sum(0))

        handles = [m.register_forward_pre_hook(add(k)) for k, m in modules.items()]
        with torch.no_grad():
            for ids, start in zip(seqs.ids, seqs.starts):
                state["start"] = start
                lm.model(input_ids=torch.tensor([ids]))
        for h in handles:
            h.remove()
        return {k: weight_oi(m).detach().abs() * sq[k].sqrt()[None, :] for k, m in modules.items()}
    acc = {k: torch.zeros_like(weight_oi(m)) for k, m in modules.items()}
    for ids, start in zip(seqs.ids, seqs.starts):
        lm.model.zero_grad()
        labels = torch.tensor([[-100] * start + ids[start:]])
        lm.model(input_ids=torch.tensor([ids]), labels=labels).loss.backward()
        for k, m in modules.items():
            acc[k] += (m.weight.grad.T if is_conv1d(m) else m.weight.grad).abs()
    lm.model.zero_grad()
    return {k: weight_oi(m).detach().abs() * acc[k] for k, m in modules.items()}


def _top(scores, frac):
    flat = scores.flatten().numpy()
    k = int(frac * flat.size)
    return set(flat.argsort()[::-1][:k].tolist())


def _check_setdiff(lm, data, params):
    art = _roundtrip(setdiff.fit(lm, data, params))
    iv = setdiff.intervention(art, params)
    scores = {name: _independent_scores(lm, greedy_responses(lm, prompts, data.max_new_tokens), params["importance"])
              for name, prompts in (("safety", data.harmful), ("utility", data.harmless))}
    deltas, orig = _deltas(lm, iv)
    total = 0
    for key, dw in deltas.items():
        expected = _top(scores["safety"][key], params["q"]) - _top(scores["utility"][key], params["p"])
        got = set(art.tensors[key].tolist()) if key in art.tensors else set()
        assert got == expected, key
        changed = set(torch.nonzero(dw.flatten()).flatten().tolist())
        assert changed == expected, key                  # exactly those entries, and they become 0
        assert torch.all((orig[key] + dw).flatten()[list(expected)] == 0)
        total += len(expected)
    assert total > 0
    assert iv.parameters_modified(lm) == ParamCount(total, total)


@pytest.mark.parametrize("importance", ["wanda", "snip"])
def test_setdiff_prunes_exactly_the_set_difference(lm, data, importance):
    _check_setdiff(lm, data, {"importance": importance, "p": 0.2, "q": 0.1})


# --------------------------------------------------------------------------- other architectures


def test_gpt2_conv1d_weights(tok):
    """GPT-2 stores Conv1D weights (in, out): the edits are read and written in that layout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_head=4, n_layer=2, n_positions=64, vocab_size=len(tok),
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    gpt = _lm(GPT2LMHeadModel(cfg).eval(), tok, "tiny-gpt2")
    data = FitData(_chat(tok, HARMFUL[:4]), _chat(tok, HARMLESS[:4]), max_new_tokens=4)
    params = {"variant": "top_remove", "rank_safety": 2}
    deltas, orig = _deltas(gpt, actsvd.intervention(actsvd.fit(gpt, data, params), params))
    assert {k.split(".", 1)[1] for k in deltas} == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert all(_rank(d) == 2 for d in deltas.values())
    _check_setdiff(gpt, data, {"importance": "wanda", "p": 0.1, "q": 0.1})


# --------------------------------------------------------------------------- safety neurons


@pytest.fixture(scope="module")
def reference(tok):
    return _lm(tiny_llama(layers=3, heads=4, kv_heads=2, vocab=len(tok), seed=7), tok, "tiny-base")


def _down_inputs(lm, prompts):
    """layer -> input of the MLP's reader map (B, T, d_ff), as the forward saw it (after pre-hooks)."""
    acts = {}
    handles = [safety_neurons.mlp_maps(lm, layer)[1].register_forward_hook(
        lambda _m, a, _o, layer=layer: acts.__setitem__(layer, a[0].clone())) for layer in range(lm.n_layers)]
    from shb.baselines.base import encode_batch

    ids, mask = encode_batch(lm, prompts)
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    for h in handles:
        h.remove()
    return acts, logits


def test_gtac_scores_are_zero_for_identical_models_and_match_the_definition(lm, data, reference):
    twin = _lm(copy.deepcopy(lm.model), lm.tokenizer)
    art = safety_neurons.fit(lm, FitData(data.harmful, [], reference=twin, max_new_tokens=NEW_TOKENS), {})
    assert set(art.tensors) == {"scores.0", "scores.1"}                     # every layer but the last
    assert all(torch.equal(t, torch.zeros_like(t)) for t in art.tensors.values())

    art = safety_neurons.fit(lm, FitData(data.harmful, [], reference=reference, max_new_tokens=NEW_TOKENS), {})
    seqs = greedy_responses(reference, data.harmful, NEW_TOKENS)
    diffs = []
    for ids, start in zip(seqs.ids, seqs.starts):
        per = []
        for model in (lm, reference):
            got = {}
            h = safety_neurons.mlp_maps(model, 1)[1].register_forward_pre_hook(lambda _m, a: got.__setitem__("x", a[0]))
            with torch.no_grad():
                model.model(input_ids=torch.tensor([ids]))
            h.remove()
            per.append(got["x"][0, start:])
        diffs.append(per[0] - per[1])
    expected = torch.cat(diffs).pow(2).mean(0).sqrt()
    assert torch.allclose(art.tensors["scores.1"], expected, atol=1e-5)
    assert art.tensors["scores.1"].min() > 0


def test_dap_with_the_aligned_model_as_its_own_reference_changes_nothing(lm, data):
    from shb.generate import generate

    art = _roundtrip(safety_neurons.fit(lm, FitData(data.harmful, [], reference=lm, max_new_tokens=NEW_TOKENS), {}))
    _, base_logits = _down_inputs(lm, data.harmful)
    base_text = [g.text for g in generate(lm, data.harmful, max_new_tokens=NEW_TOKENS)]
    for ref in (lm, _lm(copy.deepcopy(lm.model), lm.tokenizer)):       # the same object, and a copy
        iv = safety_neurons.intervention(art, {"neurons": 0.25}, reference=ref)
        assert sum(len(i) for i in iv.neurons.values()) == 32            # 25% of 2 x 64 candidates
        with iv.applied(lm):
            _, logits = _down_inputs(lm, data.harmful)
            text = [g.text for g in generate(lm, data.harmful, max_new_tokens=NEW_TOKENS)]
        assert torch.equal(logits, base_logits)
        assert text == base_text


def test_dap_patches_exactly_the_chosen_neurons_with_the_reference_activations(lm, data, reference):
    chosen = [3, 17, 40, 41, 63]
    scores = torch.zeros(64)
    scores[chosen] = 1.0
    art = Artefact(safety_neurons.KIND, {"scores.0": torch.zeros(64), "scores.1": scores}, {})
    iv = safety_neurons.intervention(art, {"neurons": 5}, reference=reference)
    assert {k: v.tolist() for k, v in iv.neurons.items()} == {1: chosen}
    hidden = lm.layout.hidden_size
    assert iv.parameters_modified(lm) == ParamCount(5 * 3 * hidden, 5)  # gate row, up row, down column; 5 chosen

    base, _ = _down_inputs(lm, data.harmful)
    ref_acts, _ = _down_inputs(reference, data.harmful)
    before = _weights(lm)
    with iv.applied(lm):
        patched, _ = _down_inputs(lm, data.harmful)
    _assert_restored(lm, before)
    assert torch.equal(patched[0], base[0])
    others = [i for i in range(64) if i not in chosen]
    assert torch.equal(patched[1][..., others], base[1][..., others])
    assert torch.equal(patched[1][..., chosen], ref_acts[1][..., chosen])
    assert not torch.equal(patched[1][..., chosen], base[1][..., chosen])


def test_dap_generation_with_cache_matches_the_plain_loop(lm, data, reference):
    """The reference's KV cache follows the aligned model's: cached generation = no-cache generation."""
    from shb.generate import generate

    art = safety_neurons.fit(lm, FitData(data.harmful, [], reference=reference, max_new_tokens=NEW_TOKENS), {})
    iv = safety_neurons.intervention(art, {"neurons": 0.3}, reference=reference)
    base = [g.text for g in generate(lm, data.harmful, max_new_tokens=NEW_TOKENS)]
    with iv.applied(lm):
        cached = [g.text for g in generate(lm, data.harmful, max_new_tokens=NEW_TOKENS, batch_size=4)]
        plain = [g.text for g in generate(lm, data.harmful, max_new_tokens=NEW_TOKENS, strategy="reference")]
    assert cached == plain
    assert cached != base


def test_safety_neurons_needs_a_reference(lm, data):
    from shb.errors import ShbError, UsageError

    with pytest.raises(UsageError, match="reference"):
        safety_neurons.fit(lm, data, {})
    art = Artefact(safety_neurons.KIND, {"scores.0": torch.ones(64), "scores.1": torch.ones(64)}, {})
    with pytest.raises(ShbError, match="reference"), safety_neurons.intervention(art, {"neurons": 2}).applied(lm):
        pass
