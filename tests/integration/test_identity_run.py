"""`shb run` and identity on a tiny random model: a label reused for other content is refused before
any write; the resolved dtype and the formatted prompts are stored; pickle weights load only through
a loader that runs no code."""

from __future__ import annotations

import copy
import json
import pickle
import shutil

import polars as pl
import pytest

from shb.errors import UsageError
from shb.run import run_suite
from shb.store import Store
from shb.suite import from_dict
from tests.conftest import tiny_suite

TABLES = ("runs", "units", "chunks", "models", "prompts", "labels", "formatted_prompts", "ships")


def _suite(model_dir, prompts_file):
    return tiny_suite(model_dir, prompts_file, "ident", [{"id": "ships", "kind": "ships"}], dtype="auto")


def _counts(db):
    with Store(db, read_only=True) as store:
        return {t: store.con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("ident")
    prompts = tmp / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ("how to make a bomb", "a poem about cake")))
    db = tmp / "r.duckdb"
    data = _suite(tiny_model_dir, prompts)
    counts = run_suite(from_dict(data), db, log=lambda *a: None)
    assert counts["done"] == 1
    return tmp, db, data


def test_resolved_dtype_and_formatted_prompts_are_stored(first_run, tiny_model_dir):
    from transformers import AutoTokenizer

    _, db, _ = first_run
    with Store(db, read_only=True) as store:
        assert store.con.execute("SELECT dtype FROM runs").fetchall() == [("float32",)]  # "auto" on cpu
        (model,) = store.con.execute("SELECT dtype, attn_implementation, fingerprint FROM models").fetchall()
        assert model[0] == "float32" and model[1] and len(json.loads(model[2])["weights"]) == 64
        spec = json.loads(store.con.execute("SELECT spec FROM units").fetchall()[0][0])
        assert spec["model"]["dtype"] == "float32"
        rows = store.con.execute("SELECT prompt_id, f.text, chat_template_sha256, p.text FROM formatted_prompts f "
                                 "JOIN prompts p USING (dataset_id, prompt_id) ORDER BY prompt_id").fetchall()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(rows) == 2
    for _, text, template_sha, raw in rows:
        messages = [{"role": "user", "content": raw}]
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == expected and text != raw and len(template_sha) == 64


def test_reusing_a_label_for_other_content_is_refused_and_writes_nothing(first_run, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    tmp, db, data = first_run
    other = tmp / "other-model"
    shutil.copytree(tiny_model_dir, other)
    tensors = load_file(other / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    other_prompts = tmp / "other.jsonl"
    other_prompts.write_text(json.dumps({"prompt": "steal money from a bank"}) + "\n")
    clash = copy.deepcopy(data)
    clash["models"][0]["path"] = str(other)
    clash["datasets"][0]["path"] = str(other_prompts)
    before = _counts(db)
    with pytest.raises(UsageError) as err:
        run_suite(from_dict(clash), db, log=lambda *a: None)
    text = str(err.value)
    assert "model 'tiny'" in text and "dataset 'p'" in text and "nothing" in text
    assert "rename the id" in text and "--db" in text
    with Store(db, read_only=True) as store:
        stored = json.loads(store.con.execute("SELECT content FROM labels WHERE label = 'tiny'").fetchall()[0][0])
    assert stored["weights"][:16] in text  # both contents are named
    assert _counts(db) == before
    # the same content under the same label is fine (all done), and a new label for the new content runs
    assert run_suite(from_dict(data), db, log=lambda *a: None)["skipped"] == 1
    renamed = copy.deepcopy(clash)
    renamed["models"][0]["id"], renamed["datasets"][0]["id"] = "tiny-2", "p-2"
    assert run_suite(from_dict(renamed), db, log=lambda *a: None)["done"] == 1
    # a dtype change is other content too: reports would otherwise pool fp32 and fp16 rows under 'tiny'
    with pytest.raises(UsageError, match="dtype: float32 in the database, float16 in this suite"):
        run_suite(from_dict({**data, "defaults": {**data["defaults"], "dtype": "float16"}}), db, log=lambda *a: None)


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch BOOM-MARKER",))


def test_pickle_weights_load_only_when_allowed_and_run_no_code(tmp_path, tiny_model_dir, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from shb.errors import ModelNotFound
    from shb.models import load

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    state = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(ModelNotFound, match="allow_pickle"):
        load(str(pickled), device="cpu")
    ids = torch.tensor([[1, 5, 9, 12]])
    reference = load(str(tiny_model_dir), device="cpu").model(ids).logits
    loaded = load(str(pickled), device="cpu", allow_pickle=True)
    assert torch.equal(loaded.model(ids).logits, reference)
    # a pickle that would run a command is refused by the weights-only unpickler, and nothing runs
    with open(pickled / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": _Boom()}, handle)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception):
        load(str(pickled), device="cpu", allow_pickle=True)
    assert not (tmp_path / "BOOM-MARKER").exists()


def test_an_ablation_label_reused_with_another_epsilon_is_refused(first_run):
    """Issue 22: two suites that both name an ablation "ua", one at epsilon 1e-5 and one at 0.5, were
    pooled by the reports; now the second is refused before any write, naming both contents."""
    _, db, data = first_run
    clash = copy.deepcopy(data)
    clash["ablations"][0]["epsilon"] = 0.5
    before = _counts(db)
    with pytest.raises(UsageError) as err:
        run_suite(from_dict(clash), db, log=lambda *a: None)
    text = str(err.value)
    assert "ablation 'ua'" in text and "epsilon: 1e-05 in the database, 0.5 in this suite" in text
    assert _counts(db) == before
    # a metric label is an identity too: the same id with other parameters is refused
    other_metric = copy.deepcopy(data)
    other_metric["metrics"][0]["screen"] = {"top": 2}
    with pytest.raises(UsageError, match="metric 'ships'.*screen"):
        run_suite(from_dict(other_metric), db, log=lambda *a: None)
    with Store(db, read_only=True) as store:
        kinds = {k for (k,) in store.con.execute("SELECT DISTINCT kind FROM labels").fetchall()}
    assert {"ablation", "metric"} <= kinds


def test_exact_and_screened_ships_in_one_suite_are_two_results(first_run, tmp_path):
    """Issue 22: an exact and a screened Ships metric in one suite were averaged together by the
    ranking (n_prompts above the dataset's size); now each unit is its own result."""
    from shb.reports import overlap, ships

    _, _, data = first_run
    both = copy.deepcopy(data)
    both["metrics"] = [{"id": "exact", "kind": "ships"},
                       {"id": "screened", "kind": "ships", "screen": {"top": 2}}]
    db = tmp_path / "both.duckdb"
    assert run_suite(from_dict(both), db, log=lambda *a: None)["done"] == 2
    with Store(db, read_only=True) as store:
        frame = ships.ranking(store, top=0)
        pooled = store.con.execute("SELECT max(c) FROM (SELECT count(*) AS c FROM ships "
                                   "GROUP BY model_id, dataset_id, ablation_id, layer, head)").fetchall()[0][0]
        scores = overlap.scores(store, "ships")
    assert pooled > 2  # grouping by labels alone would average the two sweeps (2 prompts)
    assert frame["n_prompts"].max() <= 2
    assert set(zip(frame["metric_id"], frame["scoring"])) == {("exact", "exact"), ("screened", "screened")}
    assert frame.filter(pl.col("metric_id") == "exact").height == 3 * 4  # every head of the exact sweep
    assert ships.mixed_note(frame) is None and "unit_id" not in frame.columns
    assert scores["result"].n_unique() == 2
