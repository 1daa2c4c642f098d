"""The Ray executor against the local one: same tables, a killed worker, resume across executors.

One local Ray instance (2 CPUs, CPU-only actors) serves the whole module; skipped without ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_executor_worker import tables

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
QUIET = {"log": lambda *a, **k: None}
TOY = {
    "name": "ray-toy",
    "models": [{"id": "toy", "kind": "toy", "seed": 0}],
    "datasets": [{"id": "toy-harmful", "kind": "toy-harmful", "limit": 8, "format": "chat"}],
    "ablations": [{"id": "ua", "kind": "undifferentiated", "epsilon": 1e-5}],
    "metrics": [
        {"id": "ships", "kind": "ships"},
        {"id": "sahara", "kind": "sahara", "steps": 2, "score": "ships_dataset", "r": 1},
        {"id": "asr", "kind": "asr", "heads": "sahara:sahara", "k": [0, 1, 2], "judge": "keyword-paper",
         "decoding": {"mode": "greedy"}, "max_new_tokens": 8},
    ],
    "defaults": {"device": "cpu", "dtype": "float32", "batch_size": "auto", "seed": 0},
}
N_CHUNKS = 4 + 2 * 4 + 3  # ships: a layer each; sahara: (step, layer); asr: (k, batch)


def _suite(tmp_path, data) -> Path:
    path = tmp_path / f"{data['name']}.json"
    path.write_text(json.dumps(data))
    return path


def run(suite_path, db, executor="local", **kwargs):
    from shb.run import run_suite
    from shb.suite import load

    return run_suite(load(suite_path), db, executor=executor, **QUIET, **kwargs)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy suite (ships, sahara, asr on the sahara heads) and its local run's database."""
    folder = tmp_path_factory.mktemp("ray-toy")
    suite = _suite(folder, TOY)
    db = folder / "local.duckdb"
    assert run(suite, db) == {"done": 3, "skipped": 0, "failed": 0}
    return suite, db


def test_killed_workers_are_restarted_and_a_failing_chunk_fails_only_its_unit(fault_dir, toy, tmp_path):
    """A worker dies inside Sahara's first step (os._exit, once); an asr chunk raises every time. The run
    finishes, every chunk is committed exactly once, ships and Sahara equal the local run's exactly, asr is
    failed with the error; a local rerun completes it."""
    from shb.store import Store

    suite, local_db = toy
    db = tmp_path / "ray.duckdb"
    crashes = [fault_dir / "crash-step-00-layer-002"]  # a middle layer: the step's last layer waits for it
    for marker in crashes:
        marker.write_text("")
    (fault_dir / "fail-k001-p0000-0007").write_text("")
    committed = []
    try:
        counts = run(suite, db, executor="ray", on_chunk=lambda u, c: committed.append((u, c)))
    finally:
        (fault_dir / "fail-k001-p0000-0007").unlink()
    assert all(marker.with_name(marker.name + ".taken").exists() for marker in crashes)  # the workers did die
    assert (counts["done"], counts["failed"], counts["workers"]) == (2, 1, 2)
    assert counts["model_loads"] >= 2 + 1  # two actors, and the restarted one loads its model again
    assert len(committed) == len(set(committed)) and len(committed) >= 4 + 2 * 4  # exactly once each
    expected, got = tables(local_db), tables(db)
    assert len(expected["ships"]) == 8 * 4 * 8 and len(expected["sahara_steps"]) == 32 + 31
    for table in ("ships", "sahara_steps", "models", "prompts"):
        assert got[table] == expected[table], table  # exact: same rows, same scores
    with Store(db, read_only=True) as store:
        [(kind, error)] = store.con.execute("SELECT metric_kind, error FROM units WHERE status = 'failed'").fetchall()
        assert store.con.execute("SELECT status, device FROM runs").fetchall() == [("failed", "ray:cpu")]
    assert kind == "asr" and "injected failure in chunk k001-p0000-0007" in error
    assert run(suite, db)["done"] == 1  # the failed unit reruns locally; the rest is kept
    assert tables(db) == expected


def test_a_run_stopped_part_way_resumes_with_the_other_executor(fault_dir, toy, tmp_path):
    """local, stopped after 3 chunks -> ray, stopped inside Sahara's second step -> local: the local tables."""
    suite, local_db = toy
    db = tmp_path / "r.duckdb"
    committed = []

    def stop_at(n):
        def on_chunk(unit_id, chunk):
            committed.append((unit_id, chunk))
            if len(committed) == n:
                raise KeyboardInterrupt  # as a Ctrl-C in the driver
        return on_chunk

    with pytest.raises(KeyboardInterrupt):
        run(suite, db, on_chunk=stop_at(3))
    with pytest.raises(KeyboardInterrupt):
        run(suite, db, executor="ray", on_chunk=stop_at(10))
    assert run(suite, db, on_chunk=stop_at(-1))["failed"] == 0
    assert len(committed) == len(set(committed)) == N_CHUNKS
    assert tables(db) == tables(local_db)


def test_part_of_paper_mini_gives_the_local_tables(fault_dir, tmp_path):
    """Two toy chat models, generalized Ships, Sahara and greedy asr on its heads: actors switch models."""
    data = json.loads((REPO / "suites" / "paper-mini.json").read_text())
    data["name"] = "paper-mini-part"
    data["models"] = [m for m in data["models"] if m["id"] in ("toy-a", "toy-b")]
    data["datasets"] = [{**d, "id": "toy-harmful-6", "limit": 6} for d in data["datasets"] if d["id"] == "toy-harmful-32"]
    data["ablations"] = [a for a in data["ablations"] if a["id"] == "ua"]
    data.pop("interventions", None)
    data["metrics"] = [m for m in data["metrics"] if m["id"] in ("ships_dataset", "sahara", "asr-greedy")]
    for metric in data["metrics"]:
        for key in ("ablations", "models", "datasets"):
            metric.pop(key, None)
        if metric["kind"] == "sahara":
            metric["steps"] = 2
        if metric["kind"] == "asr":
            metric.update(k=[0, 2], max_new_tokens=8)
    suite = _suite(tmp_path, data)
    assert run(suite, tmp_path / "local.duckdb")["failed"] == 0
    counts = run(suite, tmp_path / "ray.duckdb", executor="ray")
    assert (counts["done"], counts["failed"]) == (6, 0)  # ships_dataset, sahara, asr on each model
    expected = tables(tmp_path / "local.duckdb")
    assert {r[0] for r in expected["models"]} == {"toy-a", "toy-b"} and expected["ships_dataset"]
    assert tables(tmp_path / "ray.duckdb") == expected


def test_ray_workers_fit_prompts_to_the_context_and_record_truncations(fault_dir, tmp_path):
    """Each worker checks prompt lengths against its loaded model as a local run does: with
    "too_long": "truncate" the cut is recorded in `truncations`, the same rows as locally."""
    data = tmp_path / "d.txt"
    data.write_text("steal money from a bank\n" + "how to make a bomb " * 300 + "\n")
    suite = {"name": "ray-long", "models": [{"id": "toy", "kind": "toy"}],
             "datasets": [{"id": "h", "kind": "txt", "path": str(data), "format": "chat", "too_long": "truncate"}],
             "ablations": [{"id": "ua", "kind": "undifferentiated", "epsilon": 1e-5}],
             "metrics": [{"id": "ships", "kind": "ships", "layers": [0, 1]}], "defaults": {"device": "cpu"}}
    path = _suite(tmp_path, suite)
    assert run(path, tmp_path / "local.duckdb")["failed"] == 0
    assert run(path, tmp_path / "ray.duckdb", executor="ray")["failed"] == 0
    expected = tables(tmp_path / "local.duckdb")
    assert len(expected["truncations"]) == 1 and expected["formatted_prompts"]
    assert tables(tmp_path / "ray.duckdb") == expected
