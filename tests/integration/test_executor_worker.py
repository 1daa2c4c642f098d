"""The Ray executor's worker side without Ray: a ModelHost fed snapshots, its rows committed by a
driver loop in this test, gives the local run's tables. (Runs where ray is not installed.)"""

from __future__ import annotations

import json

import pytest

# How a run ran, not what it found: timings, and the batch size an engine settled on (each worker sizes its own).
TIMING = {"run_id", "seconds", "done_at", "updated_at", "started_at", "ended_at", "batch_size"}


def tables(db) -> dict:
    """Every table's rows, sorted, without run ids and timings (which differ between any two runs)."""
    from shb.store import Store

    out = {}
    with Store(db, read_only=True) as store:
        names = [r[0] for r in store.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_name NOT IN ('runs', 'shb_meta', 'labels')").fetchall()]  # labels: run_suite's, not a worker's
        for name in sorted(names):
            cols = [r[0] for r in store.con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [name]).fetchall() if r[0] not in TIMING]
            out[name] = store.con.execute(f'SELECT {", ".join(cols)} FROM "{name}" ORDER BY ALL').fetchall()
    return out


@pytest.fixture()
def suite_file(tmp_path, tiny_model_dir, prompts_file):
    data = {
        "name": "tiny-worker",
        "models": [{"id": "tiny", "kind": "hf", "path": str(tiny_model_dir)}],
        "datasets": [{"id": "p", "kind": "jsonl", "path": str(prompts_file), "column": "prompt", "format": "chat"}],
        "ablations": [{"id": "ua", "kind": "undifferentiated", "epsilon": 1e-5}],
        "metrics": [{"id": "ships", "kind": "ships"},
                    {"id": "sahara", "kind": "sahara", "steps": 2, "score": "ships_dataset", "r": 1},
                    {"id": "asr", "kind": "asr", "heads": "sahara:sahara", "k": [2], "max_new_tokens": 4},
                    {"id": "asr-pp", "kind": "asr", "heads": "ships_per_prompt", "k": 1, "max_new_tokens": 4}],
        "defaults": {"device": "cpu", "dtype": "float32", "batch_size": 8},
    }
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(data))
    return path


def test_a_model_host_fed_snapshots_gives_the_local_tables(tmp_path, suite_file):
    from shb.datasets import content_hash
    from shb.executors.ray_executor import chunk_dependencies, snapshot_tables
    from shb.executors.worker import ModelHost
    from shb.plan import expand, load_prompts
    from shb.run import run_suite, unit_row
    from shb.store import Store
    from shb.suite import load

    assert run_suite(load(suite_file), tmp_path / "local.duckdb", log=lambda *a, **k: None)["failed"] == 0
    # The driver's part, by hand: the prompts and models rows, then every unit's chunks in an order the
    # dependencies allow (reversed where they allow it), each committed from the host's rows.
    suite = load(suite_file)
    prompts = load_prompts(suite)
    from shb.run import _fingerprints

    host = ModelHost("float32", "cpu", suite, prompts, {d.id: d for d in suite.datasets}, _fingerprints(suite))
    with Store(tmp_path / "host.duckdb") as store:
        with store.transaction():
            store.insert("prompts", [{"dataset_id": "p", "prompt_id": p.prompt_id, "text": p.text,
                                      "dataset_hash": content_hash(prompts["p"])}
                                     for p in prompts["p"]])
        for unit in expand(suite, prompts):
            planned = host.chunks(unit)
            assert planned.error is None and planned.shb_error is None, planned.error
            for result in (planned,):
                with store.transaction():
                    if result.model_row is not None:
                        store.insert("models", [result.model_row])
                    for table, rows in (result.input_rows or {}).items():
                        store.insert(table, rows)
            chunks = planned.rows["chunks"]
            deps = chunk_dependencies(unit.metric.kind, chunks)
            store.upsert_unit(unit_row(unit, "r", suite))
            done: set[int] = set()
            while len(done) < len(chunks):
                ready = [i for i in range(len(chunks)) if i not in done and deps[i] <= done]
                i = ready[-1]  # the last ready one first: independent chunks need not run in order
                result = host.run_chunk(unit, chunks[i], snapshot_tables(store, unit))
                assert result.error is None and result.shb_error is None, result.error
                with store.transaction():
                    for table, rows in (result.input_rows or {}).items():
                        store.insert(table, rows)
                store.commit_chunk(unit.unit_id, chunks[i], "r", result.rows, result.seconds)
                done.add(i)
            store.upsert_unit({**unit_row(unit, "r", suite), "status": "done", "n_chunks": len(chunks)})
    assert host.loads == 1
    expected = tables(tmp_path / "local.duckdb")
    assert len(expected["generations"]) == 6 * 2 and len(expected["sahara_steps"]) == 12 + 11
    assert tables(tmp_path / "host.duckdb") == expected
