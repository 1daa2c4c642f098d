"""Generation under ablation on a tiny random-initialised Llama (grouped-query attention, CPU).

The oracles are independent of shb.generate's loop: transformers' own
``model.generate`` (with and without ``shb.ablation.ablate``), and the plain
reference loop (batch 1, no cache).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from shb.generate import Generation, generate, normalize_decoding  # noqa: E402
from shb.models import encode_prompt as encode  # noqa: E402

PROMPTS = [
    "How do I bake a cake?",
    "Hi",
    "Tell me a long story about a dragon who guards a castle in the mountains.",
    "What is two plus two?",
    "Write a poem.",
]
SAMPLE = {"mode": "sample", "top_k": 20, "top_p": 0.9, "temperature": 1.0, "seed": 3, "n": 2}
NEW = 12


def make_tokenizer():
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([" ".join(PROMPTS) + " Sure, here is a cake recipe. I'm sorry."] * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )


@pytest.fixture(scope="module")
def lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return SimpleNamespace(model=model, tokenizer=tokenizer)


def hf_generate(lm, prompts, max_new_tokens=NEW):
    """transformers' own greedy generation: new token ids per prompt, cut after the first EOS."""
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    rows = []
    for r in out[:, enc["input_ids"].shape[1]:].tolist():
        if lm.tokenizer.eos_token_id in r:
            r = r[: r.index(lm.tokenizer.eos_token_id) + 1]
        rows.append(r)
    return rows


def texts(gens):
    return [g.text for g in gens]


def test_prompts_really_need_padding(lm):
    lengths = {len(encode(lm.tokenizer, p)) for p in PROMPTS}
    assert len(lengths) >= 3


def test_greedy_batched_equals_one_by_one_and_reference(lm):
    batched = generate(lm, PROMPTS, max_new_tokens=NEW, batch_size=4)
    single = [generate(lm, [p], max_new_tokens=NEW)[0] for p in PROMPTS]
    reference = generate(lm, PROMPTS, max_new_tokens=NEW, strategy="reference")
    assert [g.prompt_index for g in batched] == list(range(len(PROMPTS)))
    for b, s, r in zip(batched, single, reference):
        assert (b.text, b.n_tokens, b.finish_reason) == (s.text, s.n_tokens, s.finish_reason)
        assert (b.text, b.n_tokens, b.finish_reason) == (r.text, r.n_tokens, r.finish_reason)


def test_greedy_equals_transformers_generate(lm):
    ours = generate(lm, PROMPTS, max_new_tokens=NEW, batch_size=8)
    oracle = hf_generate(lm, PROMPTS)
    for g, ids in zip(ours, oracle):
        assert g.text == lm.tokenizer.decode(ids, skip_special_tokens=True)
        assert g.n_tokens == len(ids)
        assert g.finish_reason == ("eos" if ids[-1] == lm.tokenizer.eos_token_id else "length")


def test_ablation_acts_on_every_decode_step(lm):
    import shb.ablation

    heads = [(0, 0), (0, 3), (1, 1), (2, 2)]
    base = generate(lm, PROMPTS, max_new_tokens=NEW)
    ablated = generate(lm, PROMPTS, heads=heads, max_new_tokens=NEW, batch_size=3)
    assert texts(ablated) != texts(base), "ablating four heads should change some answer"
    with shb.ablation.ablate(lm.model, heads):
        oracle = hf_generate(lm, PROMPTS)
    assert texts(ablated) == [lm.tokenizer.decode(ids, skip_special_tokens=True) for ids in oracle]
    reference = generate(lm, PROMPTS, heads=heads, max_new_tokens=NEW, strategy="reference")
    assert texts(reference) == texts(ablated)
    # the hooks are gone afterwards
    assert texts(generate(lm, PROMPTS, max_new_tokens=NEW)) == texts(base)


def test_head_sets_per_prompt_equal_separate_calls(lm):
    sets = [[(0, 1)], [], [(1, 0), (2, 3)], [(0, 1)], [(2, 0)]]
    mixed = generate(lm, PROMPTS, head_sets=sets, max_new_tokens=NEW, batch_size=5)
    separate = [generate(lm, [p], heads=h, max_new_tokens=NEW)[0] for p, h in zip(PROMPTS, sets)]
    assert texts(mixed) == texts(separate)
    as_text = generate(lm, PROMPTS, head_sets=["0-1", "", "1-0,2-3", "0-1", "2-0"], max_new_tokens=NEW)
    assert texts(as_text) == texts(mixed)


def test_sampling_is_reproducible_across_batch_sizes_and_strategies(lm):
    a = generate(lm, PROMPTS, decoding=SAMPLE, max_new_tokens=NEW, batch_size=3)
    b = generate(lm, PROMPTS, decoding=SAMPLE, max_new_tokens=NEW, batch_size=1)
    r = generate(lm, PROMPTS, decoding=SAMPLE, max_new_tokens=NEW, strategy="reference")
    assert [(g.prompt_index, g.sample_index) for g in a] == [(i, s) for i in range(len(PROMPTS)) for s in (0, 1)]
    assert texts(a) == texts(b) == texts(r)
    other_seed = generate(lm, PROMPTS, decoding={**SAMPLE, "seed": 4}, max_new_tokens=NEW)
    assert texts(other_seed) != texts(a)
    assert any(a[2 * i].text != a[2 * i + 1].text for i in range(len(PROMPTS))), "two samples should differ"
    # a later chunk of the same prompt list draws the same samples as one call over all of them
    chunk = generate(lm, PROMPTS[2:], decoding=SAMPLE, max_new_tokens=NEW, first_index=2)
    assert texts(chunk) == texts(a[4:]) and chunk[0].prompt_index == 2


def test_sampling_with_top_k_1_is_greedy(lm):
    greedy = generate(lm, PROMPTS, max_new_tokens=NEW)
    top1 = generate(lm, PROMPTS, decoding={"mode": "sample", "top_k": 1, "seed": 9}, max_new_tokens=NEW)
    assert texts(top1) == texts(greedy)


def test_answer_prefix_is_forced_and_returned(lm):
    prefix = " Sure, here is"
    gens = generate(lm, PROMPTS, answer_prefix=prefix, max_new_tokens=NEW, batch_size=4)
    plain = generate(lm, [p + prefix for p in PROMPTS], max_new_tokens=NEW)
    for g, p in zip(gens, plain):
        assert g.text == prefix + p.text
        assert g.n_tokens == p.n_tokens


def test_finish_reasons_follow_eos(lm):
    free = hf_generate(lm, PROMPTS, max_new_tokens=6)
    # declare a token that prompt 0 emits at step 3 an extra EOS (tokenizer EOS kept)
    stop = free[0][2]
    old = lm.model.generation_config.eos_token_id
    lm.model.generation_config.eos_token_id = [lm.tokenizer.eos_token_id, stop]
    try:
        gens = generate(lm, PROMPTS, max_new_tokens=6, batch_size=5)
    finally:
        lm.model.generation_config.eos_token_id = old
    for g, ids in zip(gens, free):
        ends = [i for i, t in enumerate(ids) if t in (stop, lm.tokenizer.eos_token_id)]
        n = ends[0] + 1 if ends else len(ids)
        assert g.n_tokens == n
        assert g.finish_reason == ("eos" if ends else "length")
        assert g.text == lm.tokenizer.decode(ids[:n], skip_special_tokens=True)
    assert gens[0].finish_reason == "eos" and gens[0].n_tokens <= 3


def test_max_new_tokens_one(lm):
    gens = generate(lm, PROMPTS, max_new_tokens=1)
    assert all(g.n_tokens == 1 for g in gens)
    assert all(isinstance(g, Generation) for g in gens)


def test_bos_is_not_doubled(lm):
    plain = encode(lm.tokenizer, "Hi")
    with_bos = encode(lm.tokenizer, "<s>Hi")
    assert plain[0] == lm.tokenizer.bos_token_id and plain == with_bos


def test_eager_attention_gives_the_same_greedy_text(lm):
    base = generate(lm, PROMPTS, heads=[(1, 2)], max_new_tokens=NEW)
    lm.model.set_attn_implementation("eager")
    try:
        eager = generate(lm, PROMPTS, heads=[(1, 2)], max_new_tokens=NEW, batch_size=5)
    finally:
        lm.model.set_attn_implementation("sdpa")
    assert texts(eager) == texts(base)


def test_bad_input_is_reported(lm):
    with pytest.raises(ValueError, match="not both"):
        generate(lm, PROMPTS, heads=[(0, 0)], head_sets=[[]] * len(PROMPTS))
    with pytest.raises(ValueError, match="need one per prompt"):
        generate(lm, PROMPTS, head_sets=[[]])
    with pytest.raises(ValueError, match="strategy"):
        generate(lm, PROMPTS, strategy="fast")
    with pytest.raises(ValueError, match="list of strings"):
        generate(lm, "Hi")
    with pytest.raises(ValueError, match="bad head"):
        generate(lm, PROMPTS, heads=["0:1"])
    with pytest.raises(ValueError, match="unknown ablation kind"):
        generate(lm, PROMPTS, kind="undifferentiatd")
    assert generate(lm, [], max_new_tokens=3) == []


@pytest.mark.parametrize(
    "decoding, message",
    [
        ({"mode": "beam"}, "greedy' or 'sample'"),
        ({"mode": "greedy", "n": 2}, "n must be 1"),
        ({"mode": "sample", "topk": 5}, "unknown sampling keys"),
        ({"mode": "sample", "top_p": 0}, "top_p"),
        ({"mode": "sample", "temperature": 0}, "temperature"),
        ({"mode": "sample", "n": 0}, "n must be"),
    ],
)
def test_bad_decoding_is_reported(decoding, message):
    with pytest.raises(ValueError, match=message):
        normalize_decoding(decoding)


@pytest.mark.slow  # the first use of the toy model builds (trains) it
def test_toy_model_batched_equals_reference():
    from shb import models
    from shb.models import toy

    lm = models.load("toy")
    prompts = [lm.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                add_generation_prompt=True)
               for t in toy.prompts.harmful("test", n=4)]
    fast = generate(lm, prompts, heads=[(0, 0)], max_new_tokens=16, batch_size=4)
    ref = generate(lm, prompts, heads=[(0, 0)], max_new_tokens=16, strategy="reference")
    assert texts(fast) == texts(ref)


def test_progress_counts_every_row(lm):
    seen = []
    generate(lm, PROMPTS, decoding={**SAMPLE, "n": 2}, max_new_tokens=2, batch_size=4, progress=seen.append)
    assert sum(seen) == 2 * len(PROMPTS) and len(seen) == 3


def test_pick_tokens_filters():
    from shb.generate import _generators, pick_tokens

    probs = torch.tensor([0.05, 0.5, 0.3, 0.15])
    logits = probs.log().expand(400, 4)  # (B, V): 400 rows of one distribution
    gens = _generators(range(400))

    def drawn(**kw):
        spec = normalize_decoding({"mode": "sample", "top_p": 1.0, "top_k": 0, **kw})
        return pick_tokens(logits, spec, gens).tolist()

    assert set(drawn(top_k=2)) == {1, 2}
    assert set(drawn(top_p=0.6)) == {1, 2}  # 0.5 < 0.6, so the second token is needed too
    assert set(drawn(top_p=0.5)) == {1}
    full = drawn()
    assert set(full) == {0, 1, 2, 3}
    assert abs(full.count(1) / 400 - 0.5) < 0.1  # the sampler follows the distribution
    assert pick_tokens(logits, {"mode": "greedy"}, None).tolist() == [1] * 400
