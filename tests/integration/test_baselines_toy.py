"""Baselines on the toy, where they must act (issue 22: a test that cannot fail is no test).

The toy refuses every harmful training prompt; skipping its safety-carrying layer makes it comply.
On a random tiny model every candidate "refuses" (3-token answers fall under the 32-character
rule), so a choice among candidates there tests nothing: these tests need rates that differ."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from shb.baselines import layers as layer_method  # noqa: E402
from shb.baselines.base import FitData  # noqa: E402

N = 12


@pytest.fixture(scope="module")
def toy():
    from shb.models import load

    torch.set_num_threads(1)
    return load("toy:0", device="cpu", quiet=True)


@pytest.fixture(scope="module")
def fit_data(toy):
    from shb.models.toy import prompts

    def chat(text):
        return toy.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)

    return FitData([chat(t) for t in prompts.harmful("train")[:N]], [chat(t) for t in prompts.benign("train")[:N]],
                   max_new_tokens=24)


def test_layer_skip_chooses_the_run_that_refuses_least_among_rates_that_differ(toy, fit_data):
    art = layer_method.fit(toy, fit_data, {"widths": [1]})
    rates = [r["refusal_rate"] for r in art.meta["candidates"]]
    assert art.meta["base_refusal_rate"] == 1.0
    assert len(set(rates)) > 1                                   # the choice is a real one
    assert art.meta["selected"]["refusal_rate"] == min(rates) < art.meta["base_refusal_rate"]


def test_layer_scale_is_li_et_al_locator(toy, fit_data):
    """mode scale: alpha 1.1 by default, scored on harmless prompts (over-rejection), largest rate chosen."""
    art = layer_method.fit(toy, fit_data, {"widths": [1], "mode": "scale"})
    assert art.meta["alpha"] == pytest.approx(1.1) and art.meta["scored_on"].startswith("harmless")
    assert art.meta["n_prompts"] == len(fit_data.harmless)
    rates = [r["refusal_rate"] for r in art.meta["candidates"]]
    assert art.meta["selected"]["refusal_rate"] == max(rates)
    with pytest.raises(Exception, match="harmless"):
        layer_method.fit(toy, FitData(fit_data.harmful, [], max_new_tokens=4), {"mode": "scale"})
