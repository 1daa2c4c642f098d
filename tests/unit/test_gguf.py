"""GGUF model specs without loading a model: fingerprint = the file's sha256, ids independent of where
the file lives, a missing gguf package refused with how to install it, suites that name GGUF models."""

from __future__ import annotations

import hashlib
import sys

import pytest

from shb import plan, suite
from shb.errors import ModelNotFound, UsageError
from shb.models import fetch, gguf
from shb.models.fingerprint import fingerprint

pytest.importorskip("gguf")


def _tiny_gguf(path, arch="llama"):
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.ones((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _suite(model: dict) -> dict:
    return {"name": "g", "models": [{"id": "m", "kind": "hf", **model}],
            "datasets": [{"id": "h", "kind": "toy-harmful", "limit": 2}],
            "ablations": [{"id": "ua", "kind": "undifferentiated"}], "metrics": [{"id": "ships", "kind": "ships"}]}


def test_fingerprint_is_the_files_sha256_wherever_it_lives(tmp_path):
    a = _tiny_gguf(tmp_path / "a.gguf")
    (tmp_path / "d").mkdir()
    b = tmp_path / "d" / "copy.gguf"
    b.write_bytes(a.read_bytes())
    digest = "gguf:" + hashlib.sha256(a.read_bytes()).hexdigest()
    assert fingerprint({"kind": "hf", "gguf_file": str(a)}) == {"weights": digest, "tokenizer": digest, "chat_template": digest}
    in_dir = {"path": str(tmp_path / "d"), "gguf_file": "copy.gguf"}
    assert fingerprint({"kind": "hf", **in_dir})["weights"] == digest
    ids = [u.unit_id for spec in ({"gguf_file": str(a)}, in_dir) for u in plan.expand(suite.from_dict(_suite(spec)))]
    assert ids[0] == ids[1]   # content names the model, not its location
    b.write_bytes(a.read_bytes() + b"\0")
    assert plan.expand(suite.from_dict(_suite(in_dir)))[0].unit_id != ids[0]


def test_header_gives_the_plan_its_geometry(tmp_path):
    path = _tiny_gguf(tmp_path / "a.gguf")
    info = gguf.check(path, "m")
    assert (info["architecture"], info["layers"], info["heads"], info["hidden"], info["types"]) == ("llama", 2, 4, 8, ["F32"])
    assert gguf.geometry({"kind": "hf", "gguf_file": str(path)})["heads"] == 4


def test_missing_gguf_package_is_one_clear_error(tmp_path, monkeypatch):
    path = _tiny_gguf(tmp_path / "a.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(UsageError, match=r"needs the gguf package, which is not installed: pip install gguf"):
        gguf.check(path, "m")


def test_fetched_model_resolves_to_the_cache_or_says_which_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SHB_CACHE", str(tmp_path))
    spec = {"kind": "hf", "fetch": "smollm2"}
    with pytest.raises(ModelNotFound, match=r"run `shb models fetch smollm2` first"):
        gguf.locate(spec, "m")
    assert fingerprint(spec)["weights"] is None and "shb models fetch smollm2" in fingerprint(spec)["why"]
    target = fetch.target("smollm2")
    assert target == tmp_path / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target.parent.mkdir(parents=True)
    _tiny_gguf(target)
    assert gguf.locate(spec, "m") == target


def test_schema_takes_gguf_models(tmp_path):
    suite.from_dict(_suite({"fetch": "smollm2"}))
    suite.from_dict(_suite({"gguf_file": "x.gguf"}))
    suite.from_dict(_suite({"path": "org/repo", "gguf_file": "x.Q4_0.gguf"}))
    for bad in ({"fetch": "smollm2", "gguf_file": "x.gguf"}, {"fetch": "nope"}, {}):
        with pytest.raises(UsageError):
            suite.from_dict(_suite(bad))


def test_cli_spec_of_a_gguf_model():
    assert gguf.spec_from_cli("fetch:smollm2", None) == {"kind": "hf", "fetch": "smollm2"}
    assert gguf.spec_from_cli("m.gguf", None) == {"kind": "hf", "gguf_file": "m.gguf"}
    assert gguf.spec_from_cli("org/repo", "m.gguf") == {"kind": "hf", "path": "org/repo", "gguf_file": "m.gguf"}
    assert gguf.spec_from_cli("org/repo", None) is None
