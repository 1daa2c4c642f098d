"""The same tables whatever the executor: shipped suites run locally and on Ray (2 CPU actors) and every
table is compared row for row; workers killed during a fit and during a utility chunk change nothing.

paper-mini in full takes too long for the test suite on 2 cores, so ``paper_mini_cpu`` builds a reduced
variant from the shipped file: toy-a (and toy-a-base, the safety neurons' reference), 8 prompts per
dataset (16 to fit and select heads on), Sahara 2 steps, asr k = 0 and 2 with 8 new tokens, every Table 1 intervention (fitted on 16 + 16
prompts) with its asr and utility, and Sahara heads' utility. ``beyond_mini_cpu`` cuts beyond-mini.json the same
way (toy-a: RDSHA from its refusal-direction fit, attention of the Sahara heads, the attention swap with the base
model as reference). demo runs as shipped. Skipped without ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_executor_worker import tables

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
QUIET = {"log": lambda *a, **k: None}


def shipped(name: str) -> dict:
    """A shipped suite with its dataset paths made absolute (they are relative to the suite file, and the
    cut-down copies below are written elsewhere)."""
    data = json.loads((REPO / "suites" / name).read_text())
    for dataset in data["datasets"]:
        if dataset.get("path"):
            dataset["path"] = str((REPO / "suites" / dataset["path"]).resolve())
    return data


def small(metric: dict) -> dict:
    """A metric at CPU-test size: Sahara 2 steps, asr with 8 new tokens at k = 0 and 2."""
    if metric["kind"] == "sahara":
        metric["steps"] = 2
    if metric["kind"] == "asr":
        metric["max_new_tokens"] = 8
        if "heads" in metric:
            metric["k"] = [0, 2]
    return metric


def paper_mini_cpu() -> dict:
    """suites/paper-mini.json cut to CPU-test size (its structure kept: interventions, fits, utility)."""
    data = shipped("paper-mini.json")
    data["name"] = "paper-mini-cpu"
    data["models"] = [m for m in data["models"] if m["id"] in ("toy-a", "toy-a-base")]
    data["datasets"] = [{**d, "limit": 16 if d["id"].endswith(("-fit", "-select")) else 8} for d in data["datasets"]
                        if d["id"] != "malicious-template-16"]
    metrics = []
    for metric in data["metrics"]:
        if metric["kind"] in ("ships", "ships_dataset") or metric["id"] == "asr-top5" or metric["id"] == "utility-random":
            continue
        datasets = [d for d in metric.get("datasets", ["toy-harmful-32"]) if d != "malicious-template-16"]
        metric = small({**metric, "models": ["toy-a"], "datasets": datasets, "ablations": ["ua"]})
        if metric["kind"] == "utility":
            metric["lm_eval"] = {**metric["lm_eval"], "docs": 8}
            metric["over_refusal"] = {**metric["over_refusal"], "max_new_tokens": 8}
            if "heads" in metric:
                metric["k"] = [2]
        metrics.append(metric)
    data["metrics"] = metrics
    for entry in data["interventions"]:
        entry["fit"] = {**entry["fit"], "max_new_tokens": 8}
        if "n_val" in entry:
            entry["n_val"] = 4
    return data


def beyond_mini_cpu() -> dict:
    """suites/beyond-mini.json cut to CPU-test size: toy-a and its base, 8 prompts (16 to fit on), Sahara
    2 steps, RDSHA, attention of 1 Sahara head (and the median head) on 4 prompts, the attention swap's asr."""
    data = shipped("beyond-mini.json")
    data["name"] = "beyond-mini-cpu"
    data["models"] = [m for m in data["models"] if m["id"] in ("toy-a", "toy-a-base")]
    data["datasets"] = [{**d, "limit": 16 if d["id"].endswith("-fit") else 8} for d in data["datasets"]]
    metrics = []
    for metric in data["metrics"]:
        if metric["kind"] == "utility":
            continue
        metric = small({**metric, "models": ["toy-a"]})
        if metric["kind"] == "attention":
            metric.update(k=1, limit=4)
        metrics.append(metric)
    data["metrics"] = metrics
    for entry in data["interventions"]:
        if "n_val" in entry:
            entry["n_val"] = 4
    return data


def run(data, folder: Path, executor: str, **kwargs) -> tuple[dict, Path]:
    from shb.run import run_suite
    from shb.suite import load

    path = folder / f"{data['name']}.json"
    path.write_text(json.dumps(data))
    db = folder / f"{executor}.duckdb"
    return run_suite(load(path), db, executor=executor, **QUIET, **kwargs), db


def test_demo_gives_the_same_tables_locally_and_on_ray(fault_dir, tmp_path):
    data = json.loads((REPO / "suites" / "demo.json").read_text())
    data["defaults"]["device"] = "cpu"
    local, local_db = run(data, tmp_path, "local")
    remote, ray_db = run(data, tmp_path, "ray")
    assert local["failed"] == remote["failed"] == 0 and local["done"] == remote["done"] == 3
    expected = tables(local_db)
    assert len(expected["generations"]) == 64 * 3 and expected["truncations"] == []
    assert tables(ray_db) == expected


def test_paper_mini_with_its_interventions_and_utility_gives_the_same_tables_with_workers_killed(fault_dir, tmp_path):
    """The Ray run loses a worker inside a fit and another inside a utility chunk; Ray restarts them and
    the tables still equal the local run's, every fit stored once and applied by its asr and utility."""
    data = paper_mini_cpu()
    local, local_db = run(data, tmp_path, "local")
    assert local["failed"] == 0, local
    crashes = [fault_dir / "crash-fit", fault_dir / "crash-k000-loss"]
    for marker in crashes:
        marker.write_text("")
    remote, ray_db = run(data, tmp_path, "ray")
    assert all(marker.with_name(marker.name + ".taken").exists() for marker in crashes)  # the workers did die
    assert remote["failed"] == 0 and remote["done"] == local["done"]
    expected = tables(local_db)
    assert len(expected["fits"]) == len(data["interventions"])
    assert [r[0] for r in expected["models"]] == ["toy-a"]  # toy-a-base is loaded as a reference only
    assert len(expected["utility_docs"]) > 0 and len(expected["generations"]) > 0
    got = tables(ray_db)
    assert sorted(got) == sorted(expected)
    for table in expected:
        assert got[table] == expected[table], table


def test_beyond_mini_gives_the_same_tables_locally_and_on_ray(fault_dir, tmp_path):
    """RDSHA (reading the stored refusal-direction fit), attention of safety heads (reading the Sahara unit)
    and the attention swap run through the one unit runner: rows in every new table, equal under Ray."""
    data = beyond_mini_cpu()
    local, local_db = run(data, tmp_path, "local")
    assert local["failed"] == 0, local
    remote, ray_db = run(data, tmp_path, "ray")
    assert remote["failed"] == 0 and remote["done"] == local["done"]
    expected = tables(local_db)
    assert len(expected["rdsha"]) == 8 * 32 and len(expected["head_attention"]) > 0
    assert {r[0] for r in expected["fits"]} and len(expected["fits"]) == len(data["interventions"])
    got = tables(ray_db)
    assert sorted(got) == sorted(expected)
    for table in expected:
        assert got[table] == expected[table], table
