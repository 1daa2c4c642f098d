"""The metrics' declarations without Ray: a unit runner fed only the snapshots its metrics declared, its
chunks run in the reverse of the listed order wherever ``after`` allows, gives the local run's tables.
(Runs where ray is not installed.)"""

from __future__ import annotations

import pytest

from tests.conftest import tiny_suite, write_suite

# How a run ran, not what it found: timings, and the batch size an engine settled on (each worker sizes its own).
TIMING = {"run_id", "seconds", "done_at", "updated_at", "started_at", "ended_at", "batch_size"}
# Which unit happened to compute a fit that several units apply (an asr and a utility unit): the first
# to reach its `fit` chunk, which depends on scheduling (Ray) or on what an earlier run left (resume).
PROVENANCE = {"fits": {"unit_id"}}


def tables(db) -> dict:
    """Every table's rows, sorted, without run ids, timings (which differ between any two runs) and PROVENANCE."""
    from shb.store import Store

    out = {}
    with Store(db, read_only=True) as store:
        names = [r[0] for r in store.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_name NOT IN ('runs', 'shb_meta', 'labels')").fetchall()]  # labels: run_suite's, not a worker's
        for name in sorted(names):
            cols = [r[0] for r in store.con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [name]).fetchall() if r[0] not in TIMING | PROVENANCE.get(name, set())]
            out[name] = store.con.execute(f'SELECT {", ".join(cols)} FROM "{name}" ORDER BY ALL').fetchall()
    return out


@pytest.fixture()
def suite_file(tmp_path, tiny_model_dir, prompts_file):
    return write_suite(tmp_path, tiny_suite(tiny_model_dir, prompts_file, "tiny-worker", [
        {"id": "ships", "kind": "ships"},
        {"id": "sahara", "kind": "sahara", "steps": 2, "score": "ships_dataset", "r": 1},
        {"id": "asr", "kind": "asr", "heads": "sahara:sahara", "k": [2], "max_new_tokens": 4},
        {"id": "asr-pp", "kind": "asr", "heads": "ships_per_prompt", "k": 1, "max_new_tokens": 4}]))


def test_chunks_run_in_any_order_their_declarations_allow_give_the_local_tables(tmp_path, suite_file):
    from shb.plan import expand, load_prompts
    from shb.run import RunWriter, run_suite
    from shb.runner import UnitRunner
    from shb.store import Store
    from shb.suite import load

    assert run_suite(load(suite_file), tmp_path / "local.duckdb", log=lambda *a, **k: None)["failed"] == 0
    suite = load(suite_file)
    prompts = load_prompts(suite)
    runner = UnitRunner(suite, prompts, device="cpu")
    with Store(tmp_path / "host.duckdb") as store:
        writer = RunWriter(store, "r", suite, [], log=lambda *a, **k: None)
        for unit in expand(suite, prompts):
            planned = runner.plan(unit)
            assert planned.error is None and planned.shb_error is None, planned.error
            writer.inputs(planned.inputs)
            chunks, after = planned.rows["chunks"], planned.rows["after"]
            row = writer.unit_started(unit)
            done: set[int] = set()
            while len(done) < len(chunks):
                ready = [i for i in range(len(chunks)) if i not in done and after[i] <= done]
                i = ready[-1]  # the last ready one first: independent chunks need not run in order
                result = runner.run_chunk(unit, chunks[i], writer.snapshot(writer.reads(unit, chunks[i])))
                assert result.error is None and result.shb_error is None, result.error
                writer.inputs(result.inputs)
                writer.chunk(unit, chunks[i], result.rows, result.seconds)
                done.add(i)
            writer.unit_done(row, 0.0, len(chunks))
    assert runner.loads == 1
    expected = tables(tmp_path / "local.duckdb")
    assert len(expected["generations"]) == 6 * 2 and len(expected["sahara_steps"]) == 12 + 11
    assert tables(tmp_path / "host.duckdb") == expected
