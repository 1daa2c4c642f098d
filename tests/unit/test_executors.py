"""The executor choice, the metrics' declarations (what a chunk reads, what it waits for) that executors
order and snapshot by, Ray sizing, and the worker's snapshot. No Ray needed
(tests/integration/test_ray_executor.py runs it)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from shb.errors import UsageError
from shb.executors import ExecutorOptions, resolve_executor
from shb.executors.ray_executor import worker_resources
from shb.metrics.asr import AsrMetric
from shb.metrics.base import Metric, Read
from shb.metrics.sahara import SaharaMetric
from shb.metrics.ships import ShipsMetric
from shb.metrics.utility import UtilityMetric


def suite(**defaults):
    return SimpleNamespace(defaults=defaults)


def test_sahara_layers_of_a_step_run_together_and_its_last_layer_waits_for_them():
    from shb.metrics.sahara import step_chunk

    chunks = [step_chunk(s, layer) for s in range(3) for layer in (2, 0, 1)]  # the metric's order, layers as given
    deps = SaharaMetric().after(None, chunks)
    assert deps[:3] == [set(), set(), {0, 1}]          # step 0: layers 2 and 0 free; its last layer reads them
    assert deps[3:6] == [{2}, {2}, {3, 4, 2}]          # step 1 waits for step 0's winner (its last chunk)
    assert deps[6:] == [{5}, {5}, {6, 7, 5}]


def test_sweeps_and_asr_are_independent_a_fit_comes_first_and_undeclared_kinds_run_in_order():
    assert ShipsMetric().after(None, ["layer-000", "layer-001"]) == [set(), set()]
    assert AsrMetric().after(None, ["k000-p0000-0031", "k001-p0000-0031"]) == [set(), set()]
    fitted = ["fit", "k001-p0000-0031", "k001-p0032-0040"]
    assert AsrMetric().after(None, fitted) == UtilityMetric().after(None, fitted) == [set(), {0}, {0}]
    assert Metric().after(None, ["a", "b", "c"]) == [set(), {0}, {1}]


def _unit(kind, unit_id, upstream=None, **metric):
    spec = {"metric": metric, **({"upstream": upstream} if upstream else {})}
    return SimpleNamespace(unit_id=unit_id, metric=SimpleNamespace(kind=kind), spec=spec)


def test_metrics_declare_what_each_chunk_reads():
    """Sahara its own steps; asr and utility their head source's upstream rows and the fit they apply."""
    assert ShipsMetric().reads(_unit("ships", "u1"), "layer-000") == []
    assert SaharaMetric().reads(_unit("sahara", "u1"), "step-00-layer-000") == [Read("sahara_steps", "unit_id", ("u1",))]
    sahara_heads = _unit("asr", "u3", upstream="u2", heads="sahara:s")
    assert AsrMetric().reads(sahara_heads, "k001-p0000-0031") == [Read("sahara_steps", "unit_id", ("u2",))]
    per_prompt = _unit("asr", "u3", upstream="u2", heads="ships_per_prompt")
    assert AsrMetric().reads(per_prompt, "k001-p0000-0031") == [Read("ships", "unit_id", ("u2",))]
    fitted = _unit("utility", "u4", intervention="rd")
    fitted.spec["intervention"] = {"kind": "refusal_direction", "fit_id": "f1"}
    for metric in (AsrMetric(), UtilityMetric()):
        assert metric.reads(fitted, "fit") == metric.reads(fitted, "k001-loss") == [Read("fits", "fit_id", ("f1",))]
    assert Metric().reads(_unit("someday", "u1", upstream="u2"), "a") == [Read("*", "unit_id", ("u1", "u2"))]


def test_chunks_name_the_prompts_they_cover():
    from shb.metrics.base import chunk_range, range_chunks

    assert range_chunks("k002", 70, 32) == ["k002-p0000-0031", "k002-p0032-0063", "k002-p0064-0069"]
    assert chunk_range("k002-d001-p0032-0063") == (32, 64)
    assert AsrMetric.parse_chunk("k1000-p0064-0069") == (1000, 0, 64, 70)
    assert AsrMetric.parse_chunk("k003-d002-p0000-0031") == (3, 2, 0, 32)


def test_the_executor_comes_from_the_flag_else_the_suite_else_local():
    assert resolve_executor(None, None, suite()) == ExecutorOptions()
    with pytest.raises(UsageError, match="unknown executor 'dask'"):
        resolve_executor("dask", None, suite())
    with pytest.raises(UsageError, match="--workers only apply to --executor ray"):
        resolve_executor("local", {"workers": 2}, suite(executor="ray"))
    with pytest.raises(UsageError, match="unknown executor 'slurm'"):
        resolve_executor(None, None, suite(executor="slurm"))


def test_a_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'shb\[ray\]'"):
        resolve_executor("ray", None, suite())
    with pytest.raises(UsageError, match="not installed"):
        resolve_executor(None, None, suite(executor="ray", ray={"num_gpus": 0.5}))


def test_suite_ray_options_are_checked_and_flags_win(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace())
    options = resolve_executor(None, {"workers": 3, "num_gpus": None}, suite(executor="ray", ray={"num_gpus": 0.5}))
    assert options == ExecutorOptions(name="ray", num_gpus=0.5, workers=3)
    assert options.device_label("cpu", None) == "ray:auto" and ExecutorOptions().device_label("cpu", None) == "cpu"
    with pytest.raises(UsageError, match="--num-gpus -1"):
        resolve_executor("ray", {"num_gpus": -1}, suite())
    with pytest.raises(UsageError, match="expected HOST:PORT"):
        resolve_executor("ray", {"address": "headnode"}, suite())


def test_an_unreachable_cluster_fails_at_once_with_its_address(monkeypatch):
    import socket

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace())
    with socket.socket() as sock:  # a port that nothing listens on: bind, then close
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UsageError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        resolve_executor("ray", {"address": f"127.0.0.1:{port}"}, suite())


def test_workers_fill_the_cluster_by_gpus_per_worker():
    assert worker_resources({"GPU": 8, "CPU": 64}, ExecutorOptions("ray")) == (1.0, 8)
    assert worker_resources({"GPU": 8, "CPU": 64}, ExecutorOptions("ray", num_gpus=0.5)) == (0.5, 16)
    assert worker_resources({"GPU": 8, "CPU": 64}, ExecutorOptions("ray", num_gpus=0.5, workers=3)) == (0.5, 3)
    assert worker_resources({"GPU": 2, "CPU": 1}, ExecutorOptions("ray")) == (1.0, 1)  # one CPU per actor too
    assert worker_resources({"CPU": 2}, ExecutorOptions("ray")) == (0.0, 2)
    with pytest.raises(UsageError, match="cluster has 1"):
        worker_resources({"GPU": 1, "CPU": 8}, ExecutorOptions("ray", num_gpus=2))


def test_a_worker_reads_earlier_rows_from_its_snapshot_and_cannot_write():
    import polars as pl

    from shb.runner import Snapshot

    frame = pl.DataFrame({"unit_id": ["u1", "u1"], "step": [0, 1], "layer": [2, 0], "head": [3, 1],
                          "score": [1.5, 2.5], "chosen": [True, False]})
    empty = frame.clear()
    snapshot = Snapshot({"sahara_steps": frame, "ships": empty})
    rows = snapshot.query("SELECT step, layer, head FROM sahara_steps WHERE unit_id = ? AND chosen", ["u1"]).rows()
    assert rows == [(0, 2, 3)]
    assert snapshot.con.execute("SELECT count(*) FROM ships").fetchall() == [(0,)]
    assert not hasattr(snapshot, "commit_chunk") and not hasattr(snapshot, "insert")
    snapshot.close()


def test_cli_refuses_ray_options_for_a_local_run_before_any_work(tmp_path):
    from click.testing import CliRunner

    from shb.cli import main
    from tests.conftest import REPO

    db = tmp_path / "r.duckdb"
    result = CliRunner().invoke(main, ["run", str(REPO / "suites" / "demo.json"), "--db", str(db), "--quiet",
                                       "--executor", "local", "--workers", "2"])
    assert result.exit_code == 2, result.output
    assert "--workers only apply to --executor ray" in result.output and not db.exists()


def test_a_snapshot_holds_the_rows_the_metric_declared(tmp_path):
    from shb.run import RunWriter
    from shb.store import Store

    with Store(tmp_path / "r.duckdb") as store:
        with store.transaction():
            store.insert("sahara_steps", [{"unit_id": u, "step": 0, "layer": 1, "head": 2, "score": 1.0, "chosen": True}
                                          for u in ("u1", "u2", "u3")])
            store.insert("ships", [{"unit_id": u, "prompt_id": 0, "layer": 1, "head": 2, "score": 0.5}
                                   for u in ("u1", "u2")])
        writer = RunWriter(store, "r", None, [])

        def snapshot(unit, chunk="c"):
            return writer.snapshot(writer.reads(unit, chunk))

        assert snapshot(_unit("ships", "u1")) == {}
        sahara = snapshot(_unit("sahara", "u1"))
        assert list(sahara) == ["sahara_steps"] and sahara["sahara_steps"]["unit_id"].to_list() == ["u1"]
        asr = snapshot(_unit("asr", "u3", upstream="u2", heads="sahara:s"))
        assert {t: f["unit_id"].to_list() for t, f in asr.items()} == {"sahara_steps": ["u2"]}
        fits = writer.snapshot([Read("fits", "fit_id", ("f-missing",))])
        assert fits["fits"].height == 0  # a fit not stored yet: an empty table, which the fit chunk looks into
        other = writer.snapshot(Metric().reads(_unit("someday", "u1", upstream="u2"), "a"))  # undeclared: every unit table
        assert {"generations", "judgments", "ships_dataset", "ships", "sahara_steps"} <= set(other)
        assert sorted(other["sahara_steps"]["unit_id"].to_list()) == ["u1", "u2"]
