"""The fast engine against the paper's loop (strategy="naive") on tiny random Llamas (MHA and GQA),
with prompts of different lengths so that left padding is exercised."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from shb.engine import Engine
from shb.scorers.subspace import subspace_angle_scores
from tests.conftest import make_tokenizer, tiny_llama

PROMPTS = [
    "how to make a bomb",
    "tell me",
    "write a poem about cake please and then explain the history of rome",
    "hack into computer",
    "plan trip paris",
    "learn python code sort list",
]
N_LAYERS, N_HEADS = 3, 4


def _lm(kv_heads: int, dtype=torch.float32, attn="sdpa"):
    from shb.models.layout import detect

    tokenizer = make_tokenizer()
    model = tiny_llama(layers=N_LAYERS, heads=N_HEADS, kv_heads=kv_heads, vocab=len(tokenizer), seed=kv_heads)
    model.config._attn_implementation = attn
    model = model.to(dtype)
    return SimpleNamespace(model=model, tokenizer=tokenizer, layout=detect(model))


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def lm(request):
    return _lm(request.param)


def _close(fast, slow, rtol=1e-5):
    """Element-wise within rtol, with an absolute floor of rtol x the largest score: fp32 logits of
    differently shaped (batched, padded) matmuls differ by ~1e-6, which is most of a KL of 1e-7."""
    torch.testing.assert_close(fast, slow, rtol=rtol, atol=rtol * float(slow.abs().max()))


def test_prompts_really_have_different_lengths(lm):
    lengths = {len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) >= 4


def test_ships_engine_equals_naive(lm):
    fast = Engine(lm, PROMPTS, batch_size=7)  # 7 rows: groups of 6 prompts, one head set per pass
    slow = Engine(lm, PROMPTS, strategy="naive")
    assert fast.strategy == "engine"
    for layer in range(N_LAYERS):
        a, b = fast.ships_layer(layer), slow.ships_layer(layer)
        assert a.shape == (len(PROMPTS), N_HEADS)
        assert float(b.min()) > 0  # a head ablation moves every prompt: the comparison is not 0 == 0
        _close(a, b)


def test_ships_dataset_engine_equals_naive(lm):
    sets = [[(layer, h)] for layer in range(N_LAYERS) for h in range(N_HEADS)]
    fast = Engine(lm, PROMPTS, batch_size="auto")
    slow = Engine(lm, PROMPTS, strategy="naive")
    ha, hb = fast.hidden_head_sets(sets), slow.hidden_head_sets(sets)
    assert ha.shape == (len(sets), len(PROMPTS), lm.layout.hidden_size)
    torch.testing.assert_close(ha, hb, rtol=1e-5, atol=1e-5)
    sa = subspace_angle_scores(fast.base_hidden, ha)
    sb = subspace_angle_scores(slow.base_hidden, hb)
    assert float(sb.max()) > 0.01
    _close(sa, sb, rtol=1e-4)  # angles of ~0.1 degree from fp32 states: a few 1e-6 degrees of noise


def test_engine_is_exact_in_float64():
    # In float64 the batched, prefix-cached path and the batch-1 loop agree to the last bits:
    # whatever differs between them in float32 is rounding, not semantics.
    lm64 = _lm(2, dtype=torch.float64)
    sets = [[(1, 2)], [(0, 1), (2, 3)], [(2, 0), (2, 1), (2, 2)], [(0, 0)]]
    fast = Engine(lm64, PROMPTS, batch_size=5)
    slow = Engine(lm64, PROMPTS, strategy="naive")
    kl_a, h_a = fast.evaluate(sets)
    kl_b, h_b = slow.evaluate(sets)
    torch.testing.assert_close(kl_a, kl_b, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(h_a, h_b, rtol=1e-10, atol=1e-12)


def test_multi_layer_head_sets_equal_naive(lm):
    sets = [[(0, 1), (2, 3)], [(1, 0), (1, 1), (2, 2)], [(2, 3)], [(0, 0), (0, 1), (0, 2), (0, 3)]]
    a = Engine(lm, PROMPTS, batch_size=9).ships_head_sets(sets)
    b = Engine(lm, PROMPTS, strategy="naive").ships_head_sets(sets)
    _close(a, b)


@pytest.mark.parametrize("kind", ["undifferentiated", "mean"])
def test_shared_heads_start_each_set_at_its_own_layer_and_equal_naive(lm, kind):
    # A Sahara step: G = {(0, 1), (2, 0)} is in every set; with shared=G the engine runs G once and starts
    # each set at its own head's layer (1 or 2) instead of layer 0. In float64 that must agree with the
    # paper's loop to the last bits, and in float32 with the unshared path to rounding.
    shared = [(0, 1), (2, 0)]
    sets = [[*shared, (layer, h)] for layer in range(N_LAYERS) for h in range(N_HEADS) if (layer, h) not in shared]
    sets.append(list(shared))  # G alone: no own head, runs from G's lowest layer as before
    lm64 = _lm(2, dtype=torch.float64)
    fast = Engine(lm64, PROMPTS, batch_size=5, kind=kind)
    kl_a, h_a = fast.evaluate(sets, shared=shared)
    kl_b, h_b = Engine(lm64, PROMPTS, strategy="naive", kind=kind).evaluate(sets, shared=shared)
    assert float(kl_b.min()) > 0
    torch.testing.assert_close(kl_a, kl_b, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(h_a, h_b, rtol=1e-10, atol=1e-12)
    # The cache is G's: a different G after it must not reuse it.
    other = [(1, 3)]
    sets2 = [[*other, (2, h)] for h in range(N_HEADS)]
    torch.testing.assert_close(fast.hidden_head_sets(sets2, shared=other),
                               Engine(lm64, PROMPTS, strategy="naive", kind=kind).hidden_head_sets(sets2),
                               rtol=1e-10, atol=1e-12)
    a = Engine(lm, PROMPTS, batch_size=7, kind=kind).hidden_head_sets(sets, shared=shared)
    b = Engine(lm, PROMPTS, batch_size=7, kind=kind).hidden_head_sets(sets)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_shared_heads_run_fewer_layers(lm):
    # What the cache saves, counted: calls of decoder layer 0 with and without shared=G (G in layer 0,
    # every set's own head in the last layer). Without: every pass starts at layer 0; with: only G's pass.
    calls = {"n": 0}
    handle = lm.layout.layers(lm.model)[0].register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        sets = [[(0, 0), (N_LAYERS - 1, h)] for h in range(N_HEADS)]
        counts = []
        for shared in ([], [(0, 0)]):
            e = Engine(lm, PROMPTS, batch_size=len(PROMPTS))  # one set per pass
            e.base_hidden  # the base pass is common to both
            calls["n"] = 0
            e.hidden_head_sets(sets, shared=shared)
            counts.append(calls["n"])
    finally:
        handle.remove()
    assert counts == [len(sets), 1]


def test_shared_heads_must_be_in_every_set(lm):
    with pytest.raises(ValueError, match="lacks heads of shared"):
        Engine(lm, PROMPTS).hidden_head_sets([[(0, 0), (1, 1)], [(1, 2)]], shared=[(0, 0)])


@pytest.mark.parametrize("kind,epsilon,site", [("scaling", 0.0, None), ("mean", 1e-5, "q"), ("zero", 1e-5, None)])
def test_other_ablation_kinds_equal_naive(lm, kind, epsilon, site):
    kw = {"kind": kind, "epsilon": epsilon, "site": site}
    a = Engine(lm, PROMPTS, **kw).ships_layer(1)
    b = Engine(lm, PROMPTS, strategy="naive", **kw).ships_layer(1)
    _close(a, b)


def test_empty_set_scores_zero_and_returns_base(lm):
    for strategy in ("engine", "naive"):
        e = Engine(lm, PROMPTS, strategy=strategy)
        kl, hidden = e.evaluate([[], [(1, 1)]])
        assert torch.equal(kl[:, 0], torch.zeros(len(PROMPTS), dtype=kl.dtype))
        assert torch.equal(hidden[0], e.base_hidden)
        assert float(kl[:, 1].min()) > 0


def test_kl_is_non_negative_and_batch_size_does_not_matter(lm):
    sets = [[(layer, h)] for layer in range(N_LAYERS) for h in range(N_HEADS)]
    results = [Engine(lm, PROMPTS, batch_size=bs).ships_head_sets(sets) for bs in (1, 4, 13, "auto")]
    for r in results:
        assert float(r.min()) >= -1e-12  # float64 KL of two distributions: negative only by rounding
    for r in results[1:]:
        _close(r, results[0])


def test_out_of_memory_halves_the_batch_and_keeps_the_numbers(lm, monkeypatch):
    e = Engine(lm, PROMPTS, batch_size=24)
    reference = Engine(lm, PROMPTS, batch_size=24).ships_layer(1)
    backend = e._backend
    backend.base()
    real = backend._forward

    def forward(ids, mask, positions):
        if ids.shape[0] > 6:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB (simulated)")
        return real(ids, mask, positions)

    monkeypatch.setattr(backend, "_forward", forward)
    got = e.ships_layer(1)
    assert backend.batch_size <= 6
    _close(got, reference)  # smaller batches round differently, nothing more
    _assert_model_untouched(lm)


def test_model_is_left_as_it_was(lm):
    layer_types = [type(layer) for layer in lm.layout.layers(lm.model)]
    Engine(lm, PROMPTS, batch_size=5).ships_head_sets([[(2, 1)], [(1, 0), (2, 2)]])
    assert [type(layer) for layer in lm.layout.layers(lm.model)] == layer_types
    _assert_model_untouched(lm)


def _assert_model_untouched(lm):
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__


def test_progress_counts_every_evaluation(lm):
    seen = []
    e = Engine(lm, PROMPTS, batch_size=10, progress=seen.append)
    e.ships_head_sets([[(0, 1)], [(2, 2)], [], [(1, 3), (2, 0)]])
    assert sum(seen) == len(PROMPTS) * 3  # the empty set needs no forward pass


def test_unsupported_fast_path_falls_back_with_a_warning(lm, monkeypatch):
    import shb.engine

    monkeypatch.setattr(shb.engine, "fast_path_unsupported", lambda model: "no attention layout (test)")
    with pytest.warns(RuntimeWarning, match="falling back to the naive loop"):
        e = Engine(lm, PROMPTS[:2])
    assert e.strategy == "naive"


def test_bad_input_is_refused(lm):
    e = Engine(lm, PROMPTS[:2])
    with pytest.raises(ValueError, match="outside the model"):
        e.ships_head_sets([[(N_LAYERS, 0)]])
    with pytest.raises(ValueError, match="not a \\(layer, head\\) pair"):
        e.ships_head_sets([["2-1"]])
    with pytest.raises(ValueError, match="layer must be an integer"):
        e.ships_layer(-1)
    with pytest.raises(ValueError, match="unknown strategy"):
        Engine(lm, PROMPTS, strategy="fast")
    with pytest.raises(ValueError, match="non-empty"):
        Engine(lm, [])
    with pytest.raises(ValueError, match="batch_size"):
        Engine(lm, PROMPTS, batch_size=0)


def test_bfloat16_engine_tracks_float32():
    # bf16 forward passes, KL accumulated in float64: the ranking of heads survives.
    lm = _lm(2)
    ref = Engine(lm, PROMPTS).ships_layer(2).mean(0)
    lm16 = _lm(2, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast path must not fall back
        got = Engine(lm16, PROMPTS).ships_layer(2).mean(0)
    assert got.dtype == torch.float64
    assert torch.argmax(got) == torch.argmax(ref)
    torch.testing.assert_close(got, ref, rtol=0.2, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_engine_tracks_naive(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    lm = _lm(2)
    lm.model.to("cuda", dtype)
    fast = Engine(lm, PROMPTS, batch_size="auto")
    a = fast.ships_head_sets([[(layer, h)] for layer in range(N_LAYERS) for h in range(N_HEADS)])
    b = Engine(lm, PROMPTS, strategy="naive").ships_head_sets([[(l, h)] for l in range(N_LAYERS) for h in range(N_HEADS)])
    assert fast.strategy == "engine" and a.device.type == "cuda"
    if dtype == torch.float32:
        _close(a, b, rtol=1e-4)  # TF32 / kernel choice differ between batch shapes
    else:
        torch.testing.assert_close(a, b, rtol=0.1, atol=0.05 * float(b.abs().max()))
    assert float(a.min()) >= -1e-12


@pytest.mark.parametrize("batch_size", [3, "auto"])
def test_ships_pairs_equal_per_prompt_engines_and_naive(lm, batch_size):
    """(prompt, head set) pairs from one engine equal a fresh engine per prompt (what screening used
    to build) and the paper's loop; pairs repeat prompts, mix start layers and include the empty set."""
    rng = __import__("random").Random(3)
    heads = [(layer, h) for layer in range(N_LAYERS) for h in range(N_HEADS)]
    pairs = [(p, rng.sample(heads, rng.randint(1, 2))) for p in range(len(PROMPTS)) for _ in range(3)]
    pairs.append((2, []))
    rng.shuffle(pairs)
    got = Engine(lm, PROMPTS, batch_size=batch_size).ships_pairs(pairs)
    per_prompt = torch.stack([Engine(lm, [PROMPTS[p]]).ships_head_sets([hs])[0, 0] for p, hs in pairs])
    naive = Engine(lm, PROMPTS, strategy="naive").ships_pairs(pairs)
    assert got.shape == (len(pairs),)
    assert float(got[[i for i, (_, hs) in enumerate(pairs) if not hs]].abs().max()) == 0.0
    _close(got, per_prompt)
    _close(got, naive)
    with pytest.raises(ValueError, match="prompt index"):
        Engine(lm, PROMPTS).ships_pairs([(len(PROMPTS), [(0, 0)])])
