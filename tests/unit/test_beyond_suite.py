"""Issue 23 without a model: the new suite entries validate (and bad ones say where), and the
method-overlap report ranks, compares and places heads as constructed in a hand-filled store."""

from __future__ import annotations

import copy
import json

import pytest

from shb import plan
from shb.suite import from_dict, problems


@pytest.fixture()
def data(tmp_path):
    for stem, rows in (("harm", ["a b", "c d", "e f"]), ("safe", ["g h", "i j", "k l"])):
        (tmp_path / f"{stem}.jsonl").write_text("".join(json.dumps({"p": r}) + "\n" for r in rows))
    return {
        "name": "beyond",
        "models": [{"id": "m", "kind": "hf", "path": str(tmp_path / "model")},
                   {"id": "base", "kind": "hf", "path": str(tmp_path / "base")}],
        "datasets": [{"id": "harm", "kind": "jsonl", "path": str(tmp_path / "harm.jsonl"), "column": "p"},
                     {"id": "safe", "kind": "jsonl", "path": str(tmp_path / "safe.jsonl"), "column": "p"}],
        "ablations": [{"id": "ua", "kind": "undifferentiated"}],
        "interventions": [{"id": "rd", "kind": "refusal_direction", "fit": {"harmful": "harm", "harmless": "safe"}},
                          {"id": "swap", "kind": "attention_swap", "fit": {"reference": "base"}}],
        "metrics": [{"id": "sahara", "kind": "sahara", "steps": 2, "datasets": ["harm"], "models": ["m"]},
                    {"id": "rdsha", "kind": "rdsha", "intervention": "rd", "datasets": ["harm"], "models": ["m"]},
                    {"id": "att", "kind": "attention", "heads": "sahara:sahara", "k": 2, "benign": "safe",
                     "datasets": ["harm"], "models": ["m"]},
                    {"id": "asr-swap", "kind": "asr", "intervention": "swap", "datasets": ["harm"], "models": ["m"]}],
    }


def test_new_entries_validate_and_plan(data):
    assert problems(data) == []
    units = {u.metric.id: u for u in plan.expand(from_dict(copy.deepcopy(data)))}
    assert units["rdsha"].spec["intervention"]["kind"] == "refusal_direction"
    assert units["asr-swap"].spec["intervention"]["fit"]["reference"] is not None
    assert units["att"].spec["upstream"] == units["sahara"].unit_id
    assert set(units["att"].spec["reads"]) == {"safe"}  # the benign prompts' content keys the unit


def test_benign_prompts_content_changes_the_attention_unit(data, tmp_path):
    before = {u.metric.id: u.unit_id for u in plan.expand(from_dict(copy.deepcopy(data)))}
    (tmp_path / "safe.jsonl").write_text(json.dumps({"p": "other"}) + "\n")
    after = {u.metric.id: u.unit_id for u in plan.expand(from_dict(copy.deepcopy(data)))}
    assert before["att"] != after["att"] and before["rdsha"] != after["rdsha"]  # rdsha: its fit's harmless data
    assert before["sahara"] == after["sahara"]


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["metrics"][1].update(intervention="swap"),
     "/metrics/1/intervention: rdsha needs a refusal_direction intervention; 'swap' is of kind 'attention_swap'"),
    (lambda d: d["metrics"][1].pop("intervention"), "/metrics/1"),
    (lambda d: d["metrics"][2].update(benign="nope"), "/metrics/2/benign: no dataset with id 'nope'"),
    (lambda d: d["interventions"][1].update(fit={}), "/interventions/1/fit: attention_swap is fitted on reference"),
    (lambda d: d["interventions"][0]["fit"].pop("harmful"), "/interventions/0/fit: refusal_direction is fitted on harmful"),
    (lambda d: d["interventions"][1].update(component="embeddings"), "/interventions/1/component"),
    (lambda d: d["models"][0].update(kind="toy", align_dropout=1.5) or d["models"][0].pop("path"), "/models/0/align_dropout"),
])
def test_bad_entries_name_where(data, change, expected):
    change(data)
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found


def test_method_overlap_from_a_hand_filled_store(tmp_path):
    from shb.reports import method_overlap as mo
    from shb.reports import overlap
    from shb.store import Store

    with Store(tmp_path / "x.duckdb") as store:
        with store.transaction():
            for unit, metric, kind, ablation in (("u1", "ships", "ships", "ua"), ("u2", "gs", "ships_dataset", "ua"),
                                                 ("u3", "sahara", "sahara", "ua"), ("u4", "rdsha", "rdsha", "ua")):
                store.insert("units", [{"unit_id": unit, "model_id": "m", "dataset_id": "d", "ablation_id": ablation,
                                        "metric_id": metric, "metric_kind": kind}])
            heads = [(layer, head) for layer in range(3) for head in range(2)]
            # ships favours layer 0, generalized Ships layer 2, Sahara picks 2-1 then 0-0, RDSHA layer 2 (sign-free)
            store.insert("ships", [{"unit_id": "u1", "model_id": "m", "dataset_id": "d", "ablation_id": "ua",
                                    "prompt_id": p, "layer": l, "head": h, "score": 10.0 - 3 * l - h + p}
                                   for p in range(2) for l, h in heads])
            store.insert("ships_dataset", [{"unit_id": "u2", "model_id": "m", "dataset_id": "d", "ablation_id": "ua",
                                            "layer": l, "head": h, "score": float(3 * l + h), "rank_r": 1}
                                           for l, h in heads])
            store.insert("sahara_steps", [{"unit_id": "u3", "step": 0, "layer": l, "head": h, "score": float(l + h),
                                           "chosen": (l, h) == (2, 1)} for l, h in heads]
                         + [{"unit_id": "u3", "step": 1, "layer": 0, "head": 0, "score": 9.0, "chosen": True}])
            store.insert("rdsha", [{"unit_id": "u4", "model_id": "m", "dataset_id": "d", "ablation_id": "ua",
                                    "fit_id": "f", "prompt_id": p, "layer": l, "head": h,
                                    "projection": (-1.0 if l == 2 else 0.1) * (h + 1)}
                                   for p in range(2) for l, h in heads])
        frame = mo.scores(store, "m", "d", "ua")
    tops = overlap.top_heads(frame, 2)
    assert tops == {"ships": {(0, 0), (0, 1)}, "ships_dataset": {(2, 1), (2, 0)},
                    "sahara": {(2, 1), (0, 0)}, "rdsha": {(2, 1), (2, 0)}}
    pairs = {(a, b): (j, rho) for a, b, j, rho in
             overlap.pairwise(frame, 2).select("result_a", "result_b", "jaccard", "spearman").iter_rows()}
    assert pairs[("ships_dataset", "rdsha")][0] == 1.0
    assert pairs[("ships", "ships_dataset")] == (0.0, pytest.approx(-1.0))
    assert pairs[("ships", "sahara")][0] == pytest.approx(1 / 3)
    layers = {r["method"]: r for r in mo.layers(frame, 2).to_dicts()}
    assert layers["ships"]["per_layer"] == "L0:2" and layers["rdsha"]["mean_layer"] == 2.0
    assert layers["sahara"]["top_heads"] == ["0-0", "2-1"]
