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
        assert len(pairs) == 2 * (4 + 8)  # the top 4 and the default recall sample of 8 per step
        for exact, screened in pairs:
            assert screened == pytest.approx(exact, rel=1e-5, abs=1e-6)
        counts = store.con.execute("""SELECT step, count(*), sum(CASE WHEN verified THEN 1 ELSE 0 END)
            FROM sahara_estimates WHERE unit_id = ? GROUP BY 1 ORDER BY 1""", [units["screened"]]).fetchall()
        assert counts == [(0, 32, 12), (1, 31, 12)]
    bad = {**suite, "metrics": [{"id": "s", "kind": "sahara", "score": "ships_mean", "screen": {"top": 4}}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(tmp_path / "bad.duckdb"), "--quiet"])
    assert result.exit_code == 2 and "ships_dataset only" in result.output, result.output


def _exact_step_estimate(sign):
    """A stand-in for estimate_step: every candidate's exact score (sign 1) or its negation (sign -1)."""
    def estimate(lm, prompts, chosen, base_hidden, kind="undifferentiated", epsilon=1e-5, site=None, r=1, **_):
        engine = Engine(lm, list(prompts), kind=kind, epsilon=epsilon, site=site)
        out = torch.zeros(lm.n_layers, lm.n_heads, dtype=torch.float64)
        for head, value in sahara_step(engine, chosen, r=r):
            out[head] = sign * value
        return out
    return estimate


def _sampled_sahara(tmp_path, monkeypatch, sign, seed=0):
    from click.testing import CliRunner

    from shb.cli import main
    from shb.scorers import subspace_attribution
    from shb.store import Store

    monkeypatch.setattr(subspace_attribution, "estimate_step", _exact_step_estimate(sign))
    tmp_path.mkdir(parents=True, exist_ok=True)
    suite = {"name": "sahara-sample", "models": [{"id": "toy", "kind": "toy"}],
             "datasets": [{"id": "harm", "kind": "toy-harmful", "split": "train", "limit": 8, "format": "chat"}],
             "ablations": [{"id": "ua", "kind": "undifferentiated"}],
             "metrics": [{"id": "exact", "kind": "sahara", "steps": 2},
                         {"id": "screened", "kind": "sahara", "steps": 2, "screen": {"top": 10, "sample": 8}}],
             "defaults": {"device": "cpu", "seed": seed}}
    db, units = run_suite(tmp_path, suite)
    with Store(db, read_only=True) as store:
        rows = store.con.execute("""SELECT e.step, e.layer, e.head, e.verified_as, e.estimate, s.score, s.chosen
            FROM sahara_estimates e LEFT JOIN sahara_steps s USING (unit_id, step, layer, head)
            WHERE e.unit_id = ? ORDER BY ALL""", [units["screened"]]).fetchall()
        picks = {m: store.con.execute("SELECT layer, head FROM sahara_steps WHERE unit_id = ? AND chosen ORDER BY step",
                                      [u]).fetchall() for m, u in units.items()}
    table = CliRunner().invoke(main, ["report", "sahara", "--db", str(db)], env={"COLUMNS": "250"})
    data = CliRunner().invoke(main, ["report", "sahara", "--db", str(db), "--format", "json"])
    assert table.exit_code == 0 and data.exit_code == 0, table.output + data.output
    summary, = json.loads(data.output)[next(k for k in json.loads(data.output) if k.startswith("screened Sahara"))]
    return rows, picks, table.output, summary


def test_screened_sahara_samples_and_measures_its_recall(tmp_path, monkeypatch):
    """Per step 8 candidates outside the top 10 are scored exactly (stored with the estimate, seeded: the same
    heads again for the same seed); a perfect estimate: no warning, the exact picks; a reversed one: the
    report warns, and a sampled candidate that beats the verified top is chosen (the best exact score known)."""
    rows, picks, table, summary = _sampled_sahara(tmp_path / "good", monkeypatch, 1)
    for step in (0, 1):
        kinds = [how for s, _, _, how, _, _, _ in rows if s == step]
        assert kinds.count("top") == 10 and kinds.count("sample") == 8
        assert all(score is not None for s, _, _, how, _, score, _ in rows if s == step and how)
    assert picks["screened"] == picks["exact"]
    assert summary["above_kth"] == 0 and summary["recall_est"] == 1.0 and summary["chosen_from_sample"] == 0, summary
    assert "warning" not in table
    again, _, _, _ = _sampled_sahara(tmp_path / "again", monkeypatch, 1)
    assert [r[:4] for r in again] == [r[:4] for r in rows]

    rows, picks, table, summary = _sampled_sahara(tmp_path / "bad", monkeypatch, -1)
    assert summary["above_kth"] > 0 and summary["recall_est"] < 1.0, summary
    assert "warning: screened screened" in table
    for step in (0, 1):
        verified = [(score, how, chosen) for s, _, _, how, _, score, chosen in rows if s == step and how]
        best = max(verified)
        assert best[2], f"step {step}: the chosen candidate is not the best verified one"
        assert best[1] == "sample"  # the reversed estimate's top 10 are the worst; a sampled one beats them
    assert summary["chosen_from_sample"] == 2
