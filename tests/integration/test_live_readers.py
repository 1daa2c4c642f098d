"""Readers while a run goes, and honest run status.

`shb report ships` and `shb sql` must work against a database that `shb run` (another process) is
writing, and the run's results must equal those of a run nobody read from. A run killed with SIGKILL
must show as `killed`, not `running` forever.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from click.testing import CliRunner

from shb.cli import main
from shb.store import Store

SUITE = {"name": "live", "models": [{"id": "toy", "kind": "toy"}],
         "datasets": [{"id": "h", "kind": "toy-harmful", "limit": 16, "format": "chat"}],
         "ablations": [{"id": "ua", "kind": "undifferentiated", "epsilon": 1e-5}],
         "metrics": [{"id": "ships", "kind": "ships", "strategy": "naive"}],   # slow on purpose: 4 layer chunks
         "defaults": {"device": "cpu", "batch_size": 8}}


def ships_rows(db):
    with Store(db, read_only=True) as store:
        return store.con.execute("SELECT unit_id, prompt_id, layer, head, score FROM ships ORDER BY ALL").fetchall()


def test_reports_and_sql_read_while_a_run_writes(tmp_path):
    from shb.run import run_suite
    from shb.suite import from_dict

    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps(SUITE))
    reference = tmp_path / "reference.duckdb"
    run_suite(from_dict(SUITE), reference, log=lambda *a: None)

    db = tmp_path / "live.duckdb"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the in-process reference (tests run torch on one thread)
    proc = subprocess.Popen([sys.executable, "-m", "shb.cli", "run", str(suite_file), "--db", str(db), "--quiet", "-v"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    first_commit = threading.Event()
    log = []

    def follow():
        for line in proc.stderr:
            log.append(line)
            if line.startswith("committed"):
                first_commit.set()
        first_commit.set()

    threading.Thread(target=follow, daemon=True).start()
    assert first_commit.wait(300), "the run committed nothing"
    runner = CliRunner()
    during = {"sql": 0, "report": 0}
    while proc.poll() is None:
        for name, args in (("sql", ["sql", "SELECT count(*) AS n FROM ships", "--db", str(db), "--format", "json"]),
                           ("report", ["report", "ships", "--db", str(db), "--format", "json"])):
            result = runner.invoke(main, args)
            alive = proc.poll() is None
            assert result.exit_code == 0, result.output
            if alive:
                during[name] += 1
            time.sleep(0.2)  # a person (or a dashboard) polling, not a busy loop
    assert proc.wait() == 0, "".join(log)
    assert during["sql"] >= 1 and during["report"] >= 1, f"no read happened while the run went: {during}"
    assert ships_rows(db) == ships_rows(reference)
    with Store(db, read_only=True) as store:
        assert store.con.execute("SELECT status FROM runs").fetchall() == [("done",)]


def test_a_killed_run_is_marked_killed(tmp_path, tiny_model_dir, prompts_file):
    from tests.conftest import run_and_sigkill

    suite = {"name": "tiny", "models": [{"id": "tiny", "kind": "hf", "path": str(tiny_model_dir)}],
             "datasets": [{"id": "p", "kind": "jsonl", "path": str(prompts_file), "column": "prompt"}],
             "ablations": [{"id": "ua", "kind": "undifferentiated"}],
             "metrics": [{"id": "ships", "kind": "ships", "strategy": "naive"}], "defaults": {"device": "cpu"}}
    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps(suite))
    db = tmp_path / "r.duckdb"
    run_and_sigkill(suite_file, db, 1, cwd=tmp_path)
    with Store(db, read_only=True) as store:
        assert store.con.execute("SELECT status FROM runs").fetchall() == [("running",)]
    result = CliRunner().invoke(main, ["report", "runs", "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in json.loads(result.output)] == ["killed"]
    finish = CliRunner().invoke(main, ["run", str(suite_file), "--db", str(db), "--quiet"])
    assert finish.exit_code == 0, finish.output
    with Store(db, read_only=True) as store:
        assert sorted(store.con.execute("SELECT status FROM runs").fetchall()) == [("done",), ("killed",)]
        assert store.con.execute("SELECT count(*) FROM units WHERE status <> 'done'").fetchall() == [(0,)]
