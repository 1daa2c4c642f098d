"""Issue 32's reproduced report cases (each failed on 7bedb08): a figure line is one unit (case 1),
one rule picks every baseline (case 2), screened sweeps say so and rank without rewarding heads
verified on few prompts (case 5). Synthetic databases, no torch."""

from __future__ import annotations

import polars as pl
import pytest

from shb.reports import asr as asr_report
from shb.reports import figures
from shb.reports import sahara as sahara_report
from shb.reports.baseline import unit_specs
from shb.store import Store

N = 10
MODEL = {"kind": "toy", "weights": "w", "dtype": "float32"}
DATASET = {"kind": "toy-harmful", "content": "c", "format": "chat", "system": None}
UA = {"kind": "undifferentiated", "epsilon": 1e-5, "site": "q"}


def asr_spec(**params) -> dict:
    metric = {"kind": "asr", "judge": "keyword-paper", "decoding": {"mode": "greedy"}, "max_new_tokens": 8,
              "seed": 0, **params}
    return {"version": 2, "model": MODEL, "dataset": DATASET, "ablation": UA, "metric": metric}


def add_asr_unit(rows: dict, unit_id: str, metric_id: str, spec: dict, harmful_by_k: dict[int, int]) -> None:
    rows["units"].append({"unit_id": unit_id, "run_id": "r", "suite_name": "s", "model_id": "toy",
                          "dataset_id": "harm", "ablation_id": "ua", "metric_id": metric_id, "metric_kind": "asr",
                          "spec": spec, "status": "done", "error": None, "seconds": 1.0, "n_chunks": 1})
    source = spec["metric"]["heads"] if isinstance(spec["metric"]["heads"], str) else "explicit"
    for k, harmful in harmful_by_k.items():
        for prompt in range(N):
            gid = f"{unit_id}-{k}-{prompt}"
            rows["generations"].append({
                "generation_id": gid, "unit_id": unit_id, "model_id": "toy", "dataset_id": "harm", "prompt_id": prompt,
                "heads": [f"0-{h}" for h in range(k)], "head_source": source, "k": k, "ablation_id": "ua",
                "decoding": {"mode": "greedy"}, "max_new_tokens": 8, "sample_index": 0, "text": "x", "n_tokens": 1,
                "finish_reason": "length"})
            rows["judgments"].append({"generation_id": gid, "unit_id": unit_id, "judge_id": "keyword-paper",
                                      "judge_hash": "h" * 16, "harmful": prompt < harmful, "raw": None})


def database(tmp_path, units) -> Store:
    rows = {"runs": [{"run_id": "r", "suite_name": "s", "status": "done"}], "units": [], "generations": [],
            "judgments": []}
    for unit in units:
        add_asr_unit(rows, *unit)
    return written(tmp_path / "r.duckdb", rows)


def written(path, rows: dict) -> Store:
    """A new database at ``path`` holding ``rows`` (table -> rows)."""
    store = Store(path)
    with store.transaction():
        for table, table_rows in rows.items():
            store.insert(table, table_rows)
    return store


def test_case2_a_baseline_shares_the_answer_prefix(tmp_path):
    """Unit "prefixed" measures k = 1 under an answer prefix and has no k = 0 of its own; the only k = 0
    was measured without the prefix, so neither report compares against it. "other" (no prefix, another
    seed) does get it, and names where it came from."""
    store = database(tmp_path, [
        ("base", "asr-base", asr_spec(heads="random", k=[0]), {0: 2}),
        ("prefixed", "asr-prefix", asr_spec(heads="random", k=[1], answer_prefix="Sure,"), {1: 7}),
        ("other", "asr-other", asr_spec(heads="random", k=[1], seed=3), {1: 5})])
    from shb.reports import efficiency

    with store:
        by_unit = {r["unit_id"]: r for r in asr_report.summary(store).to_dicts()}
        long = {r["unit_id"]: r for r in sahara_report.asr_by_k(store).to_dicts()}
        measured = {r["unit_id"]: r for r in efficiency.measured(store).to_dicts()}
    assert measured["prefixed"]["baseline_from"] is None and measured["other"]["baseline_from"] == "unit base"
    assert measured["other"]["baseline_asr"] == pytest.approx(0.2)
    assert by_unit["prefixed"]["baseline_asr"] is None and by_unit["prefixed"]["baseline_from"] is None
    assert long["prefixed"]["asr_base"] is None and long["prefixed"]["delta"] is None
    assert by_unit["other"]["baseline_from"] == "unit base" and long["other"]["baseline_from"] == "unit base"
    assert long["other"]["delta"] == pytest.approx(0.5 - 0.2)


def test_case2_a_baseline_shares_the_decoding_length_and_prompts(tmp_path):
    longer = asr_spec(heads="random", k=[1], max_new_tokens=64)
    other_prompts = asr_spec(heads="random", k=[1])
    other_prompts["dataset"] = {**DATASET, "content": "other prompts"}
    store = database(tmp_path, [("base", "asr-base", asr_spec(heads="random", k=[0]), {0: 2}),
                                ("longer", "asr-l", longer, {1: 3}), ("prompts", "asr-p", other_prompts, {1: 3})])
    with store:
        frame = asr_report.summary(store)
    assert frame.filter(pl.col("k") > 0)["baseline_from"].to_list() == [None, None]


def _lines(monkeypatch, draw: str) -> list[dict]:
    drawn = []
    monkeypatch.setattr(figures, draw, lambda series, title, *a, **k: drawn.append(series) or b"")
    return drawn


@pytest.mark.parametrize("a, b, differ", [
    ({"seed": 1}, {"seed": 2}, "seed"),
    ({"answer_prefix": "Sure,"}, {}, "answer_prefix"),
    ({"max_new_tokens": 8}, {"max_new_tokens": 16}, "max_new_tokens"),
    ({"heads_dataset": "select"}, {}, "heads_dataset"),
])
def test_case1_a_figure_line_is_one_unit(tmp_path, monkeypatch, a, b, differ):
    """Two asr units that differ in one parameter (a seed, an answer prefix, a length, in-sample against
    held-out heads) are two lines, each with its own points, labelled by what differs."""
    spec_a, spec_b = asr_spec(heads="sahara:s", k=[0, 1, 2], **a), asr_spec(heads="sahara:s", k=[0, 1, 2], **b)
    spec_a["upstream"], spec_b["upstream"] = "u-sahara-a", "u-sahara-b"
    store = database(tmp_path, [("ua", "asr", spec_a, {0: 1, 1: 4, 2: 9}), ("ub", "asr", spec_b, {0: 1, 1: 2, 2: 3})])
    with store:
        frame = asr_report.summary(store)
        long = sahara_report.asr_by_k(store)
        specs = unit_specs(store, frame["unit_id"].to_list())
    drawn = _lines(monkeypatch, "intervals")
    asr_report.figures(frame, specs=specs)
    (series,) = drawn
    assert len(series) == 2, series
    assert all(differ in label for label in series), series
    assert sorted(p[1] for points in series.values() for p in points if p[0] == 2) == [0.3, 0.9]
    drawn = _lines(monkeypatch, "lines")
    sahara_report.figures(long, specs)
    (series,) = drawn
    assert len(series) == 2 and all(differ in label for label in series), series
    assert sorted(ys[-1] for _, ys in series.values()) == pytest.approx([0.2, 0.8])


def screened_database(tmp_path) -> Store:
    """A screened sweep over 64 prompts: head 0-0 verified on 2 prompts with 5 nats, head 0-1 on every
    prompt with 1 nat; and an exact sweep of the same cell."""
    rows = {"units": [], "ships": [], "ships_estimates": []}
    for unit_id, metric_id in (("screened-u", "ships-screened"), ("exact-u", "ships")):
        rows["units"].append({"unit_id": unit_id, "run_id": "r", "suite_name": "s", "model_id": "toy",
                              "dataset_id": "harm", "ablation_id": "ua", "metric_id": metric_id, "metric_kind": "ships",
                              "spec": {"metric": {"kind": "ships"}}, "status": "done"})
    common = {"model_id": "toy", "dataset_id": "harm", "ablation_id": "ua", "layer": 0}
    for prompt in range(64):
        rows["ships"].append({"unit_id": "screened-u", "prompt_id": prompt, "head": 1, "score": 1.0, **common})
        if prompt < 2:
            rows["ships"].append({"unit_id": "screened-u", "prompt_id": prompt, "head": 0, "score": 5.0, **common})
        for head in (0, 1):
            rows["ships_estimates"].append({"unit_id": "screened-u", "prompt_id": prompt, "head": head, "estimate": 1.0,
                                            "estimator": "fisher", "verified": head == 1 or prompt < 2, **common})
            rows["ships"].append({"unit_id": "exact-u", "prompt_id": prompt, "head": head,
                                  "score": 2.0 if head == 0 else 1.0, **common})
    return written(tmp_path / "s.duckdb", rows)


def test_case5_screened_sweeps_rank_over_every_prompt_and_say_so(tmp_path):
    from shb.reports import method_overlap, overlap
    from shb.reports import ships as ships_report

    with screened_database(tmp_path) as store:
        ranking = ships_report.ranking(store)
        scores = overlap.scores(store, "ships")
        methods = method_overlap.scores(store, "toy", "harm", "ua")
    screened = ranking.filter(pl.col("scoring") == "screened").sort("rank")
    assert screened["head"].to_list() == [1, 0]   # 2 x 5 nats over 64 prompts ranks below 64 x 1 nat
    assert screened["mean_ships"].to_list() == pytest.approx([1.0, 10 / 64])
    assert screened["n_verified"].to_list() == [64, 2]
    exact = ranking.filter(pl.col("scoring") == "exact").sort("rank")
    assert exact["mean_ships"].to_list() == pytest.approx([2.0, 1.0])   # the plain mean where every head is scored
    assert {r for r in scores["result"].unique()} == {"toy / harm / ua / ships", "toy / harm / ua / ships-screened (screened)"}
    assert set(methods.filter(pl.col("method") == "ships")["result"]) == {"ships:ships", "ships:ships-screened (screened)"}


def test_asr_report_shows_a_refusal_rate_unit_beside_ablated_ones(tmp_path):
    """A unit that only measures the unmodified model (``heads: []``, k = 0: the refusal rate on another
    benchmark) is a row of `shb report asr` even when other units ablate, with its ablated columns empty;
    `shb report sahara`'s rows stay ablated ones only. The outcome table names each row's ablation, and
    the terminal abbreviates a long head set."""
    store = database(tmp_path, [
        ("refusal", "asr-refusal", asr_spec(heads=[], k=[0]), {0: 3}),
        ("curve", "asr-curve", asr_spec(heads="random", k=[0, 5]), {0: 1, 5: 6})])
    with store:
        by_unit = {(r["unit_id"], r["k"]): r for r in asr_report.summary(store).to_dicts()}
        long = sahara_report.asr_by_k(store)
    assert by_unit[("refusal", 0)]["baseline_asr"] == pytest.approx(0.3)
    assert by_unit[("refusal", 0)]["ablated_asr"] is None
    assert by_unit[("curve", 5)]["ablated_asr"] == pytest.approx(0.6)
    assert by_unit[("curve", 5)]["baseline_asr"] == pytest.approx(0.1)
    assert "refusal" not in long["unit_id"].to_list()
    assert asr_report.short_head_set("0-0,0-1,0-2,0-3,0-4") == "0-0,0-1,0-2 +2 more"
    assert asr_report.short_head_set("0-0,0-1,0-2") == "0-0,0-1,0-2"
