"""Plan: stable unit ids that hash what changes results and nothing else; no torch needed."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shb import plan, suite

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"

BASE = {
    "name": "p",
    "models": [{"id": "m", "kind": "hf", "path": "some/model", "geometry": {"layers": 4, "heads": 8}}],
    "datasets": [{"id": "mi", "kind": "maliciousinstruct", "path": str(DATA / "maliciousinstruct.txt"), "limit": 10}],
    "ablations": [{"id": "ua", "kind": "undifferentiated", "epsilon": 1e-5}],
    "metrics": [{"id": "ships", "kind": "ships"}],
}


def ids(data):
    return [u.unit_id for u in plan.expand(suite.from_dict(data))]


def changed(**edits):
    data = copy.deepcopy(BASE)
    for path, value in edits.items():
        section, index, key = path.split("__")
        data[section][int(index)][key] = value
    return data


def test_ids_are_stable_and_versioned():
    first = ids(BASE)
    assert first == ids(copy.deepcopy(BASE))
    assert len(first) == 1 and first[0].startswith("u")


def test_ids_change_with_what_changes_results():
    base = ids(BASE)[0]
    for edit in [{"ablations__0__epsilon": 1e-3}, {"datasets__0__limit": 11}, {"datasets__0__format": "template"},
                 {"models__0__path": "other/model"}, {"models__0__dtype": "bfloat16"}, {"datasets__0__seed": 3}]:
        assert ids(changed(**edit))[0] != base, edit


def test_ids_ignore_device_batch_size_strategy_and_ids():
    base = ids(BASE)[0]
    data = copy.deepcopy(BASE)
    data["defaults"] = {"device": "cuda", "batch_size": 7}
    data["metrics"][0]["strategy"] = "naive"
    data["metrics"][0]["description"] = "words"
    assert ids(data)[0] == base


def test_cross_product_and_filters():
    data = copy.deepcopy(BASE)
    data["ablations"].append({"id": "sc", "kind": "scaling"})
    data["metrics"].append({"id": "sd", "kind": "ships_dataset", "ablations": ["sc"]})
    units = plan.expand(suite.from_dict(data))
    assert [(u.ablation.id, u.metric.id) for u in units] == [("ua", "ships"), ("sc", "ships"), ("sc", "sd")]
    assert len({u.unit_id for u in units}) == 3


def test_cost_estimate_from_geometry_hint():
    (unit,) = plan.plan(suite.from_dict(BASE))
    assert unit.cost_forwards == 10 * (4 * 8 + 1)


def test_plan_runs_without_torch(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(BASE))
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "from shb.cli import main; sys.argv = ['shb', 'plan', %r, '--format', 'json']; main()" % str(path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["status"] == "pending" and rows[0]["forwards"] == 330


def test_asr_on_a_missing_upstream_result_is_a_plan_time_error():
    import pytest

    from shb.errors import UsageError

    data = copy.deepcopy(BASE)
    data["datasets"].append({"id": "adv", "kind": "advbench", "path": str(DATA / "advbench_harmful_behaviors.csv"),
                             "limit": 5})
    data["metrics"] = [{"id": "sa", "kind": "sahara", "datasets": ["mi"]},
                       {"id": "asr", "kind": "asr", "heads": "sahara:sa", "k": [0, 1]}]
    with pytest.raises(UsageError, match="metric 'asr' takes its heads from metric 'sa', which does not run on .*'adv'"):
        plan.expand(suite.from_dict(data))
    data["metrics"][1]["datasets"] = ["mi"]
    units = plan.expand(suite.from_dict(data))
    assert units[1].spec["upstream"] == units[0].unit_id


def test_asr_upstream_runs_first_whatever_the_suite_order():
    data = copy.deepcopy(BASE)
    data["metrics"] = [{"id": "asr", "kind": "asr", "heads": "sahara:sa", "k": [1]}, {"id": "sa", "kind": "sahara"}]
    assert [u.metric.id for u in plan.expand(suite.from_dict(data))] == ["sa", "asr"]


def test_heads_from_a_select_part_are_measured_on_the_held_out_part():
    """asr with heads_dataset takes the heads Sahara chose on another dataset (issue 22's fair Table 1)."""
    from shb import plan as plan_mod
    from shb.suite import from_dict

    data = {"name": "split", "models": [{"id": "toy", "kind": "toy", "seed": 0}],
            "datasets": [{"id": "sel", "kind": "toy-harmful", "holdout": {"part": "select"}, "limit": 4},
                         {"id": "meas", "kind": "toy-harmful", "holdout": {"part": "measure"}, "limit": 4}],
            "ablations": [{"id": "ua", "kind": "undifferentiated"}],
            "metrics": [{"id": "sahara", "kind": "sahara", "steps": 1, "datasets": ["sel"]},
                        {"id": "asr", "kind": "asr", "heads": "sahara:sahara", "heads_dataset": "sel", "k": [1],
                         "datasets": ["meas"]}]}
    units = {u.metric.id: u for u in plan_mod.expand(from_dict(data))}
    assert units["asr"].dataset.id == "meas" and units["asr"].spec["upstream"] == units["sahara"].unit_id
    assert units["asr"].spec["dataset"]["holdout"] == {"part": "measure", "fraction": 0.5, "seed": 0}
    bad = {**data, "metrics": [data["metrics"][0], {**data["metrics"][1], "heads_dataset": "nope"}]}
    with pytest.raises(Exception, match="heads_dataset: no dataset with id 'nope'"):
        from_dict(bad)
