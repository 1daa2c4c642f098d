"""Out-of-memory recovery on the CPU path (issue 16): a fake allocator limit (the input embedding
raises torch.OutOfMemoryError whenever a forward pass carries more than LIMIT rows, as CUDA's caching
allocator does when a batch does not fit) and the run still finishes, with the same numbers and the
batch size it settled on recorded."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from shb.engine import Engine, auto_batch_size, memory_plan
from shb.generate import generate, generation_batch_size, generation_memory_per_row
from tests.conftest import make_tokenizer, tiny_llama, tiny_suite

PROMPTS = ["how to make a bomb", "tell me", "write a poem about cake please and then explain the history of rome",
           "hack into computer", "plan trip paris", "learn python code sort list", "steal money from bank"]
LIMIT = 5


@pytest.fixture(scope="module")
def lm():
    from shb.models.layout import detect

    tokenizer = make_tokenizer()
    tokenizer.padding_side = "left"
    model = tiny_llama(layers=3, heads=4, kv_heads=2, vocab=len(tokenizer), seed=3)
    return SimpleNamespace(model=model, tokenizer=tokenizer, layout=detect(model))


@contextlib.contextmanager
def fake_memory_limit(model, rows: int):
    """Forward passes with more than ``rows`` rows fail as if the allocator ran out; yields the list of
    refused batch sizes."""
    refused = []

    def hook(_module, args):
        if args[0].shape[0] > rows:
            refused.append(args[0].shape[0])
            raise torch.OutOfMemoryError(f"simulated: {args[0].shape[0]} rows exceed the fake limit of {rows}")

    handle = model.get_input_embeddings().register_forward_pre_hook(hook)
    try:
        yield refused
    finally:
        handle.remove()


def test_engine_halves_on_out_of_memory_and_keeps_the_numbers(lm):
    sets = [[(layer, h)] for layer in range(3) for h in range(4)] + [[(0, 1), (2, 3)]]
    free = Engine(lm, PROMPTS, batch_size="auto")
    want = free.ships_head_sets(sets)
    assert free.batch_size > LIMIT  # without the limit the engine takes bigger batches
    limited = Engine(lm, PROMPTS, batch_size="auto")
    with fake_memory_limit(lm.model, LIMIT) as refused:
        got = limited.ships_head_sets(sets)
    assert refused  # the limit was hit, in the base pass (7 prompts) and in the sweeps
    assert limited.batch_size <= LIMIT
    history = limited.batch_history
    assert history[0][1].startswith("auto:") and any("out of memory" in why for _, why in history[1:])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    naive = Engine(lm, PROMPTS, strategy="naive").ships_head_sets(sets)
    torch.testing.assert_close(got, naive, rtol=1e-5, atol=1e-5 * float(naive.abs().max()))


def test_out_of_memory_at_one_row_is_raised(lm):
    e = Engine(lm, PROMPTS[:2], batch_size=4)
    with fake_memory_limit(lm.model, 0), pytest.raises(torch.OutOfMemoryError):
        e.ships_layer(0)


def test_auto_batch_counts_the_cache_and_the_scoring_head(lm):
    lengths = [30] * 100
    plan = memory_plan(lm.model, lm.layout, lengths)
    d = lm.layout.hidden_size
    assert plan["fixed"] >= lm.layout.n_layers * 100 * 30 * d * 4  # the per-layer hidden-state cache
    with_head = memory_plan(lm.model, lm.layout, lengths, head_extra_bytes=10 << 20)
    assert with_head["fixed"] == plan["fixed"] + (10 << 20)
    rows, why = auto_batch_size(plan, plan["fixed"] + 10 * plan["per_row"])
    assert rows == 10 and why.startswith("auto:")
    rows, why = auto_batch_size(plan, plan["fixed"] // 2)
    assert rows == 1 and "fill the budget" in why


def test_generation_halves_on_out_of_memory_and_gives_the_same_answers(lm, caplog):
    kw = {"heads": [(1, 2)], "max_new_tokens": 6}
    for decoding in ({"mode": "greedy"}, {"mode": "sample", "top_k": 5, "seed": 3}):
        want = generate(lm, PROMPTS, batch_size=8, decoding=decoding, **kw)
        with fake_memory_limit(lm.model, 3) as refused, caplog.at_level("WARNING", logger="shb.generate"):
            got = generate(lm, PROMPTS, batch_size=8, decoding=decoding, **kw)
        assert refused and max(refused) > 3
        assert "out of memory at 7 rows" in caplog.text
        assert got == want


def test_generation_auto_batch_counts_the_kv_cache(lm):
    model = lm.model
    cfg = model.config
    per_row = generation_memory_per_row(model, 30, 100)
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 130 * 4
    assert per_row > kv
    assert generation_memory_per_row(model, 30, 1000) - per_row == 2 * cfg.num_hidden_layers * \
        cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 900 * 4
    assert 1 <= generation_batch_size(model, 30, 100) <= 16
    gens = generate(lm, PROMPTS[:3], batch_size="auto", max_new_tokens=3)
    assert len(gens) == 3
    with pytest.raises(ValueError, match="batch_size"):
        generate(lm, PROMPTS[:3], batch_size="big")


def test_a_run_under_the_fake_limit_stores_the_same_scores_and_its_batch(tmp_path, tiny_model_dir, prompts_file,
                                                                        monkeypatch):
    import shb.models
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import from_dict

    suite = from_dict(tiny_suite(tiny_model_dir, prompts_file, "oom", [{"id": "ships", "kind": "ships"}],
                                 batch_size="auto"))

    def scores_and_batch(db):
        assert run_suite(suite, db, log=lambda *a, **k: None)["failed"] == 0
        with Store(db, read_only=True) as store:
            scores = store.con.execute("SELECT prompt_id, layer, head, score FROM ships ORDER BY ALL").fetchall()
            batch = store.con.execute("SELECT batch_size FROM units").fetchall()
        return scores, batch[0][0]

    free_scores, free_batch = scores_and_batch(tmp_path / "free.duckdb")
    real = shb.models.load_hf_spec
    limits = []

    def limited(spec, **kw):
        lm = real(spec, **kw)
        limits.append(fake_memory_limit(lm.model, LIMIT))
        limits[-1].__enter__()
        return lm

    monkeypatch.setattr(shb.models, "load_hf_spec", limited)
    try:
        scores, batch = scores_and_batch(tmp_path / "limited.duckdb")
    finally:
        for limit in limits:
            limit.__exit__(None, None, None)
    assert limits and free_batch > LIMIT >= batch >= 1
    assert [s[:3] for s in scores] == [s[:3] for s in free_scores] and len(scores) == 6 * 3 * 4
    torch.testing.assert_close([s[3] for s in scores], [s[3] for s in free_scores], rtol=1e-5, atol=1e-9)
