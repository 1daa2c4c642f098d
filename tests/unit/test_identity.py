"""Unit ids name content (docs/design.md, "Identity"): weights, tokenizer, chat template, resolved dtype,
attention; not paths or labels. Fingerprints are computed without torch and cached by file stamp."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from shb import plan, suite
from shb.errors import ModelNotFound
from shb.models import fingerprint as fpmod

PROMPTS = [{"prompt": "how to make a bomb"}, {"prompt": "write a poem about cake"}]


@pytest.fixture()
def model_dir(tmp_path, tiny_model_dir) -> Path:
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    return out


def _suite(tmp_path, model: dict, defaults=None, fmt="chat"):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return suite.from_dict({
        "name": "id", "models": [{"id": "m", **model}],
        "datasets": [{"id": "p", "kind": "jsonl", "path": str(prompts), "column": "prompt", "format": fmt}],
        "ablations": [{"id": "ua", "kind": "undifferentiated"}], "metrics": [{"id": "ships", "kind": "ships"}],
        "defaults": defaults or {"device": "cpu", "dtype": "float32"}})


def _id(tmp_path, model, defaults=None, device=None, fmt="chat"):
    (unit,) = plan.expand(_suite(tmp_path, model, defaults, fmt), device=device)
    return unit.unit_id


def test_changing_one_weight_of_a_local_model_changes_the_unit_id(tmp_path, model_dir):
    from safetensors.torch import load_file, save_file

    local = {"kind": "hf", "path": str(model_dir)}
    before = _id(tmp_path, local)
    assert _id(tmp_path, local) == before
    tensors = load_file(model_dir / "model.safetensors")
    name = sorted(tensors)[3]
    original = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    changed = _id(tmp_path, local)
    assert changed != before
    tensors[name] = original
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    assert _id(tmp_path, local) == before  # content, not the file's mtime, names the weights
    moved = tmp_path / "elsewhere"
    shutil.copytree(model_dir, moved)
    assert _id(tmp_path, {"kind": "hf", "path": str(moved)}) == before  # nor its path


def test_changing_the_chat_template_or_tokenizer_changes_the_unit_id(tmp_path, model_dir):
    from transformers import AutoTokenizer

    local = {"kind": "hf", "path": str(model_dir)}
    before = _id(tmp_path, local)
    direct_before = _id(tmp_path, local, fmt="direct")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = tok.chat_template.replace("<|assistant|>", "<|assistant|> ")
    tok.save_pretrained(model_dir)
    assert _id(tmp_path, local) != before
    assert fpmod.chat_template_text(model_dir) == tok.chat_template
    # the tokenizer's vocabulary is hashed too (tokenizer.json)
    again = _id(tmp_path, local)
    blob = json.loads((model_dir / "tokenizer.json").read_text())
    blob["added_tokens"][0]["content"] = "<padding>"
    (model_dir / "tokenizer.json").write_text(json.dumps(blob))
    assert _id(tmp_path, local) != again
    assert direct_before != before  # format is part of the id


def test_dtype_is_resolved_per_device_as_at_load_time(tmp_path):
    from shb.models import resolve_dtype_name

    toy = {"kind": "toy", "seed": 0}
    auto = {"device": "auto", "dtype": "auto"}
    assert _id(tmp_path, toy, auto, device="cpu") == _id(tmp_path, toy, {"dtype": "float32"}, device="cpu")
    assert _id(tmp_path, toy, auto, device="cuda") == _id(tmp_path, toy, {"dtype": "bfloat16"}, device="cuda")
    assert _id(tmp_path, toy, auto, device="cpu") != _id(tmp_path, toy, auto, device="cuda")
    assert _id(tmp_path, {**toy, "dtype": "float16"}) != _id(tmp_path, toy)
    assert resolve_dtype_name("auto", "cuda:1") == "bfloat16" and resolve_dtype_name(None, "cpu") == "float32"
    (unit,) = plan.expand(_suite(tmp_path, toy, auto), device="cuda")
    assert unit.spec["model"]["dtype"] == "bfloat16"


def test_attention_implementation_and_toy_recipe_are_in_the_id(tmp_path, monkeypatch):
    toy = {"kind": "toy", "seed": 0}
    base = _id(tmp_path, toy)
    assert _id(tmp_path, {**toy, "attn_implementation": "eager"}) != base
    assert _id(tmp_path, {**toy, "align_data": "harmful-heavy"}) != base
    assert _id(tmp_path, {"kind": "toy", "seed": 0, "base_seed": 0, "align_seed": 0}) == base  # same recipe
    from shb.models import toy as toy_module

    monkeypatch.setattr(toy_module, "TOY_VERSION", toy_module.TOY_VERSION + 1)
    assert _id(tmp_path, toy) != base


def test_file_hash_is_cached_by_stamp_and_redone_when_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SHB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"a" * 1000)
    real = fpmod.file_sha256(path)
    (entry,) = (tmp_path / "cache" / "fingerprints").iterdir()
    cached = json.loads(entry.read_text())
    entry.write_text(json.dumps({**cached, "sha256": "from-the-cache"}))
    assert fpmod.file_sha256(path) == "from-the-cache"  # same stamp: not reread
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(cached["stamp"]["mtime_ns"] + 10**9,) * 2)
    assert fpmod.file_sha256(path) not in ("from-the-cache", real)


def _fake_hub_cache(root: Path, repo: str, sha: str, files: dict[str, bytes]) -> None:
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(sha)
    snapshot = folder / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (snapshot / name).write_bytes(blob)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fpmod._COMMITS.clear()
    yield root
    fpmod._COMMITS.clear()


def test_hub_model_is_named_by_its_commit_offline(tmp_path, hub_cache):
    hub = {"kind": "hf", "path": "org/model"}
    unknown = _id(tmp_path, hub)
    notes = plan.notes(_suite(tmp_path, hub))
    assert len(notes) == 1 and "org/model" in notes[0] and "unknown" in notes[0] and "HF_HUB_OFFLINE" in notes[0]
    _fake_hub_cache(hub_cache, "org/model", "a" * 40, {"config.json": b"{}", "model.safetensors": b"x"})
    fpmod._COMMITS.clear()
    first = _id(tmp_path, hub)
    assert first != unknown and plan.notes(_suite(tmp_path, hub)) == []
    assert first == _id(tmp_path, {**hub, "revision": "a" * 40})  # a pinned commit is the same content
    _fake_hub_cache(hub_cache, "org/model", "b" * 40, {"config.json": b"{}", "model.safetensors": b"y"})
    fpmod._COMMITS.clear()
    assert _id(tmp_path, hub) != first


def test_pickle_only_hub_model_is_refused_before_any_work_unless_allowed(hub_cache):
    from shb.models import check_available

    files = {"config.json": b"{}", "pytorch_model-00001-of-00002.bin": b"p", "pytorch_model-00002-of-00002.bin": b"p",
             "pytorch_model.bin.index.json": b"{}"}
    _fake_hub_cache(hub_cache, "lmsys/vicuna-7b-v1.5", "c" * 40, files)
    with pytest.raises(ModelNotFound) as err:
        check_available("lmsys/vicuna-7b-v1.5", model_id="vicuna")
    text = str(err.value)
    assert "vicuna" in text and "only pickle weights" in text and "pytorch_model-00001-of-00002.bin" in text
    assert '"allow_pickle": true' in text and "weights_only=True" in text and "safetensors" in text
    check_available("lmsys/vicuna-7b-v1.5", allow_pickle=True)


def test_paper_suite_fingerprints_are_reported_unknown_offline(hub_cache):
    repo = Path(__file__).resolve().parents[2]
    notes = plan.notes(suite.load(repo / "suites" / "paper.json"))
    assert sorted(n.split("'")[1] for n in notes) == ["llama-2-7b", "llama-2-7b-chat", "vicuna-7b-v1.5"]


def test_label_contents_do_not_depend_on_labels(tmp_path, model_dir):
    data = copy.deepcopy(_suite(tmp_path, {"kind": "hf", "path": str(model_dir)}).raw)
    contents = plan.label_contents(suite.from_dict(data))
    data["models"][0]["id"] = "renamed"
    renamed = plan.label_contents(suite.from_dict(data))
    assert contents[("model", "m")] == renamed[("model", "renamed")]


def test_shipped_suites_can_share_one_database(monkeypatch, tmp_path, benchmark_files):
    """`shb run suites/demo.json` then `shb run suites/paper-mini.json` into one results.duckdb must not be
    refused: a label the shipped suites share names the same content in each."""
    from shb.identity import content_identity

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)  # suite paths resolve from the suite file, wherever shb runs
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fpmod._COMMITS.clear()
    seen: dict[tuple, dict[str, str]] = {}
    stand_in = tmp_path / "alpaca_data.json"   # paper-table1's Alpaca is a local file users supply
    stand_in.write_text(json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Blue."}] * 200))
    for path in sorted((repo / "suites").glob("*.json")):
        data = suite.anchor_paths(json.loads(path.read_text()), path.parent)  # as suite.load reads it
        for entry in data["datasets"]:
            if entry["kind"] == "alpaca" and not Path(entry["path"]).is_file():
                entry["path"] = str(stand_in)
        for key, content in plan.label_contents(suite.from_dict(data, str(path))).items():
            seen.setdefault(key, {}).setdefault(content_identity(content), path.name)
    clashes = {key: sorted(v.values()) for key, v in seen.items() if len(v) > 1}
    assert not clashes, f"labels reused for different content across suites/: {clashes}"


def test_a_database_from_before_labels_is_checked_by_its_prompts(tmp_path):
    from shb.errors import UsageError
    from shb.identity import check_labels
    from shb.store import Store

    with Store(tmp_path / "old.duckdb") as store:
        with store.transaction():
            store.insert("prompts", [{"dataset_id": "harm", "prompt_id": 0, "text": "a", "dataset_hash": "1" * 64}])
        check_labels(store, {}, {"harm": "1" * 64, "other": "2" * 64})  # same content, new label: fine
        with pytest.raises(UsageError, match="dataset 'harm'.*1111111111111111.*2222222222222222"):
            check_labels(store, {}, {"harm": "2" * 64})
