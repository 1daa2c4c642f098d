"""Screened Sahara (shb.search.screened_sahara_step, shb.scorers.subspace_attribution) against the exact
search: at every step, with the same head set G, the screened pick equals the exact pick, or the
comparison records why not (the exact winner's estimate ranked outside the verified candidates).
Through the runner: verified rows are exact and equal the exact search's, estimates are stored apart."""

from __future__ import annotations

import json

import pytest
import torch

from shb.engine import Engine
from shb.scorers.subspace_attribution import estimate_step
from shb.search import compare_screened, sahara, sahara_step
from tests.conftest import make_tokenizer
from tests.integration.test_screening import _lm, _prompts, _random_model, run_suite


@pytest.fixture(scope="module")
def toy():
    from shb.datasets import format_prompt
    from shb.models import load
    from shb.models.toy import prompts as toy_prompts

    lm = load("toy")
    return lm, [format_prompt(p, "chat", lm.tokenizer) for p in toy_prompts.harmful("train", n=16)]


def _check(engine, steps, top, directions=8):
    screened = sahara(engine, steps=steps, screen={"top": top, "directions": directions})
    comparison = compare_screened(engine, screened)
    for row in comparison:
        print(row)
        assert row["same"] or row["reason"], f"step {row['step']}: picks differ without a reason: {row}"
    for step in screened:  # verified scores are exact scores
        assert len(step["candidates"]) == top
        chosen_before = [s["chosen"] for s in screened[: step["step"]]]
        exact = dict(sahara_step(engine, chosen_before, layers=sorted({l for (l, _), _ in step["candidates"]})))
        for head, value in step["candidates"]:
            assert value == pytest.approx(exact[head], rel=1e-5, abs=1e-6)
    return comparison


def test_screened_sahara_matches_exact_on_toy(toy):
    lm, prompts = toy
    engine = Engine(lm, prompts)
    comparison = _check(engine, steps=3, top=4)  # 4 of the toy's 32 heads verified per step
    # The toy's planted safety heads stand far apart from the rest: the screen must find them all.
    assert all(row["same"] for row in comparison), comparison


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_screened_sahara_on_random_models(arch):
    tokenizer = make_tokenizer()
    lm = _lm(_random_model(arch, tokenizer), tokenizer)
    engine = Engine(lm, _prompts(10))
    comparison = _check(engine, steps=3, top=13)  # 10% of the 128 heads
    assert sum(row["same"] for row in comparison) >= 2, comparison


def test_estimate_ranks_exact_scores(toy):
    """The estimate's ranking of the first step agrees with the exact one (Spearman), and every
    direction kept is a better linearisation than fewer (K = rank is the exact first-order Gram)."""
    lm, prompts = toy
    engine = Engine(lm, prompts)
    exact = torch.tensor([v for _, v in sahara_step(engine, [])]).view(lm.n_layers, lm.n_heads)
    est = estimate_step(lm, prompts, [], engine.base_hidden, directions=len(prompts))
    from shb.scorers.attribution import spearman

    rho = spearman(exact.reshape(1, -1), est.reshape(1, -1))
    assert rho >= 0.8, rho
    assert int(est.argmax()) == int(exact.argmax())
    # G's own heads are no candidates: NaN in the estimate.
    g = [divmod(int(exact.argmax()), lm.n_heads)]
    assert torch.isnan(estimate_step(lm, prompts, g, engine.base_hidden)[g[0]])


def test_screened_sahara_through_runner(tmp_path):
    from click.testing import CliRunner

    from shb.cli import main
    from shb.store import Store

    suite = {
        "name": "screen-sahara",
        "models": [{"id": "toy", "kind": "toy"}],
        "datasets": [{"id": "harm", "kind": "toy-harmful", "split": "train", "limit": 16, "format": "chat"}],
        "ablations": [{"id": "ua", "kind": "undifferentiated"}],
        "metrics": [{"id": "exact", "kind": "sahara", "steps": 2},
                    {"id": "screened", "kind": "sahara", "steps": 2, "screen": {"top": 4}}],
        "defaults": {"device": "cpu"},
    }
    db, units = run_suite(tmp_path, suite)
    with Store(db, read_only=True) as store:
        picks = {m: store.con.execute("SELECT layer, head FROM sahara_steps WHERE unit_id = ? AND chosen ORDER BY step",
                                      [u]).fetchall() for m, u in units.items()}
        assert picks["screened"] == picks["exact"]
        pairs = store.con.execute("""
            SELECT e.score, s.score FROM sahara_steps s JOIN sahara_steps e USING (step, layer, head)
            WHERE s.unit_id = ? AND e.unit_id = ?""", [units["screened"], units["exact"]]).fetchall()
        assert len(pairs) == 2 * 4
        for exact, screened in pairs:
            assert screened == pytest.approx(exact, rel=1e-5, abs=1e-6)
        counts = store.con.execute("""SELECT step, count(*), sum(CASE WHEN verified THEN 1 ELSE 0 END)
            FROM sahara_estimates WHERE unit_id = ? GROUP BY 1 ORDER BY 1""", [units["screened"]]).fetchall()
        assert counts == [(0, 32, 4), (1, 31, 4)]
    bad = {**suite, "metrics": [{"id": "s", "kind": "sahara", "score": "ships_mean", "screen": {"top": 4}}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(tmp_path / "bad.duckdb"), "--quiet"])
    assert result.exit_code == 2 and "ships_dataset only" in result.output, result.output
