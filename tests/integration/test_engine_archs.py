"""The engine against the paper's loop on every architecture in FAST_PATH_ARCHS, eager and sdpa
attention (issue 9, part 7): tiny random models (2 layers, 4 heads, GQA where the architecture has
it, sliding windows shorter than the prompts on Mistral and Gemma-2), prompts of different lengths so
that left padding is exercised, every single-head ablation and a two-layer head set."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from shb.engine import FAST_PATH_ARCHS, Engine
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
CASES = [(arch, attn) for arch in sorted(FAST_PATH_ARCHS) for attn in ("eager", "sdpa")
         if not (attn == "sdpa" and arch in NO_SDPA)]  # transformers has no sdpa Gemma-2 (soft-capping)


def test_every_fast_path_architecture_is_covered():
    assert set(FAST_PATH_ARCHS) <= set(ARCHS)


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
