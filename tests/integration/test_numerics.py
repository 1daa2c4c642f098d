"""Ships under bf16/fp16 against float32, on the toy model (issue 9, part 3).

Under bf16 the final norm, LM head and log-softmax of the scored position run in float32
(shb.scorers.head); what remains is the rounding of the bf16 residual stream itself. Measured on the
toy model (16 held-out harmful prompts, chat format, 32 heads; tests below):

* per (prompt, head), fp32 Ships >= 0.01 nats (38 of 512 values): bf16 max relative error 0.30,
  median 0.032; fp16 max 0.035, median 0.002 (its 11-bit mantissa).
* head means over prompts (what ranks heads), fp32 mean >= 1e-3 nats (10 of 32 heads): bf16 max 0.22,
  median 0.036; fp16 max 0.012. The top head is the same in all three dtypes.
On a second CPU (Xeon with AMX-BF16 and AVX512-FP16, whose reduced-precision kernels accumulate
differently) the same test measured bf16 max 0.41, median 0.025, head-mean max 0.34; fp16 max 0.032,
median 0.003, head-mean max 0.022 (11 of 32 heads above the floor). The error is the format's
rounding, so the tolerances are stated in units of each format's machine epsilon (bf16 2^-7, fp16
2^-10): the worst value measured on either CPU is 53 eps (bf16 max), the worst head mean 43 eps and
the worst median 6.4 eps; the bounds leave at least 20% headroom over those. The floor is where bf16 stops being
usable: at 1e-3 nats per value the bf16 max error passes 100% (on 32 prompts: 1.08; 2.5 at 1e-4).
Below 0.01 nats a bf16 forward pass moves single values by more than half: the long tail of the
paper's Fig. 13 needs float32 (what suites/paper.json runs).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from shb.engine import Engine
from shb.scorers.head import ScoringHead

FLOOR = 1e-2  # nats, per (prompt, head)
MEAN_FLOOR = 1e-3  # nats, head means over prompts
# Relative-error bounds in units of the format's epsilon (see the docstring for what was measured).
TOL = {dt: 64 * torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16)}  # max above FLOOR
MEDIAN_TOL = {dt: 8 * torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16)}
MEAN_TOL = {dt: 52 * torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16)}


@pytest.fixture(scope="module")
def toy():
    import shb.models
    from shb.models import toy

    lm = shb.models.load("toy")
    texts = toy.prompts.harmful("test", n=16)
    prompts = [lm.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                add_generation_prompt=True) for t in texts]
    sets = [[(layer, h)] for layer in range(lm.n_layers) for h in range(lm.n_heads)]
    ref = Engine(lm, prompts).ships_head_sets(sets)  # (P, 32) float32 forward passes
    return SimpleNamespace(lm=lm, prompts=prompts, sets=sets, ref=ref)


def _reduced(lm, dtype):
    return SimpleNamespace(model=copy.deepcopy(lm.model).to(dtype), tokenizer=lm.tokenizer, layout=lm.layout)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_reduced_precision_ships_track_float32(toy, dtype):
    got = Engine(_reduced(toy.lm, dtype), toy.prompts).ships_head_sets(toy.sets)
    assert got.dtype == torch.float64
    above = toy.ref >= FLOOR
    assert int(above.sum()) >= 30  # the comparison covers real heads, not a handful
    rel = ((got - toy.ref).abs() / toy.ref)[above]
    assert float(rel.max()) <= TOL[dtype], f"max relative error {float(rel.max()):.3f} above {FLOOR} nats"
    assert float(rel.median()) <= MEDIAN_TOL[dtype]
    mean_ref, mean_got = toy.ref.mean(0), got.mean(0)
    strong = mean_ref >= MEAN_FLOOR
    assert int(strong.sum()) >= 5
    mean_rel = ((mean_got - mean_ref).abs() / mean_ref)[strong]
    assert float(mean_rel.max()) <= MEAN_TOL[dtype]
    assert int(mean_got.argmax()) == int(mean_ref.argmax())  # the top Ships head survives
    assert float(got.min()) >= 0.0


def test_scoring_head_runs_in_float32_under_bf16(toy):
    # The head itself is exact: on the same bf16 hidden states it gives what the float32 model's norm and
    # LM head give on them; the model's own bf16 head is off by its rounding (the error this removes).
    lm16 = _reduced(toy.lm, torch.bfloat16)
    head = ScoringHead(lm16.model)
    assert head.widened and head.dtype == torch.float32 and head.extra_bytes > 0
    h = torch.randn(8, toy.lm.layout.hidden_size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    logits, hidden = head(h)
    assert logits.dtype == torch.float32 and hidden.dtype == torch.float32
    m = lm16.model  # the reference: RMS norm and LM head written out in float64 on the bf16 weights
    x = h.double()
    want_hidden = m.model.norm.weight.double() * x / (x.pow(2).mean(-1, keepdim=True) + m.config.rms_norm_eps).sqrt()
    want = want_hidden @ m.lm_head.weight.double().T
    with torch.no_grad():
        own = m.lm_head(m.model.norm(h)).double()
    logits, hidden = logits.double(), hidden.double()
    torch.testing.assert_close(logits, want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(hidden, want_hidden, rtol=1e-6, atol=1e-6)
    assert float((own - want).abs().max()) > 100 * float((logits - want).abs().max())
    # the naive loop scores bf16 with the same float32 head; a float32 model with its own modules
    assert Engine(lm16, toy.prompts[:1], strategy="naive")._backend.head is not None
    assert Engine(toy.lm, toy.prompts[:1], strategy="naive")._backend.head is None
