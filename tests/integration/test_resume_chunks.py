"""Chunks are named by the prompts they cover: a unit resumed after its batch constant changed ends with
every prompt stored exactly once, as an uninterrupted run stores it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_suite, write_suite
from tests.integration.test_executor_worker import tables


@pytest.fixture()
def suite_file(tmp_path, tiny_model_dir, prompts_file):
    return write_suite(tmp_path, tiny_suite(tiny_model_dir, prompts_file, "tiny-resume", [
        {"id": "asr", "kind": "asr", "heads": ["0-1"], "max_new_tokens": 3},
        {"id": "asr-random", "kind": "asr", "heads": "random", "k": [0, 2], "draws": 2, "max_new_tokens": 3}]))


def test_a_unit_resumed_with_another_batch_size_stores_every_prompt_exactly_once(tmp_path, suite_file, monkeypatch):
    from shb.metrics import asr
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import load

    quiet = {"log": lambda *a, **k: None}
    monkeypatch.setattr(asr, "CHUNK_PROMPTS", 4)
    assert run_suite(load(suite_file), tmp_path / "whole.duckdb", **quiet)["failed"] == 0
    committed = []

    def stop_after_three(unit_id, chunk):
        committed.append(chunk)
        if len(committed) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_suite(load(suite_file), tmp_path / "resumed.duckdb", on_chunk=stop_after_three, **quiet)
    # the first unit (6 prompts in two ranges) is done, the second has its first range
    assert committed == ["k001-p0000-0003", "k001-p0004-0005", "k000-d000-p0000-0003"]
    monkeypatch.setattr(asr, "CHUNK_PROMPTS", 5)  # ranges 0-4 and 5-5 from now on: no old mark matches
    assert run_suite(load(suite_file), tmp_path / "resumed.duckdb", on_chunk=lambda u, c: committed.append(c),
                     **quiet)["done"] == 1
    assert committed[3:] == ["k000-d000-p0000-0004", "k000-d000-p0005-0005", "k002-d000-p0000-0004",
                             "k002-d000-p0005-0005", "k002-d001-p0000-0004", "k002-d001-p0005-0005"]
    with Store(tmp_path / "resumed.duckdb", read_only=True) as store:
        counts = store.con.execute("SELECT unit_id, k, draw, prompt_id, count(*) FROM generations"
                                   " GROUP BY ALL HAVING count(*) <> 1").fetchall()
        per_setting = store.con.execute("SELECT k, draw, count(DISTINCT prompt_id) FROM generations"
                                        " GROUP BY ALL ORDER BY ALL").fetchall()
    assert counts == [] and per_setting == [(0, 0, 6), (1, 0, 6), (2, 0, 6), (2, 1, 6)]
    whole, resumed = tables(tmp_path / "whole.duckdb"), tables(tmp_path / "resumed.duckdb")
    whole.pop("chunks"), resumed.pop("chunks")  # the done marks name the ranges each run used
    assert resumed == whole


def test_a_resumed_unit_with_a_smaller_batch_recomputes_only_ranges_it_has_no_mark_for(tmp_path, suite_file,
                                                                                      monkeypatch):
    """Old marks for other ranges are ignored (not trusted to cover the new ones); rows are upserts, so a
    prompt covered twice is still one row."""
    from shb.metrics import asr
    from shb.run import run_suite
    from shb.store import Store
    from shb.suite import load

    quiet = {"log": lambda *a, **k: None}
    data = json.loads(suite_file.read_text())
    data["metrics"] = data["metrics"][:1]
    suite_file.write_text(json.dumps(data))
    monkeypatch.setattr(asr, "CHUNK_PROMPTS", 4)
    committed = []

    def stop_after_one(unit_id, chunk):
        committed.append(chunk)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_suite(load(suite_file), tmp_path / "r.duckdb", on_chunk=stop_after_one, **quiet)
    monkeypatch.setattr(asr, "CHUNK_PROMPTS", 2)
    later = []
    assert run_suite(load(suite_file), tmp_path / "r.duckdb", on_chunk=lambda u, c: later.append(c), **quiet)["done"] == 1
    assert committed == ["k001-p0000-0003"] and later == ["k001-p0000-0001", "k001-p0002-0003", "k001-p0004-0005"]
    with Store(tmp_path / "r.duckdb", read_only=True) as store:
        assert store.con.execute("SELECT prompt_id, count(*) FROM generations GROUP BY ALL ORDER BY ALL").fetchall() \
            == [(i, 1) for i in range(6)]
