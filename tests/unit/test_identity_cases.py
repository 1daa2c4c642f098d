"""Issue 32's reproduced cases that planning decides (no torch, no model): each failed on 7bedb08.

Case 3: a fit's id hashes the dtype resolved for the run's device. Case 4: a fit's reference model
loads at its fingerprinted revision in its own dtype, as its key says. Case 6: ``ships_per_prompt``
names its sweep; a bare one with two candidates is refused naming both. Case 7: the suite's seed is
part of a screened Ships unit's id. Case 8: the transformers floor is a version whose Llama forward
takes the ``cache`` keyword shb.generate passes. (Cases 1, 2 and 5 are about reports:
tests/unit/test_report_identity.py.)
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from shb import plan
from shb.errors import SuiteError
from shb.suite import from_dict, problems

REPO = Path(__file__).resolve().parents[2]
PROMPTS = {"kind": "jsonl", "path": str(REPO / "suites" / "data" / "toy-benign-chats.jsonl"), "column": "text"}


def fp(name: str, commit: str | None = None) -> dict:
    """A known fingerprint (as shb.models.fingerprint reads a cached hub model), without any download."""
    return {"weights": f"w-{name}", "tokenizer": f"t-{name}", "chat_template": None, "commit": commit}


def fitted_suite(model_dtype="auto", reference_dtype=None) -> dict:
    reference = {"id": "base", "kind": "hf", "path": "org/base"}
    if reference_dtype:
        reference["dtype"] = reference_dtype
    return {
        "name": "fits",
        "models": [{"id": "chat", "kind": "hf", "path": "org/chat", "dtype": model_dtype}, reference],
        "datasets": [{"id": "harm", **PROMPTS, "limit": 4}, {"id": "safe", **PROMPTS, "limit": 4, "seed": 1}],
        "ablations": [{"id": "ua", "kind": "undifferentiated"}],
        "interventions": [{"id": "sn", "kind": "safety_neurons", "fit": {"harmful": "harm", "reference": "base"}}],
        "metrics": [{"id": "asr-sn", "kind": "asr", "intervention": "sn", "datasets": ["harm"], "models": ["chat"]}],
        "defaults": {"dtype": "float32"},
    }


FPS = {"chat": fp("chat", "c0ffee"), "base": fp("base", "ba5e")}


def test_case3_fit_id_hashes_the_dtype_resolved_for_the_run_device():
    """dtype "auto" is float32 on the CPU and bfloat16 on CUDA: two artefacts, two fit ids."""
    suite = from_dict(fitted_suite("auto"))
    on_cpu, = plan.expand(suite, device="cpu", fps=FPS)
    on_cuda, = plan.expand(suite, device="cuda", fps=FPS)
    assert on_cpu.spec["intervention"]["fit"]["model"]["dtype"] == "float32"
    assert on_cuda.spec["intervention"]["fit"]["model"]["dtype"] == "bfloat16"
    assert on_cpu.spec["intervention"]["fit_id"] != on_cuda.spec["intervention"]["fit_id"]
    # the fit hashes the very model key its unit hashes
    assert on_cuda.spec["intervention"]["fit"]["model"] == on_cuda.spec["model"]


def test_case4_reference_model_loads_pinned_in_its_own_dtype(monkeypatch):
    """The reference model of a fit loads at the commit its fingerprint read, in its own dtype (not the
    suite's default), which is what the fit id hashes."""
    import shb.models
    from shb.baselines import fits

    unit, = plan.expand(from_dict(fitted_suite("float32", reference_dtype="bfloat16")), device="cpu", fps=FPS)
    assert unit.spec["intervention"]["fit"]["reference"]["dtype"] == "bfloat16"
    loaded = []
    monkeypatch.setattr(shb.models, "load_resolved", lambda spec, device, quiet=True: loaded.append(spec) or "lm")

    class Ctx:
        device, shared = "cpu", {}

        def cached(self, key, factory):
            return self.shared.setdefault(key, factory())

    assert fits._reference(unit, Ctx(), "base") == "lm"
    (spec,) = loaded
    assert spec["revision"] == "ba5e" and spec["dtype"] == "bfloat16" and spec["path"] == "org/base"


def ships_suite(**defaults) -> dict:
    return {"name": "s", "models": [{"id": "m", "kind": "hf", "path": "org/m", "geometry": {"layers": 2, "heads": 2}}],
            "datasets": [{"id": "d", **PROMPTS, "limit": 4}],
            "ablations": [{"id": "ua", "kind": "undifferentiated"}],
            "metrics": [{"id": "exact", "kind": "ships"},
                        {"id": "screened", "kind": "ships", "screen": {"top": 2}}],
            "defaults": defaults}


def test_case6_ships_per_prompt_names_its_sweep():
    data = ships_suite()
    data["metrics"].append({"id": "asr", "kind": "asr", "heads": "ships_per_prompt", "k": [1]})
    found = problems(data)
    assert any("'exact'" in p and "'screened'" in p and p.startswith("/metrics/2/heads") for p in found), found
    with pytest.raises(SuiteError, match="ships_per_prompt:exact"):
        from_dict(data)
    for source in ("exact", "screened"):
        data["metrics"][2]["heads"] = f"ships_per_prompt:{source}"
        assert problems(data) == []
        units = {u.metric.id: u for u in plan.expand(from_dict(data), fps={"m": fp("m")})}
        assert units["asr"].upstream == units[source].unit_id
    data["metrics"][2]["heads"] = "ships_per_prompt:nope"
    assert any("must name a metric of kind ships" in p for p in problems(data))


def test_ships_mean_names_its_sweep_and_needs_k():
    data = ships_suite()
    data["metrics"].append({"id": "asr", "kind": "asr", "heads": "ships_mean:screened", "k": [2]})
    assert problems(data) == []
    units = {u.metric.id: u for u in plan.expand(from_dict(data), fps={"m": fp("m")})}
    assert units["asr"].upstream == units["screened"].unit_id
    for heads, message in (("ships_mean:nope", "must name a metric of kind ships in this suite (exact, screened)"),
                           ("ships_mean:", "must name a metric of kind ships")):
        data["metrics"][2]["heads"] = heads
        assert any(p.startswith("/metrics/2/heads") and message in p for p in problems(data)), problems(data)
    data["metrics"][2] = {"id": "asr", "kind": "asr", "heads": "ships_mean:exact"}
    assert any("needs k" in p for p in problems(data))


def test_case7_suite_seed_is_part_of_a_screened_sweep():
    def units(seed):
        return {u.metric.id: u.unit_id for u in plan.expand(from_dict(ships_suite(seed=seed)), fps={"m": fp("m")})}

    zero, one = units(0), units(1)
    assert zero["screened"] != one["screened"]   # the screen samples with the seed
    assert zero["exact"] == one["exact"]         # an exact sweep draws nothing


def test_case8_transformers_floor_has_the_cache_keyword():
    """shb.generate passes ``cache=`` to the Llama forward and reads ``out.cache``: transformers renamed
    ``past_key_values`` to ``cache`` in 5.24.0 (read in the wheels of 5.0.0, 5.12.0, 5.20.0, 5.22.0,
    5.23.0 and 5.24.0; tests/integration/test_generate.py, test_engine.py and tests/real pass on 5.24.0)."""
    text = (REPO / "pyproject.toml").read_text()
    floor = re.search(r'"transformers>=([0-9.]+)', text).group(1)
    assert tuple(int(x) for x in floor.split(".")) >= (5, 24), floor
    source = (REPO / "shb" / "generate.py").read_text()
    assert "cache=cache" in source and "out.cache" in source   # what the floor is for


def test_fit_and_unit_read_one_resolution():
    """The fit id of an intervention is the same whether the units are expanded or the labels listed."""
    data = fitted_suite("auto")
    suite = from_dict(copy.deepcopy(data))
    r = plan.resolve(suite, device="cuda", fps=FPS)
    unit, = plan.expand(suite, resolved=r)
    assert unit.spec["intervention"] == r.intervention_key(suite.intervention("sn"), "chat")
    assert json.dumps(unit.spec, sort_keys=True) == json.dumps(plan.expand(suite, device="cuda", fps=FPS)[0].spec,
                                                               sort_keys=True)


def test_a_seed_an_older_database_left_implicit_is_not_another_content():
    """A metric label stored by 7bedb08 without the seed its screened sweep now records is the same label
    (the unit runs again under a new id); a stored seed that differs is another content, refused."""
    from shb.identity import only_later_keys

    new = {"kind": "ships", "screen": {"top": 2}, "seed": 0}
    assert only_later_keys({"kind": "metric", "old": {"kind": "ships", "screen": {"top": 2}}, "new": new})
    assert not only_later_keys({"kind": "metric", "old": {**new, "seed": 1}, "new": new})
    assert not only_later_keys({"kind": "metric", "old": {"kind": "ships", "screen": {"top": 3}}, "new": new})
    assert not only_later_keys({"kind": "dataset", "old": {"kind": "x"}, "new": {"kind": "x", "seed": 0}})


def test_a_screen_sample_an_older_database_left_implicit_is_not_another_content():
    """Issue 31: a screened metric's label stored before ``screen.sample`` was recorded (with or without the
    seed) is the same label; a stored sample size that differs, or another change beside it, is refused."""
    from shb.identity import only_later_keys

    new = {"kind": "sahara", "screen": {"top": 4, "sample": 8}, "seed": 0}
    assert only_later_keys({"kind": "metric", "old": {"kind": "sahara", "screen": {"top": 4}}, "new": new})
    assert only_later_keys({"kind": "metric", "old": {"kind": "sahara", "screen": {"top": 4}, "seed": 0}, "new": new})
    assert not only_later_keys({"kind": "metric", "old": {"kind": "sahara", "screen": {"top": 4, "sample": 2},
                                                          "seed": 0}, "new": new})
    assert not only_later_keys({"kind": "metric", "old": {"kind": "sahara", "screen": {"top": 5}}, "new": new})
    assert not only_later_keys({"kind": "metric", "old": new, "new": new})  # nothing gained: not this case
