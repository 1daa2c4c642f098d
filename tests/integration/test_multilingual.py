"""Safety heads across languages (issue 34) on the toy, no mirror needed: a small MultiJail-shaped file
(tests/unit/test_datasets.py makes it), Sahara heads found on the English select part and carried to the
Chinese and Bengali held-out parts with ``heads_dataset`` (the one transfer mechanism), the prompts'
language reaching the judge (its hash, its outcomes: undetermined only for Bengali), the same held-out ids
in every language, and ``shb report overlap`` across the datasets of one model."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from shb.cli import main
from shb.store import Store
from tests.unit.test_datasets import _multijail_file

SPLIT = {"fraction": 0.25, "seed": 0}


def _suite(path) -> dict:
    def dataset(lang, part, limit):
        return {"id": f"mj-{lang}-{part}", "kind": "multijail", "path": str(path), "language": lang,
                "holdout": {"part": part, **SPLIT}, "limit": limit, "format": "chat"}

    selects = [dataset(lang, "select", 2) for lang in ("en", "zh")]
    measures = [dataset(lang, "measure", 3) for lang in ("en", "zh", "bn")]
    return {
        "name": "multilingual-toy", "models": [{"id": "toy", "kind": "toy"}],
        "datasets": selects + measures,
        "ablations": [{"id": "ua", "kind": "undifferentiated", "epsilon": 1e-5}],
        "metrics": [
            {"id": "ships", "kind": "ships", "datasets": [d["id"] for d in selects]},
            {"id": "sahara", "kind": "sahara", "steps": 2, "datasets": [d["id"] for d in selects]},
            {"id": "asr-from-en", "kind": "asr", "heads": "sahara:sahara", "heads_dataset": "mj-en-select",
             "k": [0, 2], "max_new_tokens": 8, "datasets": [d["id"] for d in measures]},
            {"id": "asr-mean-ships-en", "kind": "asr", "heads": "ships_mean:ships", "heads_dataset": "mj-en-select",
             "k": [3], "max_new_tokens": 8, "datasets": ["mj-zh-measure"]}],
        "defaults": {"device": "cpu"}}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multilingual")
    path = tmp / "suite.json"
    path.write_text(json.dumps(_suite(_multijail_file(tmp, rows=12))))
    out = tmp / "r.duckdb"
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_heads_found_in_english_are_ablated_in_every_language(db):
    with Store(db, read_only=True) as store:
        chosen = [f"{layer}-{head}" for layer, head in store.con.execute(
            """SELECT s.layer, s.head FROM sahara_steps s JOIN units u USING (unit_id)
               WHERE u.dataset_id = 'mj-en-select' AND s.chosen ORDER BY s.step""").fetchall()]
        heads = store.con.execute("SELECT dataset_id, k, list(DISTINCT array_to_string(heads, ',')) FROM generations"
                                  " GROUP BY ALL ORDER BY ALL").fetchall()
        zh_chosen = store.con.execute(
            """SELECT count(*) FROM sahara_steps s JOIN units u USING (unit_id)
               WHERE u.dataset_id = 'mj-zh-select' AND s.chosen""").fetchone()[0]
    assert len(chosen) == 2 and zh_chosen == 2   # each language's own search ran too
    assert {(d, k): h for d, k, h in heads if k != 3} == {
        (f"mj-{lang}-measure", k): [",".join(chosen) if k else ""] for lang in ("en", "zh", "bn") for k in (0, 2)}


def test_mean_ships_heads_of_one_language_are_ablated_in_another(db):
    # ships_mean:<id> with heads_dataset: the English select part's top 3 heads by mean Ships score (over
    # its prompts, recomputed here from the stored scores), ablated on the Chinese held-out prompts.
    with Store(db, read_only=True) as store:
        scores = store.con.execute(
            """SELECT s.layer, s.head, avg(s.score) FROM ships s JOIN units u USING (unit_id)
               WHERE u.dataset_id = 'mj-en-select' GROUP BY ALL""").fetchall()
        ablated = store.con.execute("""SELECT DISTINCT dataset_id, array_to_string(heads, ',') FROM generations
                                       WHERE head_source = 'ships_mean:ships'""").fetchall()
    top = sorted(scores, key=lambda r: (-r[2], r[0], r[1]))[:3]
    assert top[0][2] > top[-1][2]  # a ranking, not ties in head order
    assert ablated == [("mj-zh-measure", ",".join(f"{layer}-{head}" for layer, head, _ in top))]


def test_the_judge_is_built_for_each_dataset_language(db):
    from shb import judges
    from shb.judges.outcome import classify

    with Store(db, read_only=True) as store:
        rows = store.query("""SELECT g.dataset_id, g.prompt_id, g.text, j.judge_hash, j.outcome, j.outcome_rule,
                                     f.text AS context, p.text AS request
                              FROM generations g JOIN judgments j USING (generation_id)
                              JOIN formatted_prompts f USING (model_id, dataset_id, prompt_id)
                              JOIN prompts p USING (dataset_id, prompt_id)""").to_dicts()
    hashes = {lang: judges.get("keyword-paper", language=lang).config_hash for lang in ("en", "zh", "bn")}
    for r in rows:
        lang = r["dataset_id"].split("-")[1]
        assert r["judge_hash"] == hashes[lang], r
        assert (r["outcome"], r["outcome_rule"]) == classify(r["text"], r["request"], r["context"], lang), r
    # undetermined only where the judge has no phrases (bn), never in en or zh
    assert {r["dataset_id"] for r in rows if r["outcome"] == "undetermined"} <= {"mj-bn-measure"}


def test_the_held_out_ids_are_the_same_in_every_language(db):
    with Store(db, read_only=True) as store:
        ids = dict(store.con.execute("SELECT dataset_id, list(prompt_id ORDER BY prompt_id) FROM prompts"
                                     " GROUP BY 1").fetchall())
    assert ids["mj-en-measure"] == ids["mj-zh-measure"] == ids["mj-bn-measure"]
    assert ids["mj-en-select"] == ids["mj-zh-select"]
    assert not set(ids["mj-en-select"]) & set(ids["mj-en-measure"])


@pytest.mark.parametrize("metric", ["ships", "sahara"])
def test_overlap_report_compares_one_models_heads_across_datasets(db, tmp_path, metric):
    args = ["report", "overlap", "--db", str(db), "--metric", metric, "--model", "toy", "--dataset", "mj-en-select",
            "--dataset", "mj-zh-select", "--top", "2"]
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    (pair,) = json.loads(result.output)[f"pairwise overlap of top-2 heads ({metric})"]
    assert {pair["result_a"], pair["result_b"]} == {"toy / mj-en-select / ua", "toy / mj-zh-select / ua"}
    assert 0 <= pair["intersection"] <= 2 and pair["heads_compared"] >= 2
    pytest.importorskip("matplotlib")
    out = tmp_path / metric
    result = CliRunner().invoke(main, [*args, "--format", "png", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert any(p.suffix == ".png" for p in out.iterdir())
