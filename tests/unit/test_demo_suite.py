"""suites/demo.json: the README shows it verbatim, and it runs the whole story (Ships, Sahara, ASR with a
k = 0 baseline against ablated heads) on the toy model; the set-up line ends by showing the ASR jump."""

import json
from pathlib import Path

from shb.suite import load

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "suites" / "demo.json"


def test_readme_example_is_the_demo_file():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "```json\n" + DEMO.read_text(encoding="utf-8").rstrip("\n") + "\n```" in readme


def test_readme_setup_line_ends_with_the_asr_report():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = next(line for line in readme.splitlines() if line.startswith("python3 -m venv"))
    assert "shb run suites/demo.json" in setup and setup.rstrip().endswith("shb report asr")


def test_demo_runs_ships_sahara_and_asr_from_a_baseline():
    suite = load(DEMO)
    assert [m.kind for m in suite.models] == ["toy"] and not suite.models[0].params.get("align")
    kinds = {m.kind: m for m in suite.metrics}
    assert set(kinds) == {"ships", "sahara", "asr"}
    asr = kinds["asr"]
    assert asr.get("heads") == f"sahara:{kinds['sahara'].id}"
    assert 0 in asr.get("k") and max(asr.get("k")) >= 1 and max(asr.get("k")) <= kinds["sahara"].get("steps")
    assert json.loads(DEMO.read_text())["name"] == "demo"
