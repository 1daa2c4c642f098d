"""Suite validation: every problem at once, with its JSON pointer; the CLI exits 2 and writes nothing."""

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
