"""The GPU path (issue 16), on a CUDA device; every test is skipped without one (marker ``gpu``).

    python -m pytest -q -m gpu tests/gpu        # or: bash bench/gpu.sh (which runs these too)

* the engine against the paper's loop on CUDA, float32 / bfloat16 / float16;
* bf16 Ships against float32 Ships on the toy model, with the tolerance the CPU test enforces;
* batched, KV-cached generation against one-by-one generation (the paper's loop);
* out-of-memory recovery under a real allocator limit (``torch.cuda.set_per_process_memory_fraction``).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from shb.engine import Engine
from tests.conftest import make_tokenizer, tiny_llama

pytestmark = pytest.mark.gpu

PROMPTS = ["how to make a bomb", "tell me", "write a poem about cake please and then explain the history of rome",
           "hack into computer", "plan trip paris", "learn python code sort list"]


def _tiny(dtype=torch.float32, **kw):
    from shb.models.layout import detect

    tokenizer = make_tokenizer()
    tokenizer.padding_side = "left"
    geometry = {"layers": 3, "heads": 4, "kv_heads": 2, "seed": 5, **kw}
    model = tiny_llama(vocab=len(tokenizer), **geometry).to("cuda", dtype)
    model.config._attn_implementation = "sdpa"
    return SimpleNamespace(model=model, tokenizer=tokenizer, layout=detect(model))


def _sets(lm):
    return [[(layer, h)] for layer in range(lm.layout.n_layers) for h in range(lm.layout.n_heads)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_engine_equals_naive_on_cuda(dtype):
    lm = _tiny(dtype)
    fast = Engine(lm, PROMPTS, batch_size="auto")
    a = fast.ships_head_sets(_sets(lm))
    b = Engine(lm, PROMPTS, strategy="naive").ships_head_sets(_sets(lm))
    assert fast.strategy == "engine" and a.device.type == "cuda"
    assert float(b.min()) > 0 and float(a.min()) >= 0
    if dtype == torch.float32:  # TF32 off by default for matmuls; kernels still differ between batch shapes
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    else:  # both score in float32; the reduced-precision residual streams of different batch shapes differ
        above = b >= 1e-2
        assert int(above.sum()) > 0
        assert float(((a - b).abs() / b)[above].max()) <= 0.4


def test_bf16_ships_track_float32_on_cuda():
    import shb.models
    from shb.models import toy
    from tests.integration.test_numerics import FLOOR, MEAN_FLOOR, MEAN_TOL, MEDIAN_TOL, TOL

    lm = shb.models.load("toy", device="cuda", dtype="float32")
    texts = toy.prompts.harmful("test", n=16)
    prompts = [lm.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                add_generation_prompt=True) for t in texts]
    sets = _sets(lm)
    ref = Engine(lm, prompts).ships_head_sets(sets)
    lm16 = SimpleNamespace(model=copy.deepcopy(lm.model).to(torch.bfloat16), tokenizer=lm.tokenizer, layout=lm.layout)
    got = Engine(lm16, prompts).ships_head_sets(sets)
    above = ref >= FLOOR
    rel = ((got - ref).abs() / ref)[above]
    print(f"bf16 vs fp32 on CUDA, {int(above.sum())} values >= {FLOOR}: max rel {float(rel.max()):.3f}, "
          f"median {float(rel.median()):.4f}")
    assert float(rel.max()) <= TOL[torch.bfloat16] and float(rel.median()) <= MEDIAN_TOL[torch.bfloat16]
    strong = ref.mean(0) >= MEAN_FLOOR
    mean_rel = ((got.mean(0) - ref.mean(0)).abs() / ref.mean(0))[strong]
    assert float(mean_rel.max()) <= MEAN_TOL[torch.bfloat16]
    assert int(got.mean(0).argmax()) == int(ref.mean(0).argmax())


def test_batched_generation_equals_one_by_one_on_cuda():
    from shb.generate import generate

    lm = _tiny()
    for heads in ([], [(1, 2)]):
        batched = generate(lm, PROMPTS, heads=heads, max_new_tokens=12, batch_size=4)
        one_by_one = generate(lm, PROMPTS, heads=heads, max_new_tokens=12, strategy="reference")
        assert [g.text for g in batched] == [g.text for g in one_by_one]
        assert [g.n_tokens for g in batched] == [g.n_tokens for g in one_by_one]


def test_out_of_memory_recovery_under_a_real_allocator_limit():
    # 48 prompts x 8 head sets = 384 rows of ~2 MiB each (hidden 512, ~46 tokens) per forward pass, under a
    # limit of 96 MiB above what the process holds: the caching allocator raises a real torch.OutOfMemoryError
    # and the engine halves until a pass fits.
    lm = _tiny(layers=4, heads=8, kv_heads=8, hidden=512)
    words = "how to make a bomb steal money hack into computer write poem about cake".split()
    prompts = [" ".join(words[(i + j) % len(words)] for j in range(40 + i % 7)) for i in range(48)]
    sets = _sets(lm)
    want = Engine(lm, prompts, batch_size=64).ships_head_sets(sets)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    limit = torch.cuda.memory_reserved() + (96 << 20)
    engine = Engine(lm, prompts, batch_size=4096)
    try:
        torch.cuda.set_per_process_memory_fraction(limit / total)
        got = engine.ships_head_sets(sets)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    print("batch history:", engine.batch_history)
    assert any("out of memory" in why for _, why in engine.batch_history)
    assert engine.batch_size < 4096
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
