"""A database written by the previous main (7bedb08) still opens, reports and resumes.

tests/cases/legacy-7bedb08 holds that database as DuckDB's EXPORT DATABASE wrote it (schema.sql,
load.sql and one parquet file per table, 100 KB instead of the 8 MB file): ``shb run
tests/cases/legacy-7bedb08/suite.json`` on the toy model (6 prompts, exact and screened Ships on
layer 0, one Sahara step, ASR at k = 0 and 1) with the code of commit 7bedb08. The test rebuilds the
file, reports from it, and runs the same suite with one more metric: the three finished units whose
content is unchanged are found done; the screened sweep, whose unit id now holds the seed it samples
with (issue 32, case 7), runs again under the same label (not refused as another content); the new
metric runs; the reports hold them all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from shb.cli import main
from shb.run import run_suite
from shb.store import Store
from shb.suite import from_dict

LEGACY = Path(__file__).resolve().parents[1] / "cases" / "legacy-7bedb08"


def legacy_db(path: Path) -> Path:
    """The exported database rebuilt at ``path`` (IMPORT DATABASE, with the files' folder made absolute)."""
    import duckdb

    con = duckdb.connect(str(path))
    con.execute((LEGACY / "schema.sql").read_text())
    load = re.sub(r"'export/([a-z_]+\.parquet)'", lambda m: f"'{LEGACY / m.group(1)}'", (LEGACY / "load.sql").read_text())
    con.execute(load)
    con.close()
    return path


def test_legacy_database_opens_reports_and_resumes(tmp_path):
    db = legacy_db(tmp_path / "legacy.duckdb")
    env = {"SHB_DB": str(db)}
    result = CliRunner().invoke(main, ["report", "asr", "--db", str(db), "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["metric_id"], r["k"], r["baseline_from"]) for r in rows] == [("asr", 1, "same unit")]

    data = json.loads((LEGACY / "suite.json").read_text())
    data["metrics"].append({"id": "asr-explicit", "kind": "asr", "heads": ["0-1"], "k": [1],
                            "judge": "keyword-paper", "decoding": {"mode": "greedy"}, "max_new_tokens": 4})
    with Store(db, read_only=True) as store:
        old_screened = set(store.query("SELECT unit_id FROM units WHERE metric_id = 'ships-screened'")["unit_id"])
    counts = run_suite(from_dict(data), db, log=lambda *a: None)
    assert counts == {"done": 2, "skipped": 3, "failed": 0}, counts
    with Store(db, read_only=True) as store:
        metrics = set(store.query("SELECT DISTINCT u.metric_id FROM asr a JOIN units u USING (unit_id)")["metric_id"])
    assert metrics == {"asr", "asr-explicit"}
    with Store(db, read_only=True) as store:
        screened = store.query("SELECT unit_id, status, spec FROM units WHERE metric_id = 'ships-screened'")
        label = store.query("SELECT content FROM labels WHERE kind = 'metric' AND label = 'ships-screened'")
    new = set(screened["unit_id"]) - old_screened
    assert len(old_screened) == 1 and len(new) == 1 and set(screened["status"]) == {"done"}
    assert json.loads(label["content"][0])["seed"] == 0
    for report in (["report", "asr"], ["report", "sahara"], ["report", "ships"]):
        result = CliRunner().invoke(main, [*report, "--db", str(db)], env=env)
        assert result.exit_code == 0, (report, result.output)
