"""Every suite that validates runs: each head-ablation kind with each metric kind (ships, screened
ships, ships_dataset, sahara, asr, utility) on the toy at tiny size, in one run (issue 22: asr under
the `mean` ablation used to crash after all its generation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shb.run import run_suite
from shb.store import Store
from shb.suite import from_dict

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = [{"id": "ua", "kind": "undifferentiated", "epsilon": 1e-5},
             {"id": "sc", "kind": "scaling", "epsilon": 1e-5},
             {"id": "mean-q", "kind": "mean", "site": "q"},
             {"id": "mean-out", "kind": "mean", "site": "output"},
             {"id": "zero", "kind": "zero"}]
# metric id -> the table each of its units must write rows to
METRICS = {
    "ships": ({"kind": "ships"}, "ships"),
    "ships-screened": ({"kind": "ships", "screen": {"top": 2}}, "ships_estimates"),
    "ships_dataset": ({"kind": "ships_dataset"}, "ships_dataset"),
    "sahara": ({"kind": "sahara", "steps": 1}, "sahara_steps"),
    "asr": ({"kind": "asr", "heads": "sahara:sahara", "k": [0, 1], "max_new_tokens": 4}, "generations"),
    "utility": ({"kind": "utility", "heads": "sahara:sahara", "k": [1],
                 "over_refusal": {"dataset": "benign", "judge": "keyword-paper", "max_new_tokens": 4},
                 "benign_loss": {"dataset": "benign"}}, "utility_docs"),
}


@pytest.fixture(scope="module")
def matrix_db(tmp_path_factory):
    data = {
        "name": "kind-matrix",
        "models": [{"id": "toy", "kind": "toy", "seed": 0}],
        "datasets": [{"id": "harm", "kind": "toy-harmful", "limit": 3, "format": "chat"},
                     {"id": "benign", "kind": "toy-benign", "limit": 2, "format": "chat"}],
        "ablations": ABLATIONS,
        "metrics": [{"id": mid, **spec, "datasets": ["harm"]} for mid, (spec, _) in METRICS.items()],
        "defaults": {"device": "cpu", "batch_size": 8},
    }
    db = tmp_path_factory.mktemp("matrix") / "r.duckdb"
    counts = run_suite(from_dict(data), db, log=lambda *a: None)
    return db, counts


def test_every_ablation_kind_runs_every_metric_kind(matrix_db):
    db, counts = matrix_db
    assert counts["failed"] == 0 and counts["done"] == len(ABLATIONS) * len(METRICS)
    with Store(db, read_only=True) as store:
        for metric_id, (_, table) in METRICS.items():
            rows = dict(store.con.execute(
                f"SELECT u.ablation_id, count(t.unit_id) FROM units u LEFT JOIN {table} t USING (unit_id) "
                "WHERE u.metric_id = ? GROUP BY ALL", [metric_id]).fetchall())
            assert set(rows) == {a["id"] for a in ABLATIONS}, metric_id
            assert all(n > 0 for n in rows.values()), (metric_id, rows)


def test_mean_asr_records_the_slice_it_overrides(matrix_db):
    db, _ = matrix_db
    with Store(db, read_only=True) as store:
        counts = dict(store.con.execute(
            "SELECT ablation_id, min(params_entries) FROM generations WHERE k = 1 GROUP BY ALL").fetchall())
    # mean over the query replaces the same slice undifferentiated scales; over the output, what scaling scales
    assert counts["mean-q"] == counts["ua"] > 0
    assert counts["mean-out"] == counts["sc"] == counts["zero"] > 0
