"""The terminal view of `shb report utility`: a row per model and setting, a column per measure, the
unmodified model once unless two metrics measured it differently."""

from __future__ import annotations

import polars as pl

from shb.reports import utility


def _row(model, metric, part, task, measure, k, value, source="-", heads="", change=None, ablation="-"):
    return {"model_id": model, "metric_id": metric, "part": part, "task": task, "measure": measure,
            "judge_id": "keyword-paper" if part == "over_refusal" else "", "ablation_id": ablation,
            "head_source": source, "k": k, "heads": heads, "n": 32, "value": value, "lo": None, "hi": None,
            "se": None, "unablated": None, "change": change, "broken": None}


def _frame(second_base=0.0625):
    rows = []
    for metric, base in (("u-swap", 0.0625), ("u-heads", second_base)):
        rows.append(_row("m", metric, "over_refusal", "benign", "refusal", 0, base))
        rows.append(_row("m", metric, "benign_loss", "chats", "nll", 0, 3.2))
    rows.append(_row("m", "u-swap", "over_refusal", "benign", "refusal", 1, 0.25,
                     source="intervention:swap", change=0.1875, ablation="ua"))
    rows.append(_row("m", "u-swap", "benign_loss", "chats", "nll", 1, 3.0,
                     source="intervention:swap", change=-0.2, ablation="ua"))
    rows.append(_row("m", "u-heads", "over_refusal", "benign", "refusal", 2, 0.0625,
                     source="sahara:s", heads="2-7,0-1", change=0.0, ablation="ua"))
    return pl.DataFrame(rows)


def test_one_unmodified_row_and_a_column_per_measure():
    table = utility.for_table(_frame())
    assert table.columns == ["model", "setting", "k", "over-refusal", "benign nll"]
    assert table.rows() == [
        ("m", "unmodified", None, "0.0625", "3.20"),
        ("m", "swap", None, "0.250 (+0.188)", "3.00 (-0.200)"),
        ("m", "2-7,0-1 (sahara:s)", 2, "0.0625 (+0)", None)]
    assert utility.caption(_frame()) == "over-refusal = benign; benign nll = chats"


def test_unmodified_rows_that_differ_between_metrics_stay_apart():
    table = utility.for_table(_frame(second_base=0.125))
    assert table["setting"].to_list()[:2] == ["unmodified (u-heads)", "unmodified (u-swap)"]
    assert table.filter(pl.col("setting") == "unmodified (u-heads)")["over-refusal"].to_list() == ["0.125"]


def test_several_tasks_of_one_part_name_their_task():
    frame = pl.concat([_frame(), pl.DataFrame([_row("m", "u-swap", "over_refusal", "xstest", "refusal", 0, 0.5)])])
    table = utility.for_table(frame)
    assert {"over-refusal: benign", "over-refusal: xstest"} <= set(table.columns)


def test_efficiency_terminal_view_names_each_method_once():
    from shb.reports import efficiency

    def row(family, method, k, entries, share, utility=None):
        return {"source": "measured", "model_id": "m", "family": family, "method": method, "k": k,
                "entries_changed": entries, "share_pct": share, "values_chosen": k, "extra_runs": 0, "n": 32,
                "asr": 0.5, "asr_lo": 0.3, "asr_hi": 0.7, "broken": 0.0, "utility_acc_change": utility,
                "over_refusal_change": None, "benign_nll_change": None, "fit_note": None}

    frame = pl.DataFrame([row("heads: sahara:s (ua)", "heads 2-6,0-4 (ua)", 2, 1024, 0.3, -0.04),
                          row("heads: random (ua)", "heads: random k=2 (ua)", 2, 1024, 0.3),
                          row("actsvd", "my-actsvd", 1, 212992, 61.8)])
    table = efficiency.for_table(frame)
    assert table.columns[:7] == ["source", "model_id", "family", "k", "entries", "share %", "asr"]
    assert table["family"].to_list() == ["sahara:s (ua)", "random (ua)", "actsvd"]
    assert table["applied"].to_list() == ["2-6,0-4", "(varies)", "my-actsvd"]
    assert table["utility change"].to_list() == ["acc -0.0400", None, None]
    assert "fit_note" not in table.columns  # no row has one
