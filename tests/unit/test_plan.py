"""Plan: stable unit ids that hash what changes results and nothing else; no torch needed."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shb import plan, suite

REPO = Path(__file__).resolve().parents[2]
# Any prompt file inside the repository serves: these tests are about ids, not about a benchmark.
PROMPTS = {"kind": "jsonl", "path": str(REPO / "suites" / "data" / "toy-benign-chats.jsonl"), "column": "text"}

BASE = {
    "name": "p",
    "models": [{"id": "m", "kind": "hf", "path": "some/model", "geometry": {"layers": 4, "heads": 8}}],
    "datasets": [{"id": "mi", **PROMPTS, "limit": 10}],
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
    # 4 layers x 8 heads: the engine starts a head of layer l on the states entering l, (4 - l) / 4 of a
    # forward: 8 x (1 + 3/4 + 1/2 + 1/4) = 20, plus the base pass, per prompt.
    assert unit.cost_forwards == 10 * (20 + 1)
    naive = copy.deepcopy(BASE)
    naive["metrics"][0]["strategy"] = "naive"  # the paper's loop: a whole forward per head
    assert plan.plan(suite.from_dict(naive))[0].cost_forwards == 10 * (4 * 8 + 1)


def test_plan_runs_without_torch(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(BASE))
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "from shb.cli import main; sys.argv = ['shb', 'plan', %r, '--format', 'json']; main()" % str(path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["status"] == "pending" and rows[0]["forwards"] == 210


def test_asr_on_a_missing_upstream_result_is_a_plan_time_error():
    import pytest

    from shb.errors import UsageError

    data = copy.deepcopy(BASE)
    data["datasets"].append({"id": "adv", **PROMPTS, "limit": 5, "seed": 1})
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



def test_heads_found_under_one_ablation_are_applied_under_another():
    """heads_ablation: Sahara's heads found with UA, scaled with SC (the paper's "scaling the same heads"):
    the SC unit reads the UA Sahara unit; naming the cell's own ablation is the same unit as leaving it
    out; an unknown ablation or a source without upstream is refused with its pointer."""
    data = {"name": "abl", "models": [{"id": "toy", "kind": "toy", "seed": 0}],
            "datasets": [{"id": "h", "kind": "toy-harmful", "limit": 4}],
            "ablations": [{"id": "ua", "kind": "undifferentiated"}, {"id": "sc", "kind": "scaling"}],
            "metrics": [{"id": "sahara", "kind": "sahara", "steps": 1, "ablations": ["ua"]},
                        {"id": "asr", "kind": "asr", "heads": "sahara:sahara", "heads_ablation": "ua", "k": [1]}]}
    units = {(u.metric.id, u.ablation.id): u for u in plan.expand(suite.from_dict(data))}
    assert set(units) == {("sahara", "ua"), ("asr", "ua"), ("asr", "sc")}
    sahara = units[("sahara", "ua")].unit_id
    assert units[("asr", "sc")].spec["upstream"] == sahara == units[("asr", "ua")].spec["upstream"]
    assert units[("asr", "sc")].spec["metric"]["heads_ablation"] == "ua"
    plain = copy.deepcopy(data)
    del plain["metrics"][1]["heads_ablation"]
    plain["metrics"][1]["ablations"] = ["ua"]
    assert [u.unit_id for u in plan.expand(suite.from_dict(plain)) if u.metric.id == "asr"] == \
        [units[("asr", "ua")].unit_id]
    without = copy.deepcopy(plain)
    without["metrics"][1]["ablations"] = ["ua", "sc"]
    with pytest.raises(Exception, match="ablation 'sc'.*heads_ablation"):
        plan.expand(suite.from_dict(without))
    for edit, message in [({"heads_ablation": "nope"}, "heads_ablation: no ablation with id 'nope'"),
                          ({"heads": "random", "heads_ablation": "ua"}, "heads_ablation: only heads found by")]:
        bad = copy.deepcopy(data)
        bad["metrics"][1].update(edit)
        with pytest.raises(Exception, match=message):
            suite.from_dict(bad)


def _rate_suite(dtype="float32"):
    data = copy.deepcopy(BASE)
    data["models"][0]["geometry"]["params"] = 1_000_000_000
    data["models"][0]["dtype"] = dtype
    data["datasets"] = [{"id": "h5", "kind": "toy-harmful", "limit": 5}, {"id": "h10", "kind": "toy-harmful", "limit": 10}]
    return suite.from_dict(data)


def _store_with_done(tmp_path, unit_id, device, chunk_seconds):
    from shb.store import Store

    store = Store(tmp_path / "r.duckdb")
    with store.transaction():
        store.insert("runs", [{"run_id": "r1", "device": device}])
        store.insert("units", [{"unit_id": unit_id, "run_id": "r1", "status": "done", "seconds": 99.0}])
        store.insert("chunks", [{"unit_id": unit_id, "chunk": f"c{i}", "run_id": "r1", "seconds": s}
                                for i, s in enumerate(chunk_seconds)])
    return store


def test_plan_estimates_from_measured_rate_of_the_same_model_and_device(tmp_path):
    """A done unit's committed chunk seconds over its forwards price the pending unit of the same model,
    device type and metric kind; another device falls back to FLOPs; the plan says which."""
    s = _rate_suite()
    done, pending = plan.expand(s)
    store = _store_with_done(tmp_path, done.unit_id, "cuda:0", [3.0, 5.0])
    try:
        units = {u.unit_id: u for u in plan.plan(s, store, device="cuda")}
        per_forward = 8.0 / units[done.unit_id].cost_forwards  # chunk seconds, not the last run's 99 s
        assert units[pending.unit_id].cost_forwards == 2 * units[done.unit_id].cost_forwards
        assert units[pending.unit_id].cost_seconds == pytest.approx(per_forward * units[pending.unit_id].cost_forwards)
        assert units[pending.unit_id].cost_basis.startswith("measured") and "cuda" in units[pending.unit_id].cost_basis
        on_cpu = {u.unit_id: u for u in plan.plan(s, store, device="cpu")}
        assert on_cpu[pending.unit_id].cost_basis.startswith("FLOPs: float32 on cpu")
    finally:
        store.close()


def test_plan_prices_a_suite_from_another_suites_done_units_of_the_same_model(tmp_path):
    """A done unit of another suite (not in this plan) prices this plan's units of the same model content,
    device type and metric kind, its work rebuilt from its stored spec, prompt count and model geometry;
    another model's unit does not."""
    import json as json_

    from shb.store import Store

    s = _rate_suite()
    units = plan.expand(s)
    other_model = {**units[0].spec["model"], "weights": "something else"}
    store = Store(tmp_path / "r.duckdb")
    try:
        with store.transaction():
            store.insert("runs", [{"run_id": "r1", "device": "cpu"}])
            store.insert("models", [{"model_id": "elsewhere-m", "n_layers": 4, "n_heads": 8}])
            store.insert("prompts", [{"dataset_id": "three", "prompt_id": i, "text": "x"} for i in range(3)])
            # 3 prompts x (1 + 20) forward equivalents on 4 x 8 heads (see test_cost_estimate_from_geometry_hint)
            store.insert("units", [
                {"unit_id": "elsewhere", "run_id": "r1", "status": "done", "metric_kind": "ships",
                 "model_id": "elsewhere-m", "dataset_id": "three",
                 "spec": json_.dumps({**units[0].spec, "metric": {"kind": "ships"}})},
                {"unit_id": "other-model", "run_id": "r1", "status": "done", "metric_kind": "ships",
                 "model_id": "elsewhere-m", "dataset_id": "three",
                 "spec": json_.dumps({**units[0].spec, "model": other_model})}])
            store.insert("chunks", [{"unit_id": "elsewhere", "chunk": "c", "run_id": "r1", "seconds": 63.0},
                                    {"unit_id": "other-model", "chunk": "c", "run_id": "r1", "seconds": 1e6}])
        priced = plan.plan(s, store, device="cpu")
        assert all(u.status == "pending" for u in priced)
        for u in priced:
            assert u.cost_basis == "measured: 1e+03 ms/forward over 1 done ships unit(s) on cpu"
            assert u.cost_seconds == pytest.approx(1.0 * u.cost_forwards)
    finally:
        store.close()


@pytest.mark.parametrize("dtype,device,rate", [("float32", "cpu", 1e11), ("bfloat16", "cuda", 2e14),
                                               ("float32", "cuda", 2e13)])
def test_plan_flops_estimate_uses_the_dtype_the_suite_runs(dtype, device, rate):
    s = _rate_suite(dtype)
    unit = plan.plan(s, device=device)[0]
    assert unit.cost_seconds == pytest.approx(2.0 * 1e9 * plan.ASSUMED_PROMPT_TOKENS * unit.cost_forwards / rate)
    assert unit.cost_basis == f"FLOPs: {dtype} on {device} at {rate:.0e} FLOP/s (assumed)"


def _fitted_suite():
    data = copy.deepcopy(BASE)
    data["models"][0]["geometry"]["params"] = 1_000_000_000
    data["datasets"] = [{"id": "h5", "kind": "toy-harmful", "limit": 5}, {"id": "h10", "kind": "toy-harmful", "limit": 10}]
    data["interventions"] = [{"id": "rd", "kind": "refusal_direction", "n_val": 2,
                              "fit": {"harmful": "h10", "harmless": "h5"}}]
    data["metrics"] = [{"id": "a16", "kind": "asr", "intervention": "rd", "max_new_tokens": 16, "datasets": ["h5"]},
                       {"id": "a32", "kind": "asr", "intervention": "rd", "max_new_tokens": 32, "datasets": ["h5"]}]
    return suite.from_dict(data)


def test_plan_prices_a_pending_fit_once_and_a_stored_fit_not_at_all(tmp_path):
    """The first unit that needs a fit not in the database pays for it (the method's fit_work: refusal
    direction's candidates are layers below 0.8 L x 5 positions, each scored on the held-out prompts); a
    second unit applying the same fit reads it; with the fit stored, neither pays."""
    from shb.baselines import refusal_direction
    from shb.store import Store

    s = _fitted_suite()
    first, second = plan.plan(s, device="cpu")
    fit = refusal_direction.fit_work({"n_val": 2}, 10, 5, 4, 32)
    # 4 layers: candidates in layers 0..3 (ceil(0.8 x 4) = 4) x 5 positions, each on 2 + 2 ablated + 2 added
    assert fit == {"forward": 2 * (8 + 3) + 2 + 2 + 4 * 5 * (2 + 2 + 2), "generate": 0.0}
    fit = fit["forward"]
    assert first.cost_forwards == plan.forwards_of(first, {"layers": 4, "heads": 8}) + fit
    assert second.cost_forwards == plan.forwards_of(second, {"layers": 4, "heads": 8})
    assert "its fit f" in first.cost_basis and "forward at FLOPs" in first.cost_basis
    assert "its fit" not in second.cost_basis
    assert first.cost_seconds / first.cost_forwards == pytest.approx(second.cost_seconds / second.cost_forwards)
    store = Store(tmp_path / "r.duckdb")
    try:
        with store.transaction():
            store.insert("fits", [{"fit_id": first.spec["intervention"]["fit_id"], "kind": "refusal_direction"}])
        stored = plan.plan(s, store, device="cpu")
        assert [u.cost_forwards for u in stored] == [plan.forwards_of(u, {"layers": 4, "heads": 8}) for u in stored]
    finally:
        store.close()


def test_measured_rate_leaves_out_fit_chunks(tmp_path):
    """A done unit's fit chunk (minutes, paid once) does not inflate the rate of its kind: its other chunks'
    seconds over its forwards are the rate."""
    s = _rate_suite()
    done, pending = plan.expand(s)
    store = _store_with_done(tmp_path, done.unit_id, "cpu", [3.0, 5.0])
    try:
        with store.transaction():
            store.insert("chunks", [{"unit_id": done.unit_id, "chunk": "fit", "run_id": "r1", "seconds": 1000.0}])
        units = {u.unit_id: u for u in plan.plan(s, store, device="cpu")}
        per_forward = 8.0 / units[done.unit_id].cost_forwards
        assert units[pending.unit_id].cost_seconds == pytest.approx(per_forward * units[pending.unit_id].cost_forwards)
    finally:
        store.close()


def test_a_fit_that_generates_is_priced_at_the_generate_rate(tmp_path):
    """A fit's greedy answers (the safety-layer fit: every layer skipped in turn) cost what answers cost:
    the measured generate-class rate, not the forward one; its passes over given text the forward rate."""
    from shb.baselines import actsvd, layers

    assert layers.fit_work({}, 8, 24, 28, 16) == {"forward": 0.0, "generate": 29 * 8 * (1 + 16 / 48)}
    both = actsvd.fit_work({}, 8, 4, 28, 16)
    assert both["generate"] == pytest.approx(12 * (1 + 16 / 48))
    assert both["forward"] == pytest.approx(14.5 * 12 * (1 + 16 / 48))
    s = _fitted_suite()
    unit = plan.expand(s)[0]
    measured = {(plan._hash(unit.spec["model"]), "cpu", "ships"): (1.0, 1),
                (plan._hash(unit.spec["model"]), "cpu", "asr"): (3.0, 1)}
    forwards, seconds, basis = plan.estimate_fit(unit, {"layers": 4, "heads": 8}, "cpu", measured)
    assert seconds == pytest.approx(forwards * 1.0) and "forward" in basis   # refusal direction: passes only
    setdiff_unit = copy.deepcopy(unit)
    setdiff_unit.spec["intervention"]["kind"] = "setdiff"
    setdiff_unit.spec["intervention"]["fit"]["params"] = {}
    forwards, seconds, _ = plan.estimate_fit(setdiff_unit, {"layers": 4, "heads": 8}, "cpu", measured)
    answers = 15 * (1 + 32 / 48)
    assert forwards == pytest.approx(2 * answers) and seconds == pytest.approx(answers * 3.0 + answers * 1.0)


def _k0_suite():
    data = copy.deepcopy(BASE)
    data["models"][0]["geometry"]["params"] = 1_000_000_000
    data["datasets"] = [{"id": "h5", "kind": "toy-harmful", "limit": 5}, {"id": "h10", "kind": "toy-harmful", "limit": 10}]
    data["ablations"].append({"id": "sc", "kind": "scaling", "epsilon": 1e-5})
    data["metrics"] = [{"id": "a", "kind": "asr", "heads": ["0-1", "1-2"], "k": [0, 1, 2], "max_new_tokens": 16,
                        "datasets": ["h5"], "ablations": ["ua", "sc"]},
                       {"id": "b", "kind": "asr", "heads": ["0-1"], "k": [0, 1], "max_new_tokens": 16,
                        "datasets": ["h5", "h10"], "ablations": ["ua"]},
                       {"id": "c", "kind": "asr", "heads": ["0-1"], "k": [0, 1], "max_new_tokens": 8,
                        "datasets": ["h5"], "ablations": ["ua"]}]
    return suite.from_dict(data)


def test_plan_prices_the_unmodified_answers_once_per_prompts_and_settings(tmp_path):
    """A run computes the k = 0 answers once for every unit on the same prompts with the same generation
    settings (UnitContext.unmodified_answers): the first pending unit pays, the others do not; other
    prompts or another max_new_tokens pay again; a done unit pays nothing and does not pay for others."""
    s = _k0_suite()
    units = {(u.metric.id, u.dataset.id, u.ablation.id): u for u in plan.plan(s, device="cpu")}
    geom = {"layers": 4, "heads": 8}
    full = {key: plan.forwards_of(u, geom) for key, u in units.items()}
    answer = lambda n, new: n * (1 + new / 48)  # noqa: E731 - one answer per prompt, as asr prices it
    assert units[("a", "h5", "ua")].cost_forwards == full[("a", "h5", "ua")]            # the first pays
    assert units[("a", "h5", "sc")].cost_forwards == full[("a", "h5", "sc")] - int(answer(5, 16))
    assert units[("b", "h5", "ua")].cost_forwards == full[("b", "h5", "ua")] - int(answer(5, 16))
    assert "its k = 0 answers are a's" in units[("b", "h5", "ua")].cost_basis
    assert units[("b", "h10", "ua")].cost_forwards == full[("b", "h10", "ua")]          # other prompts
    assert units[("c", "h5", "ua")].cost_forwards == full[("c", "h5", "ua")]            # other settings
    # with the first unit done, the next pending one computes them
    store = _store_with_done(tmp_path, units[("a", "h5", "ua")].unit_id, "cpu", [3.0])
    try:
        after = {(u.metric.id, u.dataset.id, u.ablation.id): u for u in plan.plan(s, store, device="cpu")}
        assert after[("a", "h5", "sc")].cost_forwards == full[("a", "h5", "sc")]
        assert after[("b", "h5", "ua")].cost_forwards == full[("b", "h5", "ua")] - int(answer(5, 16))
    finally:
        store.close()


def test_measured_rate_counts_reused_answers_once_per_run(tmp_path):
    """Two done units of one run that shared their k = 0 answers: the rate is their seconds over the work
    the run did (the second unit's k = 0 answers not counted), so a pending unit is priced at it."""
    from shb.store import Store

    s = _k0_suite()
    units = {(u.metric.id, u.dataset.id, u.ablation.id): u for u in plan.expand(s)}
    first, second = units[("a", "h5", "ua")], units[("a", "h5", "sc")]
    store = Store(tmp_path / "r.duckdb")
    try:
        with store.transaction():
            store.insert("runs", [{"run_id": "r1", "device": "cpu"}])
            store.insert("units", [{"unit_id": u.unit_id, "run_id": "r1", "status": "done", "metric_kind": "asr",
                                    "spec": json.dumps(u.spec), "updated_at": f"2026-01-01 00:00:0{i}"}
                                   for i, u in enumerate((first, second))])
            store.insert("chunks", [{"unit_id": u.unit_id, "chunk": "k000", "run_id": "r1", "seconds": 6.0}
                                    for u in (first, second)])
        geom = {"layers": 4, "heads": 8}
        work = plan.forwards_of(first, geom) + plan.forwards_of(second, geom) - int(first.n_prompts * (1 + 16 / 48))
        priced = {(u.metric.id, u.dataset.id, u.ablation.id): u for u in plan.plan(s, store, device="cpu")}
        pending = priced[("c", "h5", "ua")]
        assert pending.cost_basis.startswith("measured")
        assert pending.cost_seconds == pytest.approx(12.0 / work * pending.cost_forwards)
    finally:
        store.close()
