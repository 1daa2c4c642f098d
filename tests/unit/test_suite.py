"""Suite validation: every problem at once, with its JSON pointer; the CLI exits 2 and writes nothing."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shb import suite as suite_mod
from shb.errors import SuiteError

REPO = Path(__file__).resolve().parents[2]
CASES = json.loads((REPO / "tests" / "cases" / "suites.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_broken_suite_reports_every_problem(case):
    found = suite_mod.problems(case["suite"])
    for expected in case["expect"]:
        assert any(line.startswith(expected) for line in found), f"missing {expected!r} in {found}"


def test_several_problems_reported_together():
    case = next(c for c in CASES if c["name"] == "several problems at once")
    with pytest.raises(SuiteError) as info:
        suite_mod.from_dict(case["suite"], "x.json")
    assert len(info.value.problems) >= len(case["expect"])


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "suites").glob("*.json")))
def test_shipped_suites_are_valid(name):
    suite = suite_mod.load(REPO / "suites" / name)
    assert suite.models and suite.metrics


def test_cli_validate_exits_2_and_writes_nothing(tmp_path):
    for i, case in enumerate(CASES[:6]):
        path = tmp_path / f"broken{i}.json"
        path.write_text(json.dumps(case["suite"]))
        result = subprocess.run([sys.executable, "-m", "shb.cli", "validate", str(path)], cwd=tmp_path,
                                capture_output=True, text=True, env={"SHB_DB": str(tmp_path / "r.duckdb"), "PATH": ""})
        assert result.returncode == 2, result.stderr
        for expected in case["expect"]:
            assert expected in result.stderr.replace("\n", " ") or expected.split(":")[0] in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"broken{i}.json" for i in range(6))


def test_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{\"name\": ")
    with pytest.raises(SuiteError, match="not valid JSON at line 1"):
        suite_mod.load(path)


def test_schema_is_the_checked_in_file():
    assert suite_mod.schema() == json.loads((REPO / "schemas" / "suite.schema.json").read_text())


def test_suite_paths_are_relative_to_the_suite_file(tmp_path, monkeypatch):
    """A suite runs the same from any working directory: its relative paths start at its own directory."""
    from shb.suite import load

    here = tmp_path / "project" / "suites"
    (here / "data").mkdir(parents=True)
    (here / "data" / "p.txt").write_text("a prompt\n")
    (here / "model").mkdir()
    (here / "task.yaml").write_text("task: t\n")
    data = {"name": "rel",
            "models": [{"id": "local", "kind": "hf", "path": "model"}, {"id": "dot", "kind": "hf", "path": "./model"},
                       {"id": "hub", "kind": "hf", "path": "meta-llama/Llama-2-7b-chat-hf"},
                       {"id": "home", "kind": "hf", "path": "~/m"}],
            "datasets": [{"id": "d", "kind": "txt", "path": "data/p.txt"},
                         {"id": "abs", "kind": "txt", "path": str(here / "data" / "p.txt")}],
            "ablations": [{"id": "ua", "kind": "undifferentiated"}],
            "metrics": [{"id": "u", "kind": "utility", "heads": [], "lm_eval": {"tasks": ["task.yaml", "boolq"]}}]}
    (here / "s.json").write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    suite = load("project/suites/s.json")
    paths = {m.id: m.get("path") for m in suite.models}
    assert paths["local"] == paths["dot"] == str(here / "model")
    assert paths["hub"] == "meta-llama/Llama-2-7b-chat-hf" and paths["home"] == "~/m"
    assert [d.get("path") for d in suite.datasets] == [str(here / "data" / "p.txt")] * 2
    assert suite.metrics[0].get("lm_eval")["tasks"] == [str(here / "task.yaml"), "boolq"]
    assert suite.sha256 == hashlib.sha256((here / "s.json").read_bytes()).hexdigest()  # the file, as written


def test_k_with_an_explicit_head_list_ablates_its_first_k_heads():
    from shb.metrics.asr import ks_of
    from shb.utility.spec import ks

    assert ks_of({"heads": ["2-6", "1-3"]}) == [2]  # no k: the whole list, as before
    assert ks_of({"heads": ["2-6", "1-3"], "k": [2, 0]}) == [0, 2]  # k = 0: the unablated baseline
    assert ks({"heads": ["2-6", "1-3"], "k": [1]}) == [0, 1]
