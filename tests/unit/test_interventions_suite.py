"""The interventions section: validation, and fit/unit identity by content (no torch, no model)."""

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
        "name": "iv",
        "models": [{"id": "m", "kind": "hf", "path": str(tmp_path / "model")}],
        "datasets": [{"id": "harm", "kind": "jsonl", "path": str(tmp_path / "harm.jsonl"), "column": "p"},
                     {"id": "safe", "kind": "jsonl", "path": str(tmp_path / "safe.jsonl"), "column": "p"}],
        "ablations": [{"id": "ua", "kind": "undifferentiated"}, {"id": "sc", "kind": "scaling"}],
        "interventions": [{"id": "rd", "kind": "refusal_direction", "fit": {"harmful": "harm", "harmless": "safe"}},
                          {"id": "fixed", "kind": "heads", "heads": ["0-1"]}],
        "metrics": [{"id": "asr-rd", "kind": "asr", "intervention": "rd", "datasets": ["harm"]},
                    {"id": "asr-fixed", "kind": "asr", "intervention": "fixed", "datasets": ["harm"]}],
    }


def units(data):
    return {u.metric.id: u for u in plan.expand(from_dict(copy.deepcopy(data)))}


def test_valid_suite_has_no_problems(data):
    assert problems(data) == []
    suite = from_dict(data)
    assert [e.id for e in suite.interventions] == ["rd", "fixed"]
    assert suite.intervention("rd").get("fit") == {"harmful": "harm", "harmless": "safe"}


def test_every_problem_reported_with_its_pointer(data):
    data["interventions"] += [{"id": "sn", "kind": "safety_neurons", "fit": {"harmful": "harm"}, "neuron": 3},
                              {"id": "x", "kind": "actsv"},
                              {"id": "d", "kind": "setdiff", "fit": {"harmful": "nope", "harmless": "safe"}}]
    data["metrics"] += [{"id": "a", "kind": "asr", "intervention": "zz"}, {"id": "b", "kind": "asr"},
                        {"id": "c", "kind": "asr", "intervention": "rd", "heads": ["0-1"]},
                        {"id": "e", "kind": "asr", "intervention": "rd", "k": 2}]
    found = "\n".join(problems(data))
    for expected in ("/interventions/2/neuron: unknown key for intervention kind 'safety_neurons' (did you mean 'neurons'?)",
                     "/interventions/2/fit: safety_neurons is fitted on reference data too",
                     "/interventions/3/kind: unknown intervention kind 'actsv' (did you mean 'actsvd'?)",
                     "/interventions/4/fit/harmful: no dataset with id 'nope'",
                     "/metrics/2/intervention: no intervention with id 'zz'",
                     "/metrics/3: asr needs exactly one of heads",
                     "/metrics/4: asr needs exactly one of heads",
                     "/metrics/5/k: k counts heads"):
        assert expected in found, found


def test_one_unit_per_model_and_dataset_whatever_the_ablations(data):
    found = plan.expand(from_dict(data))
    assert sorted(u.metric.id for u in found) == ["asr-fixed", "asr-rd"]
    rd = units(data)["asr-rd"]
    assert rd.spec["ablation"] == {"kind": "none"} and "intervention" not in rd.spec["metric"]
    assert rd.spec["intervention"]["fit_id"].startswith("f")
    assert units(data)["asr-fixed"].spec["intervention"]["heads"] == ["0-1"]


def test_ids_follow_content_not_labels(data, tmp_path):
    before = units(data)["asr-rd"]
    renamed = copy.deepcopy(data)
    renamed["interventions"][0]["id"] = "direction"
    renamed["metrics"][0]["intervention"] = "direction"
    renamed["datasets"][1]["id"] = "benign"
    renamed["interventions"][0]["fit"]["harmless"] = "benign"
    assert units(renamed)["asr-rd"].unit_id == before.unit_id
    params = copy.deepcopy(data)
    params["interventions"][0]["n_val"] = 4
    changed = units(params)["asr-rd"]
    assert changed.spec["intervention"]["fit_id"] != before.spec["intervention"]["fit_id"]
    assert changed.unit_id != before.unit_id
    (tmp_path / "safe.jsonl").write_text(json.dumps({"p": "other text"}) + "\n")
    assert units(data)["asr-rd"].spec["intervention"]["fit_id"] != before.spec["intervention"]["fit_id"]


def test_registry_lists_every_intervention_kind():
    from click.testing import CliRunner

    from shb.cli import main

    out = CliRunner().invoke(main, ["ls"]).output
    assert "intervention kinds:" in out
    for kind in ("heads", "refusal_direction", "layers", "actsvd", "setdiff", "safety_neurons"):
        assert f"  {kind} " in out


def test_alpaca_dataset_keeps_instructions_without_input(tmp_path):
    from shb import datasets
    from shb.errors import UsageError

    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Give three tips.", "input": "", "output": "..."},
                                {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
                                {"instruction": "Name a colour.", "input": "", "output": "red"}]))
    prompts = datasets.load({"kind": "alpaca", "path": str(path)})
    assert [(p.prompt_id, p.text) for p in prompts] == [(0, "Give three tips."), (2, "Name a colour.")]
    assert len(datasets.load({"kind": "alpaca", "path": str(path), "with_input": True})) == 3
    assert problems({"name": "a", "models": [{"id": "m", "kind": "toy"}], "ablations": [{"id": "u", "kind": "zero"}],
                     "datasets": [{"id": "al", "kind": "alpaca", "path": str(path)}],
                     "metrics": [{"id": "s", "kind": "ships"}]}) == []
    path.write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(UsageError, match="no 'instruction' field"):
        datasets.load({"kind": "alpaca", "path": str(path)})


def test_table1_suite_is_valid_and_measures_every_method():
    from tests.conftest import REPO

    data = json.loads((REPO / "suites" / "paper-table1.json").read_text())
    assert problems(data) == []
    kinds = {e["kind"] for e in data["interventions"]}
    assert kinds == {"refusal_direction", "layers", "actsvd", "setdiff", "safety_neurons"}
    measured = {m["intervention"] for m in data["metrics"] if "intervention" in m}
    assert measured == {e["id"] for e in data["interventions"]}
    assert all(m["id"].startswith("asr-table1-") for m in data["metrics"] if m["kind"] == "asr")


@pytest.mark.parametrize("name", ["paper-table1.json", "paper-mini.json"])
def test_table1_selects_and_fits_on_one_part_and_measures_on_the_held_out_part(name):
    """Issue 22: every Table 1 method is chosen or fitted on the select part of one seeded split and
    measured on its held-out part (and nowhere it was chosen), with one format, decoding and judge."""
    from tests.conftest import REPO

    data = json.loads((REPO / "suites" / name).read_text())
    datasets = {d["id"]: d for d in data["datasets"]}
    metrics = {m["id"]: m for m in data["metrics"]}
    table1 = [m for m in data["metrics"] if m["id"].startswith("asr-table1-")]
    parts = {d["holdout"]["part"]: d for d in datasets.values() if "holdout" in d}
    assert set(parts) == {"select", "measure"}
    select, measure = parts["select"], parts["measure"]
    assert {k: v for k, v in select.items() if k not in ("id", "holdout", "description")} == \
        {k: v for k, v in measure.items() if k not in ("id", "holdout", "description")}   # one source, one format
    assert {**select["holdout"], "part": None} == {**measure["holdout"], "part": None}   # one split
    for iv in data["interventions"]:
        assert iv["fit"]["harmful"] == select["id"], iv["id"]
    for metric in table1:
        assert measure["id"] in metric["datasets"] and select["id"] not in metric["datasets"], metric["id"]
        assert {datasets[d]["format"] for d in metric["datasets"]} == {select["format"]}, metric["id"]
        if "heads" in metric:
            chooser = metrics[metric["heads"].split(":", 1)[1]]
            assert metric["heads_dataset"] == select["id"] and chooser["datasets"] == [select["id"]]
    settings = {(m["judge"], json.dumps(m["decoding"]), m["max_new_tokens"], tuple(m["datasets"])) for m in table1}
    assert len(settings) == 1, settings
