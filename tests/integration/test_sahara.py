"""Sahara (greedy head-set search) and generalized Ships: library calls against direct recomputation,
determinism, and the two metric plug-ins (ships_dataset, sahara) through the runner."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from shb.engine import Engine
from shb.search import best, candidates, sahara, sahara_step, sahara_step_layer
from tests.conftest import make_tokenizer, tiny_llama, tiny_suite, write_suite

PROMPTS = ["how to make a bomb", "tell me", "write a poem about cake please", "hack into computer",
           "plan trip paris", "learn python code sort list", "steal money from a bank"]
N_LAYERS, N_HEADS = 3, 4


@pytest.fixture(scope="module")
def lm():
    from shb.models.layout import detect

    tokenizer = make_tokenizer()
    model = tiny_llama(layers=N_LAYERS, heads=N_HEADS, kv_heads=2, vocab=len(tokenizer), seed=3)
    return SimpleNamespace(model=model, tokenizer=tokenizer, layout=detect(model))


def _direct_hidden(lm, heads):
    """(P, d) final-norm last-token states, one batch-1 forward per prompt under shb.ablation.ablate."""
    from shb.ablation import ablate

    rows = []
    with torch.no_grad(), ablate(lm.model, heads):
        for text in PROMPTS:
            ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
            rows.append(lm.model.model(input_ids=ids).last_hidden_state[0, -1].double())
    return torch.stack(rows)


def _direct_angle_deg(a, b):
    """Rank-1 principal angle between the top left singular vectors, from first principles."""
    ua = torch.linalg.svd(a, full_matrices=False)[0][:, 0]
    ub = torch.linalg.svd(b, full_matrices=False)[0][:, 0]
    return math.degrees(math.acos(min(1.0, abs(float(ua @ ub)))))


def test_step_scores_equal_direct_recomputation(lm):
    engine = Engine(lm, PROMPTS, batch_size=9)
    chosen = [(1, 2)]
    results = dict(sahara_step(engine, chosen))
    assert set(results) == set(candidates(engine, chosen)) and (1, 2) not in results
    base = _direct_hidden(lm, [])
    for head in [(0, 0), (1, 3), (2, 1)]:
        expected = _direct_angle_deg(base, _direct_hidden(lm, [*chosen, head]))
        assert expected > 1e-3  # a real angle, not 0 == 0
        assert results[head] == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_ships_mean_step_equals_naive_engine(lm):
    fast = sahara_step(Engine(lm, PROMPTS), [(0, 3)], score="ships_mean")
    slow = sahara_step(Engine(lm, PROMPTS, strategy="naive"), [(0, 3)], score="ships_mean")
    assert [h for h, _ in fast] == [h for h, _ in slow]
    torch.testing.assert_close(torch.tensor([v for _, v in fast]), torch.tensor([v for _, v in slow]),
                               rtol=1e-5, atol=1e-7)


def test_layer_chunks_make_up_the_step(lm):
    engine = Engine(lm, PROMPTS)
    whole = sahara_step(engine, [(2, 0)])
    pieces = [r for layer in range(N_LAYERS) for r in sahara_step_layer(engine, [(2, 0)], layer)]
    assert [h for h, _ in pieces] == [h for h, _ in whole]
    torch.testing.assert_close(torch.tensor([v for _, v in pieces]), torch.tensor([v for _, v in whole]))


def test_sahara_is_greedy_and_deterministic(lm):
    first = sahara(Engine(lm, PROMPTS), steps=3)
    again = sahara(Engine(lm, PROMPTS, batch_size=5), steps=3)
    assert [s["chosen"] for s in first] == [s["chosen"] for s in again]
    chosen = []
    for s in first:
        heads = [h for h, _ in s["candidates"]]
        assert not set(chosen) & set(heads)  # G is never re-scored
        assert len(heads) == N_LAYERS * N_HEADS - len(chosen)
        assert s["chosen"] == max(s["candidates"], key=lambda hv: hv[1])[0]
        chosen.append(s["chosen"])
    assert len(set(chosen)) == 3


def test_best_breaks_ties_by_head_order_and_skips_nan():
    assert best([((2, 0), 1.0), ((0, 1), 1.0), ((1, 1), float("nan"))]) == ((0, 1), 1.0)
    with pytest.raises(ValueError, match="finite"):
        best([((0, 0), float("nan"))])


def test_bad_parameters_are_refused(lm):
    engine = Engine(lm, PROMPTS[:3])
    with pytest.raises(ValueError, match="unknown Sahara score"):
        sahara_step(engine, [], score="kl")
    with pytest.raises(ValueError, match="outside the model"):
        sahara_step_layer(engine, [], N_LAYERS)
    with pytest.raises(ValueError, match="steps"):
        sahara(engine, steps=0)


# -- through the runner ------------------------------------------------------------------------------


@pytest.fixture()
def suite_file(tmp_path, tiny_model_dir, prompts_file):
    return write_suite(tmp_path, tiny_suite(tiny_model_dir, prompts_file, "tiny-sahara", [
        {"id": "gships", "kind": "ships_dataset", "r": 1},
        {"id": "sahara", "kind": "sahara", "steps": 2, "score": "ships_dataset", "r": 1}]))


def test_metric_plugins_write_rows_that_match_the_library(tmp_path, suite_file, tiny_model_dir, prompts_file):
    from shb.datasets import format_prompt
    from shb.models import load
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import load as load_suite

    db = tmp_path / "r.duckdb"
    counts = run_suite(load_suite(suite_file), db, log=lambda *a, **k: None)
    assert counts["failed"] == 0, counts
    with Store(db, read_only=True) as store:
        gships = store.con.execute("SELECT layer, head, score, rank_r FROM ships_dataset ORDER BY layer, head").fetchall()
        steps = store.con.execute("SELECT step, layer, head, score, chosen FROM sahara_steps ORDER BY ALL").fetchall()
    lm = load(str(tiny_model_dir), dtype="float32", device="cpu")
    texts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    formatted = [format_prompt(t, "chat", lm.tokenizer) for t in texts]
    engine = Engine(lm, formatted)
    n = lm.n_layers * lm.n_heads
    assert len(gships) == n and {r[3] for r in gships} == {1}
    first = dict(sahara_step(engine, []))
    torch.testing.assert_close(torch.tensor([r[2] for r in gships]), torch.tensor([first[(l, h)] for l, h, _, _ in gships]))
    assert len(steps) == n + (n - 1)
    marked = [(s, (l, h)) for s, l, h, _, c in steps if c]
    expected = sahara(engine, steps=2)
    assert marked == [(s["step"], s["chosen"]) for s in expected]


@pytest.mark.parametrize("stop_after", [3, 4])  # at a step boundary; inside step 1
def test_interrupted_sahara_resumes_to_the_same_rows(tmp_path, suite_file, stop_after):
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import load as load_suite

    data = json.loads(suite_file.read_text())
    data["metrics"] = [m for m in data["metrics"] if m["kind"] == "sahara"]
    suite_file.write_text(json.dumps(data))
    quiet = {"log": lambda *a, **k: None}

    def rows(db):
        with Store(db, read_only=True) as store:
            return store.con.execute("SELECT step, layer, head, score, chosen FROM sahara_steps ORDER BY ALL").fetchall()

    reference = tmp_path / "ref.duckdb"
    assert run_suite(load_suite(suite_file), reference, **quiet)["failed"] == 0
    db = tmp_path / "cut.duckdb"
    committed = []

    def stop(unit_id, chunk):
        committed.append(chunk)
        if len(committed) == stop_after:
            raise KeyboardInterrupt  # the runner lets it through, as a real Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        run_suite(load_suite(suite_file), db, on_chunk=stop, **quiet)
    assert 0 < len(rows(db)) < len(rows(reference))
    assert run_suite(load_suite(suite_file), db, **quiet)["failed"] == 0
    assert rows(db) == rows(reference)


def test_sigkilled_sahara_resumes_mid_step_to_the_same_rows(tmp_path, suite_file):
    """A real SIGKILL inside step 1 (chunks are (step, layer)); the rerun ends with identical rows."""
    import subprocess
    import sys

    from shb.store import Store
    from tests.conftest import run_and_sigkill

    data = json.loads(suite_file.read_text())
    data["metrics"] = [m for m in data["metrics"] if m["kind"] == "sahara"]
    suite_file.write_text(json.dumps(data))

    def run(db):
        result = subprocess.run([sys.executable, "-m", "shb.cli", "run", str(suite_file), "--db", str(db), "--quiet"],
                                cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    def rows(db):
        with Store(db, read_only=True) as store:
            return store.con.execute("SELECT step, layer, head, score, chosen FROM sahara_steps ORDER BY ALL").fetchall()

    reference, db = tmp_path / "ref.duckdb", tmp_path / "killed.duckdb"
    run(reference)
    # At once after step 1's first chunk: step 0 is done, step 1 under way (its chunks take milliseconds).
    run_and_sigkill(suite_file, db, kill_after=N_LAYERS + 1, cwd=tmp_path, max_delay=0)
    partial = rows(db)
    assert 0 < len(partial) < len(rows(reference))
    assert {r[0] for r in partial} == {0, 1}
    run(db)
    assert rows(db) == rows(reference)
