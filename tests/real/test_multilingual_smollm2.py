"""suites/multilingual.json's shape on a real model: the suite file with SmolLM2-135M-Instruct in place of
Qwen2.5-Coder, English and Chinese only, fewer prompts and tokens. Screened Sahara in each language, the
English heads carried to the Chinese held-out prompts (heads_dataset), the unmodified model and a random
control, every unit done, the judge built per language, and the overlap of the two languages' heads.
Needs the MultiJail file (SHB_DATA_MIRROR or the cache); skipped without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shb.errors import UsageError

pytestmark = pytest.mark.real
SUITE = Path(__file__).resolve().parents[2] / "suites" / "multilingual.json"
KEEP = ("en", "zh")


def _shrunk() -> dict:
    data = json.loads(SUITE.read_text(encoding="utf-8"))
    data["models"] = [{"id": "smollm2", "kind": "hf", "fetch": "smollm2"}]
    data["defaults"] = {**data["defaults"], "dtype": "float32"}
    data["datasets"] = [{**d, "limit": 2 if "select" in d["id"] else 3} for d in data["datasets"]
                        if d["language"] in KEEP]
    ids = {d["id"] for d in data["datasets"]}
    metrics = []
    for m in data["metrics"]:
        m = {**m, "datasets": [d for d in m["datasets"] if d in ids]}
        if m["datasets"] and m.get("heads_dataset", "mj-en-select") in ids:
            metrics.append({**m, **({"max_new_tokens": 8} if m["kind"] == "asr" else {})})
    data["metrics"] = metrics
    return data


@pytest.fixture(scope="module")
def db(smollm2_file, tmp_path_factory):
    from shb import datasets
    from shb.run import run_suite
    from shb.suite import from_dict

    try:
        datasets.fetch_upstream("multijail")
    except UsageError as exc:
        pytest.skip(f"needs the MultiJail file: set SHB_DATA_MIRROR ({str(exc).splitlines()[0]})")
    path = tmp_path_factory.mktemp("multilingual-smollm2") / "r.duckdb"
    counts = run_suite(from_dict(_shrunk()), path, log=lambda *a: None)
    assert counts["failed"] == 0, counts
    return path


def test_every_unit_of_the_suite_shape_runs_and_english_heads_reach_chinese(db):
    from shb import judges
    from shb.store import Store

    with Store(db, read_only=True) as store:
        done = store.con.execute("SELECT metric_id, dataset_id, status FROM units ORDER BY ALL").fetchall()
        en_heads = [f"{r[0]}-{r[1]}" for r in store.con.execute(
            """SELECT s.layer, s.head FROM sahara_steps s JOIN units u USING (unit_id)
               WHERE u.dataset_id = 'mj-en-select' AND s.chosen ORDER BY s.step""").fetchall()]
        transferred = store.con.execute(
            """SELECT DISTINCT array_to_string(g.heads, ',') FROM generations g JOIN units u USING (unit_id)
               WHERE u.metric_id = 'asr-from-en'""").fetchall()
        hashes = dict(store.con.execute("SELECT DISTINCT g.dataset_id, j.judge_hash FROM generations g"
                                        " JOIN judgments j USING (generation_id)").fetchall())
    assert {status for *_, status in done} == {"done"}
    assert {(m, d) for m, d, _ in done} >= {("sahara-mj", "mj-en-select"), ("sahara-mj", "mj-zh-select"),
                                           ("asr-own-en", "mj-en-measure"), ("asr-own-zh", "mj-zh-measure"),
                                           ("asr-from-en", "mj-zh-measure"), ("asr-random", "mj-zh-measure")}
    assert len(en_heads) == 2 and transferred == [(",".join(en_heads),)]
    assert hashes["mj-zh-measure"] == judges.get("keyword-paper", language="zh").config_hash
    assert hashes["mj-en-measure"] == judges.get("keyword-paper").config_hash


def test_asr_report_and_overlap_across_the_two_languages(db):
    from click.testing import CliRunner

    from shb.cli import main

    result = CliRunner().invoke(main, ["report", "asr", "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["metric_id"] for r in rows} >= {"asr-own-zh", "asr-from-en", "asr-random"}
    result = CliRunner().invoke(main, ["report", "overlap", "--db", str(db), "--metric", "sahara", "--model", "smollm2",
                                       "--dataset", "mj-en-select", "--dataset", "mj-zh-select", "--top", "2",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    (pair,) = json.loads(result.output)["pairwise overlap of top-2 heads (sahara)"]
    assert 0 <= pair["intersection"] <= 2
