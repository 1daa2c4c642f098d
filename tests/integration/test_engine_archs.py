"""The engine against the paper's loop on the nine original architectures, eager and sdpa
attention (issue 9, part 7): tiny random models (2 layers, 4 heads, GQA where the architecture has
it, sliding windows shorter than the prompts on Mistral and Gemma-2), prompts of different lengths so
that left padding is exercised, every single-head ablation and a two-layer head set."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from shb.engine import Engine
from shb.models.layout import detect
from tests.integration.test_ablation_models import ARCHS, NO_SDPA, VOCAB, tiny_model


class IdTokenizer:
    """Prompts are space-separated token ids (ids >= 3: no pad/bos/eos)."""

    pad_token_id = 0
    bos_token = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(t) for t in text.split()]}


def _prompts():
    g = torch.Generator().manual_seed(7)
    return [" ".join(map(str, torch.randint(3, VOCAB, (n,), generator=g).tolist())) for n in (7, 4, 9, 5, 6)]


PROMPTS = _prompts()
# The nine architectures of tests/integration/test_ablation_models.py (the newer families are checked
# against the naive loop in tests/integration/test_archs.py).
FAST_PATH_ARCHS = ("gemma", "gemma2", "gpt2", "gpt_neox", "llama", "mistral", "opt", "phi3", "qwen2")
CASES = [(arch, attn) for arch in FAST_PATH_ARCHS for attn in ("eager", "sdpa")
         if not (attn == "sdpa" and arch in NO_SDPA)]  # transformers has no sdpa Gemma-2 (soft-capping)


def test_every_architecture_is_covered():
    from shb.engine import fast_path_unsupported

    assert set(FAST_PATH_ARCHS) <= set(ARCHS)
    for arch in FAST_PATH_ARCHS:  # all nine take the fast path (none falls back to the naive loop)
        assert fast_path_unsupported(tiny_model(arch, "eager")) is None, arch


@pytest.mark.parametrize("arch,attn", CASES, ids=[f"{a}-{i}" for a, i in CASES])
def test_engine_equals_naive(arch, attn):
    model = tiny_model(arch, attn)
    assert model.config._attn_implementation == attn
    lm = SimpleNamespace(model=model, tokenizer=IdTokenizer(), layout=detect(model))
    n_layers, n_heads = lm.layout.n_layers, lm.layout.n_heads
    sets = [[(layer, h)] for layer in range(n_layers) for h in range(n_heads)] + [[(0, 1), (1, 2)]]
    fast = Engine(lm, PROMPTS, batch_size=7)  # groups of 5 prompts; 7 rows: one head set per pass
    slow = Engine(lm, PROMPTS, strategy="naive")
    assert fast.strategy == "engine", arch
    kl_a, h_a = fast.evaluate(sets)
    kl_b, h_b = slow.evaluate(sets)
    assert float(kl_b.min()) > 0  # every ablation moves every prompt: not a comparison of zeros
    torch.testing.assert_close(kl_a, kl_b, rtol=1e-4, atol=1e-4 * float(kl_b.abs().max()))
    torch.testing.assert_close(h_a, h_b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.base_log_probs, slow.base_log_probs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", FAST_PATH_ARCHS)
def test_float32_scoring_head_matches_the_bf16_model(arch):
    # Under bf16 the scored position goes through a float32 copy of the final norm, output projection, LM
    # head and soft-capping (shb.scorers.head): it must give the model's own logits, to bf16 rounding.
    from shb.engine import _module_input
    from shb.scorers.head import ScoringHead

    model = tiny_model(arch).to(torch.bfloat16)
    head = ScoringHead(model)
    assert head.widened and head.dtype == torch.float32
    ids = torch.tensor([[int(t) for t in PROMPTS[2].split()]])
    with torch.no_grad(), _module_input(head.first) as entering:
        own = model(input_ids=ids).logits[0, -1].float()
    logits, _ = head(entering.hidden[:, -1])
    torch.testing.assert_close(logits[0], own, rtol=3e-2, atol=3e-2 * float(own.abs().max()))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # the model itself is left as it was
