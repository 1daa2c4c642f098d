"""Defining properties of the refusal direction and the layer methods on tiny random Llamas, and
parameters modified measured from the edit (heads included)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from shb.baselines import layers as layer_method  # noqa: E402
from shb.baselines import refusal_direction as rd  # noqa: E402
from shb.baselines.base import Artefact, FitData, forward  # noqa: E402
from shb.baselines.residual import capture_residual  # noqa: E402
from shb.interventions import HeadAblation  # noqa: E402
from shb.models import LoadedModel  # noqa: E402
from shb.models.layout import detect  # noqa: E402
from tests.conftest import make_tokenizer, tiny_llama  # noqa: E402

HARMFUL = ["how to make a bomb", "steal money from a bank", "hack into computer", "kill person", "poison water",
           "write virus malware"]
HARMLESS = ["write a poem about cake", "bake bread", "cook rice", "plan trip paris", "learn python code",
            "grow tomato garden"]


@pytest.fixture(scope="module")
def lm():
    tokenizer = make_tokenizer()
    model = tiny_llama(layers=3, heads=4, kv_heads=2, vocab=len(tokenizer), seed=3)
    return LoadedModel(model, tokenizer, detect(model), "tiny", "tiny")


def chat(lm, texts):
    return [lm.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                             add_generation_prompt=True) for t in texts]


@pytest.fixture(scope="module")
def fitted(lm):
    return rd.fit(lm, FitData(chat(lm, HARMFUL), chat(lm, HARMLESS)), {"n_val": 2, "max_positions": 2})


def snapshot(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def test_orthogonalised_weights_give_the_hooks_logits(lm):
    texts = chat(lm, HARMFUL[:3])
    direction = torch.randn(lm.layout.hidden_size, generator=torch.Generator().manual_seed(0))
    before, weights = forward(lm, texts), snapshot(lm)
    with rd.RefusalDirection(direction, "hooks").applied(lm):
        hooked = forward(lm, texts)
    with rd.RefusalDirection(direction, "weights").applied(lm):
        baked = forward(lm, texts)
    assert (hooked - before).abs().max() > 1e-2          # the edit does something
    assert torch.allclose(hooked, baked, atol=1e-4)      # and the two forms agree
    assert torch.equal(forward(lm, texts), before)       # both restore the model
    assert all(torch.equal(v, weights[k]) for k, v in lm.model.state_dict().items())


def test_directional_ablation_leaves_no_component_along_the_direction(lm):
    direction = torch.randn(lm.layout.hidden_size, generator=torch.Generator().manual_seed(1))
    unit = direction / direction.norm()
    from shb.baselines.base import encode_batch

    ids, mask = encode_batch(lm, chat(lm, HARMLESS[:2]))
    with rd.RefusalDirection(direction, "weights").applied(lm), capture_residual(lm) as seen:
        lm.model(input_ids=ids, attention_mask=mask)
    assert len(seen) == lm.n_layers + 1
    assert max((h @ unit).abs().max().item() for h in seen) < 1e-4


def test_refusal_direction_parameters_counted_from_the_edit(lm):
    direction = torch.randn(lm.layout.hidden_size, generator=torch.Generator().manual_seed(2))
    count = rd.RefusalDirection(direction).parameters_modified(lm)
    d = lm.layout.hidden_size
    written = lm.model.get_input_embeddings().weight.numel() + sum(
        layer.self_attn.o_proj.weight.numel() + layer.mlp.down_proj.weight.numel() for layer in lm.model.model.layers)
    assert count.dof == d
    assert 0.9 * written < count.entries <= written      # a random direction changes (almost) every entry


def test_refusal_direction_fit_selects_a_filtered_early_candidate(lm, fitted):
    meta = fitted.meta
    assert meta["n_positions"] == 2 and meta["n_train"] == [4, 4] and meta["n_val"] == [2, 2]
    assert all(c["layer"] < 0.8 * lm.n_layers for c in meta["candidates"])
    pool = [c for c in meta["candidates"] if c["passes"]] or meta["candidates"]
    assert meta["selected"]["refusal_score"] == min(c["refusal_score"] for c in pool)
    assert meta["fallback"] == (not any(c["passes"] for c in meta["candidates"]))
    # the stored direction is the difference of means at the selected layer and position
    chosen = fitted.tensors["candidates"][meta["layer"], meta["n_positions"] + meta["position"]]
    assert torch.equal(chosen, fitted.tensors["direction"])
    back = Artefact.from_bytes(fitted.to_bytes())
    assert back.kind == rd.KIND and back.meta == meta and torch.equal(back.tensors["direction"], chosen)


def test_difference_of_means_is_zero_when_the_classes_coincide(lm):
    texts = chat(lm, HARMFUL)
    same = rd.mean_residuals(lm, texts, 2, 4) - rd.mean_residuals(lm, list(texts), 2, 3)  # batching must not matter
    assert same.abs().max() < 1e-5
    with pytest.raises(Exception, match="zero"):
        rd.fit(lm, FitData(texts, list(texts)), {"n_val": 2, "max_positions": 1})


def test_a_skipped_layer_is_the_identity_on_the_residual_stream(lm):
    from shb.baselines.base import encode_batch

    ids, mask = encode_batch(lm, chat(lm, HARMFUL[:3]))
    edit = layer_method.LayerEdit([1])
    with edit.applied(lm), capture_residual(lm) as seen:
        lm.model(input_ids=ids, attention_mask=mask)
    assert torch.equal(seen[2], seen[1])                  # layer 1's output is its input
    assert not torch.equal(seen[1], seen[0])              # the other layers still act
    n = sum(p.numel() for p in lm.model.model.layers[1].parameters())
    assert edit.parameters_modified(lm).entries == n and edit.parameters_modified(lm).dof == 1  # one layer chosen


def test_layer_scaling_by_one_changes_nothing_and_restores(lm):
    texts = chat(lm, HARMFUL[:2])
    before = forward(lm, texts)
    with layer_method.LayerEdit([0, 1], "scale", 1.0).applied(lm):
        assert torch.equal(forward(lm, texts), before)
    assert layer_method.LayerEdit([0, 1], "scale", 1.0).parameters_modified(lm).entries == 0
    with layer_method.LayerEdit([0], "scale", 0.5).applied(lm):
        assert not torch.allclose(forward(lm, texts), before)
    assert torch.equal(forward(lm, texts), before)
    scaled = sum(p.numel() for n, p in lm.model.model.layers[0].named_parameters() if p.dim() == 2)
    assert layer_method.LayerEdit([0], "scale", 0.5).parameters_modified(lm).entries == scaled


def test_head_ablation_parameters_are_its_slices(lm):
    one = HeadAblation(((0, 1),)).parameters_modified(lm)
    two = HeadAblation(((0, 1), (2, 3))).parameters_modified(lm)
    assert one.entries == lm.layout.head_dim * lm.layout.hidden_size and one.dof == 1  # query rows; one head chosen
    assert two.entries == 2 * one.entries
