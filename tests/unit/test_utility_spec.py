"""The utility metric's suite keys, checks and generated toy data (no model, no lm-eval)."""

import copy
import json

import pytest

from shb import plan
from shb.errors import SuiteError
from shb.suite import from_dict
from shb.utility import spec, toytasks
from tests.conftest import REPO

SUITE = {
    "name": "u",
    "models": [{"id": "toy", "kind": "toy"}],
    "datasets": [{"id": "harm", "kind": "toy-harmful", "limit": 8, "format": "chat"},
                 {"id": "benign", "kind": "toy-benign", "limit": 8, "format": "chat"}],
    "ablations": [{"id": "ua", "kind": "undifferentiated"}],
    "metrics": [{"id": "sahara", "kind": "sahara", "steps": 2, "datasets": ["harm"]},
                {"id": "utility", "kind": "utility", "heads": "sahara:sahara", "k": [2], "datasets": ["harm"],
                 "lm_eval": {"tasks": ["shb_toy_topic"], "apply_chat_template": True},
                 "over_refusal": {"dataset": "benign"}, "benign_loss": {"dataset": "benign"}}],
}


def problems_of(change):
    data = copy.deepcopy(SUITE)
    change(data["metrics"][1])
    with pytest.raises(SuiteError) as info:
        from_dict(data)
    return info.value.problems


def test_valid_suite_and_parts():
    suite = from_dict(copy.deepcopy(SUITE))
    params = suite.metrics[1].params
    assert spec.parts(params) == ["lm_eval", "over_refusal", "benign_loss"]
    assert spec.dataset_refs(params) == ["benign"]
    assert spec.ks(params) == [0, 2]                        # the unmodified model is always measured
    assert spec.ks({"heads": ["1-2", "0-3"]}) == [0, 2]
    assert spec.ks({"heads": []}) == [0]
    assert spec.ks({"intervention": "rd"}) == [0, 1]        # a fitted baseline beside the unmodified model


def test_ships_per_prompt_is_refused_with_the_reason():
    found = problems_of(lambda m: m.update(heads="ships_per_prompt"))
    assert any("/metrics/1/heads" in p and "one model on shared documents" in p for p in found), found


@pytest.mark.parametrize("change, expected", [
    (lambda m: m["over_refusal"].update(dataset="nope"), "/metrics/1/over_refusal/dataset: no dataset with id 'nope'"),
    (lambda m: [m.pop(p) for p in ("lm_eval", "over_refusal", "benign_loss")], "at least one of lm_eval"),
    (lambda m: m["lm_eval"].update(tasks=["shb_toy_nothing"]), "unknown generated task 'shb_toy_nothing'"),
    (lambda m: m["over_refusal"].update(judge="classifier"), "/metrics/1/over_refusal/judge"),
    (lambda m: m["lm_eval"].update(shots=1), "/metrics/1/lm_eval"),
    (lambda m: m.pop("heads"), "utility needs heads"),
    (lambda m: m.update(intervention="rd"), "utility takes heads or intervention, not both"),
    (lambda m: (m.pop("heads"), m.pop("k"), m.update(intervention="nope")),
     "/metrics/1/intervention: no intervention with id 'nope'"),
])
def test_bad_utility_entries(change, expected):
    found = problems_of(change)
    assert any(expected in p for p in found), found


def test_unit_id_hashes_the_content_of_the_benign_dataset():
    """The benign prompts are read from another dataset entry: their content is part of the unit id."""
    def ids(limit):
        data = copy.deepcopy(SUITE)
        data["datasets"][1]["limit"] = limit
        units = plan.expand(from_dict(data))
        return {u.metric.id: u.unit_id for u in units if u.dataset.id == "harm"}
    a, b = ids(8), ids(9)
    assert a["sahara"] == b["sahara"] and a["utility"] != b["utility"]
    unit = next(u for u in plan.expand(from_dict(copy.deepcopy(SUITE))) if u.metric.id == "utility")
    assert set(unit.spec["reads"]) == {"benign"} and unit.spec["reads"]["benign"]["format"] == "chat"
    assert unit.spec["metric"]["seed"] == 0                  # random head sets draw with the suite seed


def test_toy_topic_documents():
    from shb.models.toy import words

    docs = toytasks.topic_docs(40)
    assert len(docs) == 40 and len({d["prompt"] for d in docs}) == 40
    assert {d["label"] for d in docs} == set(range(toytasks.N_CHOICES))     # the answer is not always first
    for d in docs:
        assert len(set(d["choices"])) == toytasks.N_CHOICES
        right = d["choices"][d["label"]]
        assert any(right.endswith(body) for body in words.BODIES[d["topic"]])
        openings = {c.split(".")[0] for c in d["choices"]}
        assert len(openings) == 1                             # choices differ only in the body


def test_written_task_files(tmp_path):
    toytasks.write(tmp_path, ["shb_toy_topic"], n=5)
    lines = (tmp_path / "shb_toy_topic.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == toytasks.topic_docs(5)
    yaml = (tmp_path / "shb_toy_topic.yaml").read_text()
    assert "task: shb_toy_topic" in yaml and str((tmp_path / "shb_toy_topic.jsonl").resolve()) in yaml


def test_shipped_benign_chats_match_the_generator():
    shipped = (REPO / "suites" / "data" / "toy-benign-chats.jsonl").read_text().splitlines()
    assert [json.loads(x)["text"] for x in shipped] == toytasks.benign_chats()


def test_wilson_bounds_are_exact_at_zero_and_one():
    from shb.reports.stats import wilson_interval

    assert wilson_interval(0, 12)[0] == 0.0 and wilson_interval(12, 12)[1] == 1.0
    lo, hi = wilson_interval(3, 12)
    assert 0 < lo < 0.25 < hi < 1
