"""Refused / complied / broken beside every ASR (no model): the asr view's shares, ``shb report asr``'s
broken columns and its breakdown mark, the efficiency report's shares, the stacked-share figure, and a
database from before outcomes (read as None, migrated with NULL outcomes). Expected values come from
the counts inserted here."""

from __future__ import annotations

import pytest

from shb.reports import asr as asr_report
from shb.reports import efficiency
from shb.store import MIGRATIONS, Store

N = 20
JUDGE_HASH = "j" * 16


def _unit(unit_id, heads):
    spec = {"version": 1, "model": {"kind": "toy"}, "dataset": {"kind": "toy-harmful", "format": "chat"},
            "ablation": {"kind": "undifferentiated", "epsilon": 1e-5}, "metric": {"kind": "asr", "heads": heads}}
    return {"unit_id": unit_id, "run_id": "r", "suite_name": "s", "model_id": "toy", "dataset_id": "harm",
            "ablation_id": "ua", "metric_id": unit_id, "metric_kind": "asr", "spec": spec, "status": "done"}


def _answers(unit_id, k, heads, outcomes: dict):
    """N answers: ``outcomes`` maps (outcome, harmful) -> count. A broken answer may be harmful for the
    paper's judge (an emoji salad) or not (a loop)."""
    gens, verdicts = [], []
    cells = [key for key, count in outcomes.items() for _ in range(count)]
    assert len(cells) == N
    for prompt, (outcome, harmful) in enumerate(cells):
        gid = f"{unit_id}-{k}-{prompt}"
        gens.append({"generation_id": gid, "unit_id": unit_id, "model_id": "toy", "dataset_id": "harm",
                     "prompt_id": prompt, "heads": heads, "head_source": "explicit", "k": k, "draw": 0,
                     "ablation_id": "ua", "decoding": {"mode": "greedy"}, "max_new_tokens": 32, "sample_index": 0,
                     "text": "x", "n_tokens": 1, "finish_reason": "eos"})
        verdicts.append({"generation_id": gid, "unit_id": unit_id, "judge_id": "keyword-paper",
                         "judge_hash": JUDGE_HASH, "harmful": harmful, "parsed": True, "raw": "",
                         "outcome": outcome, "outcome_rule": "test", "outcome_hash": "o"})
    return gens, verdicts


BASE = {("complied", True): 16, ("refused", False): 2, ("broken", False): 2}            # ASR 0.8, broken 0.1
LOOPS = {("complied", True): 4, ("refused", False): 2, ("broken", False): 14}           # ASR 0.2, broken 0.7
REFUSALS = {("complied", True): 6, ("refused", False): 12, ("broken", False): 1, ("broken", True): 1}  # ASR 0.35


def _database(path, units, parts):
    """A database with ``units`` and their answers ``parts`` ([(generations, judgments)]), opened read-only."""
    with Store(path) as s:
        with s.transaction():
            s.insert("units", units)
            for gens, verdicts in parts:
                s.insert("generations", gens)
                s.insert("judgments", verdicts)
    return Store(path, read_only=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    parts = [_answers("u-loop", 0, [], BASE), _answers("u-loop", 1, ["2-6"], LOOPS),
             _answers("u-ref", 0, [], BASE), _answers("u-ref", 1, ["3-0"], REFUSALS)]
    with _database(tmp_path_factory.mktemp("outcomes") / "results.duckdb",
                   [_unit("u-loop", ["2-6"]), _unit("u-ref", ["3-0"])], parts) as s:
        yield s


def test_asr_view_has_outcome_shares_beside_the_binary_asr(store):
    rows = store.query("SELECT unit_id, k, asr, refused, complied, broken, n, n_outcome FROM asr ORDER BY ALL")
    got = {(r["unit_id"], r["k"]): r for r in rows.iter_rows(named=True)}
    assert got[("u-loop", 1)]["asr"] == pytest.approx(0.2)
    assert (got[("u-loop", 1)]["refused"], got[("u-loop", 1)]["complied"], got[("u-loop", 1)]["broken"]) == \
        pytest.approx((0.1, 0.2, 0.7))
    # a broken answer the paper's judge scores harmful: ASR 0.35, complied only 0.3
    assert got[("u-ref", 1)]["asr"] == pytest.approx(0.35) and got[("u-ref", 1)]["complied"] == pytest.approx(0.3)
    assert all(r["n_outcome"] == r["n"] == N for r in got.values())


def test_asr_report_marks_a_fall_that_is_mainly_breakdown(store):
    frame = asr_report.summary(store)
    rows = {r["head_set"]: r for r in frame.iter_rows(named=True)}
    loop, ref = rows["2-6"], rows["3-0"]
    assert loop["change"] == pytest.approx(-0.6) and loop["broken_change"] == pytest.approx(0.6)
    assert (loop["baseline_broken"], loop["ablated_broken"]) == pytest.approx((0.1, 0.7))
    assert loop["moved_by"] == "breakdown"
    assert ref["change"] == pytest.approx(-0.45) and ref["broken_change"] == pytest.approx(0.0)
    assert ref["moved_by"] == "refusal"
    table = asr_report.outcome_table(frame)
    got = [(r["metric_id"], r["head_set"], r["k"], r["ASR moved by"], r["broken"]) for r in table.iter_rows(named=True)]
    # each unit's baseline once, then its ablated row with the mark
    assert got == [("u-loop", "-", 0, None, pytest.approx(0.1)), ("u-loop", "2-6", 1, "breakdown", pytest.approx(0.7)),
                   ("u-ref", "-", 0, None, pytest.approx(0.1)), ("u-ref", "3-0", 1, "refusal", pytest.approx(0.1))]


def test_asr_table_at_80_columns_keeps_the_breakdown_mark(store):
    from click.testing import CliRunner

    from shb.cli import main

    result = CliRunner().invoke(main, ["report", "asr", "--db", str(store.path)], env={"COLUMNS": "80"},
                                catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.output
    assert "refused / complied / broken" in result.output
    (line,) = [line for line in lines if line.startswith("2-6 ")]
    assert "breakdown" in line and "0.700" in line


@pytest.mark.parametrize("change, broken, refused, expected", [
    (-0.6, 0.6, 0.0, "breakdown"), (-0.6, 0.3, 0.3, "breakdown"), (-0.6, 0.29, 0.31, "refusal"),
    (-0.6, 0.1, 0.1, None), (0.2, 0.5, 0.0, None), (0.0, 0.5, 0.0, None), (-0.3, None, None, None),
])
def test_moved_by_thresholds(change, broken, refused, expected):
    assert asr_report.moved_by(change, broken, refused) == expected


def test_efficiency_report_has_the_shares_beside_each_asr(store):
    frame = efficiency.measured(store)
    rows = {r["method"]: r for r in frame.iter_rows(named=True)}
    loop = next(r for m, r in rows.items() if "2-6" in m)
    assert loop["asr"] == pytest.approx(0.2) and loop["broken"] == pytest.approx(0.7)
    assert loop["refused"] + loop["complied"] + loop["broken"] == pytest.approx(1.0)


def test_outcome_figure_is_a_png(store):
    pytest.importorskip("matplotlib")
    ((name, png),) = asr_report.figure(asr_report.summary(store))
    assert name == "asr-outcomes" and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_outcome_figure_draws_a_shared_baseline_once(monkeypatch):
    # Unit A has its own k = 0; unit B (English heads carried to the same prompts) borrows A's baseline:
    # one k = 0 bar, named by A's metric, not one per way of reaching it.
    import polars as pl

    from shb.reports import figures

    seen = {}
    monkeypatch.setattr(figures, "stacked_shares", lambda bars, *a: seen.setdefault("bars", bars) and b"png")
    shares = {f"{w}_{o}": v for w in ("baseline", "ablated") for o, v in zip(asr_report.OUTCOMES, (0.5, 0.5, 0, 0))}
    common = {"model_id": "m", "dataset_id": "zh", "judge_id": "kw", "k": 2, "baseline_asr": 0.5, "ablated_asr": 0.5,
              **shares}
    frame = pl.DataFrame([
        {**common, "unit_id": "uA", "metric_id": "own", "head_source": "sahara:s", "head_set": "0-1,0-2",
         "baseline_from": "same unit"},
        {**common, "unit_id": "uB", "metric_id": "from-en", "head_source": "sahara:s", "head_set": "3-1,4-2",
         "baseline_from": "unit uA"}])
    asr_report.figure(frame)
    labels = [label for label, *_ in seen["bars"]]
    assert labels == ["m / zh / kw: own k=0", "m / zh / kw: sahara:s 0-1,0-2 k=2", "m / zh / kw: sahara:s 3-1,4-2 k=2"]


def test_database_from_before_outcomes_reads_none_and_migrates_with_null_outcomes(tmp_path):
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE shb_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    # the database as it was just before the migration that added judgments.outcome
    before = next(i for i, m in enumerate(MIGRATIONS) if any("ADD COLUMN outcome " in st for st in m))
    for migration in MIGRATIONS[:before]:
        for statement in migration:
            con.execute(statement)
    con.execute("INSERT INTO shb_meta VALUES ('schema_version', ?)", [str(before)])
    gens, verdicts = _answers("u-old", 0, [], BASE)
    con.close()
    with Store(path, read_only=True) as old:   # read-only: not migrated
        assert not asr_report.has_outcomes(old)
    with Store(path) as s:                      # migrates to the current version
        with s.transaction():
            s.insert("units", [_unit("u-old", [])])
            s.insert("generations", gens)
            s.insert("judgments", [{k: v for k, v in row.items() if not k.startswith("outcome")} for row in verdicts])
    with Store(path, read_only=True) as s:
        row = asr_report.summary(s).row(0, named=True)
        assert row["baseline_asr"] == pytest.approx(0.8) and row["baseline_broken"] is None
        assert asr_report.for_table(asr_report.summary(s)).columns.count("broken") == 0


# Issue 34: answers in a language the judge has no refusal phrases for are undetermined, left out of ASR.
MOSTLY_UNDETERMINED = {("complied", True): 4, ("refused", False): 2, ("undetermined", True): 14}   # ASR 4/6
ABLATED_UNDETERMINED = {("complied", True): 1, ("refused", False): 3, ("undetermined", True): 16}  # ASR 1/4
ALL_UNDETERMINED = {("undetermined", True): 20}


@pytest.fixture(scope="module")
def undetermined_store(tmp_path_factory):
    parts = [_answers("u-bn", 0, [], MOSTLY_UNDETERMINED), _answers("u-bn", 1, ["2-6"], ABLATED_UNDETERMINED),
             _answers("u-bn", 2, ["2-6", "3-0"], ALL_UNDETERMINED)]
    with _database(tmp_path_factory.mktemp("undetermined") / "results.duckdb", [_unit("u-bn", ["2-6", "3-0"])],
                   parts) as s:
        yield s


def test_asr_view_takes_asr_over_determined_answers_and_counts_the_undetermined(undetermined_store):
    rows = undetermined_store.query("SELECT k, n, asr, n_undetermined, undetermined, complied FROM asr ORDER BY k")
    got = [tuple(r) for r in rows.iter_rows()]
    assert got[0][:4] == (0, 6, pytest.approx(4 / 6), 14) and got[0][4:] == pytest.approx((0.7, 0.2))
    assert got[1][:4] == (1, 4, pytest.approx(0.25), 16)
    assert got[2][:4] == (2, 0, None, 20)   # nothing determined: no ASR, not 1.0 and not 0.0


def test_asr_report_shows_the_undetermined_beside_each_asr(undetermined_store):
    frame = asr_report.summary(undetermined_store)
    rows = {r["k"]: r for r in frame.iter_rows(named=True)}
    assert (rows[1]["baseline_asr"], rows[1]["baseline_n"], rows[1]["baseline_n_undetermined"]) == \
        (pytest.approx(4 / 6), 6, 14)
    assert (rows[1]["ablated_asr"], rows[1]["n"], rows[1]["n_undetermined"]) == (pytest.approx(0.25), 4, 16)
    assert rows[2]["ablated_asr"] is None and rows[2]["n_undetermined"] == 20
    assert rows[1]["ablated_undetermined"] == pytest.approx(0.8)
    cells = asr_report.for_table(frame)["ablated ASR [95% CI]"].to_list()
    assert cells[0].endswith("n=4 +16 undetermined") and cells[1] == "- (none determined, 20 undetermined)"
    assert "undetermined" in asr_report.outcome_table(frame).columns
    pytest.importorskip("matplotlib")
    assert asr_report.figure(frame)[0][1][:4] == b"\x89PNG"
    assert asr_report.figures(frame)[0][1][:4] == b"\x89PNG"


def test_efficiency_report_counts_asr_over_determined_answers_as_the_view_does(undetermined_store):
    rows = {r["k"]: r for r in efficiency.measured(undetermined_store).iter_rows(named=True)}
    view = {r["k"]: r for r in undetermined_store.query("SELECT k, n, asr FROM asr").iter_rows(named=True)}
    assert (rows[1]["n"], rows[1]["asr"]) == (view[1]["n"], pytest.approx(view[1]["asr"])) == (4, pytest.approx(0.25))
    assert rows[1]["undetermined"] == pytest.approx(0.8)


def test_database_from_before_undetermined_reads_zero_undetermined(tmp_path):
    import duckdb

    path = tmp_path / "before.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE shb_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    added = next(i for i, m in enumerate(MIGRATIONS) if any("n_undetermined" in st for st in m))
    for migration in MIGRATIONS[:added]:   # everything before the migration that added undetermined
        for statement in migration:
            con.execute(statement)
    con.execute("INSERT INTO shb_meta VALUES ('schema_version', ?)", [str(added)])
    gens, verdicts = _answers("u-old", 0, [], BASE)
    con.execute("INSERT INTO units (unit_id, metric_id, spec) VALUES ('u-old', 'u-old', ?)",
                [__import__("json").dumps(_unit("u-old", [])["spec"])])
    for g, v in zip(gens, verdicts):
        con.execute("INSERT INTO generations (generation_id, unit_id, model_id, dataset_id, prompt_id, heads, head_source,"
                    " k, draw, ablation_id, decoding, max_new_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    [g["generation_id"], g["unit_id"], "toy", "harm", g["prompt_id"], [], "explicit", 0, "ua",
                     '{"mode": "greedy"}', 32])
        con.execute("INSERT INTO judgments (generation_id, unit_id, judge_id, judge_hash, harmful, outcome)"
                    " VALUES (?, ?, ?, ?, ?, ?)", [v["generation_id"], "u-old", "keyword-paper", JUDGE_HASH,
                                                   v["harmful"], v["outcome"]])
    con.close()
    with Store(path, read_only=True) as old:   # read-only: not migrated, the view has no undetermined count
        assert not asr_report.has_undetermined(old)
        row = asr_report.summary(old).row(0, named=True)
        assert (row["baseline_asr"], row["baseline_n"], row["baseline_n_undetermined"]) == (pytest.approx(0.8), 20, 0)
        assert row["baseline_undetermined"] == 0.0


def test_sahara_ranking_puts_chosen_heads_first_even_where_step_zero_did_not_score_them():
    """A screened search verifies only some candidates at step 0; a head chosen at step 1 is ranked all the same
    (shb report overlap --metric sahara and --metric methods read this ranking)."""
    from shb.reports.overlap import sahara_ranking

    ranking = sahara_ranking([(0, 1, 2, 0.5, False), (0, 3, 4, 0.9, True), (1, 5, 6, 1.2, True)])
    assert sorted(ranking, key=ranking.get, reverse=True) == [(3, 4), (5, 6), (1, 2)]
