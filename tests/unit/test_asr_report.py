"""``shb report asr`` keeps interventions apart (no model): two explicit one-head lists are two rows, a
random control's draws are one row with their mean and spread, every ASR has its Wilson interval.
Expected values come from the counts inserted here. Also: a version-1 database migrates (draw = 0)."""

from __future__ import annotations

import statistics

import pytest

from shb.reports import asr as asr_report
from shb.reports.stats import wilson_interval
from shb.store import MIGRATIONS, Store

N = 20
JUDGE_HASH = "j" * 16


def _unit(unit_id, metric_id, heads):
    spec = {"version": 1, "model": {"kind": "toy"}, "dataset": {"kind": "toy-harmful", "format": "chat"},
            "ablation": {"kind": "undifferentiated", "epsilon": 1e-5}, "metric": {"kind": "asr", "heads": heads}}
    return {"unit_id": unit_id, "run_id": "r", "suite_name": "s", "model_id": "toy", "dataset_id": "harm",
            "ablation_id": "ua", "metric_id": metric_id, "metric_kind": "asr", "spec": spec, "status": "done"}


def _answers(unit_id, source, k, heads, harmful, draw=0):
    gens, verdicts = [], []
    for prompt in range(N):
        gid = f"{unit_id}-{k}-{draw}-{prompt}"
        gens.append({"generation_id": gid, "unit_id": unit_id, "model_id": "toy", "dataset_id": "harm",
                     "prompt_id": prompt, "heads": heads, "head_source": source, "k": k, "draw": draw,
                     "ablation_id": "ua", "decoding": {"mode": "greedy"}, "max_new_tokens": 32, "sample_index": 0,
                     "text": "x", "n_tokens": 1, "finish_reason": "eos"})
        verdicts.append({"generation_id": gid, "unit_id": unit_id, "judge_id": "keyword-paper",
                         "judge_hash": JUDGE_HASH, "harmful": prompt < harmful, "parsed": True, "raw": ""})
    return gens, verdicts


RANDOM_DRAWS = {0: (["0-1", "3-2"], 2), 1: (["1-5", "2-6"], 12), 2: (["0-0", "1-1"], 5)}   # heads, harmful of N


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("asr") / "results.duckdb"
    units = [_unit("u-base", "base", []), _unit("u-top", "top1", ["2-6"]), _unit("u-median", "median", ["3-0"]),
             _unit("u-rand", "rand", "random")]
    parts = [_answers("u-base", "explicit", 0, [], 1), _answers("u-top", "explicit", 1, ["2-6"], 19),
             _answers("u-median", "explicit", 1, ["3-0"], 2)]
    parts += [_answers("u-rand", "random", 2, heads, harmful, draw) for draw, (heads, harmful) in RANDOM_DRAWS.items()]
    with Store(path) as s:
        with s.transaction():
            s.insert("units", units)
            for gens, verdicts in parts:
                s.insert("generations", gens)
                s.insert("judgments", verdicts)
    with Store(path, read_only=True) as s:
        yield s


def test_two_explicit_lists_are_two_rows_with_their_own_intervals(store):
    frame = asr_report.summary(store)
    rows = {r["head_set"]: r for r in frame.iter_rows(named=True) if r["head_source"] == "explicit"}
    assert set(rows) == {"2-6", "3-0"}
    for head, harmful in (("2-6", 19), ("3-0", 2)):
        row = rows[head]
        assert row["ablated_asr"] == pytest.approx(harmful / N) and row["n"] == N
        assert (row["ablated_lo"], row["ablated_hi"]) == pytest.approx(wilson_interval(harmful, N))
        # no k = 0 of their own: the explicit [] unit's baseline, named, never summed with another
        assert row["baseline_asr"] == pytest.approx(1 / N) and row["baseline_n"] == N
        assert row["baseline_from"] == "unit u-base"
    assert rows["3-0"]["ablated_hi"] < rows["2-6"]["ablated_lo"]


def test_random_draws_are_one_row_with_mean_and_spread(store):
    frame = asr_report.summary(store)
    (row,) = [r for r in frame.iter_rows(named=True) if r["head_source"] == "random"]
    rates = [harmful / N for _, harmful in RANDOM_DRAWS.values()]
    assert row["draws"] == 3 and row["n"] == 3 * N and row["k"] == 2
    assert row["draw_mean"] == pytest.approx(statistics.mean(rates))
    assert row["draw_sd"] == pytest.approx(statistics.stdev(rates))
    assert row["ablated_asr"] == pytest.approx(sum(h for _, h in RANDOM_DRAWS.values()) / (3 * N))
    assert (row["ablated_lo"], row["ablated_hi"]) == pytest.approx(
        wilson_interval(sum(h for _, h in RANDOM_DRAWS.values()), 3 * N))
    assert row["head_set"] == "3 random sets"


def test_table_view_puts_interval_and_n_in_one_cell(store):
    table = asr_report.for_table(asr_report.summary(store))
    cells = table["ablated ASR [95% CI]"].to_list()
    assert any(c.startswith("0.950 [") and c.endswith("n=20") for c in cells)
    assert any("± " in (c or "") and "(3 draws)" in c for c in table["draws: mean ± sd"].to_list())


def test_version_1_database_migrates_with_draw_zero(tmp_path):
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE shb_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    for statement in MIGRATIONS[0]:
        con.execute(statement)
    con.execute("INSERT INTO shb_meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO generations (generation_id, unit_id, heads, head_source, k) VALUES"
                " ('g1', 'u1', ['3-0', '2-6'], 'explicit', 2)")
    con.execute("INSERT INTO judgments VALUES ('g1', 'u1', 'keyword-paper', 'h', true, true, '')")
    con.close()
    with Store(path) as store:
        assert store.version() == len(MIGRATIONS)
        row = store.con.execute("SELECT head_set, draw, n, asr FROM asr").fetchall()
    assert row == [("2-6,3-0", 0, 1, 1.0)]
