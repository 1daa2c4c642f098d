"""A suite whose weights are not on this machine stops before any work, naming every missing model
and how to supply it (here: suites/paper.json, offline)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_paper_suite_without_weights_names_each_missing_model(tmp_path):
    env = {"PATH": "", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "SHB_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "shb.cli", "run", str(REPO / "suites" / "paper.json"),
                             "--db", str(tmp_path / "r.duckdb")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2
    for model in ("meta-llama/Llama-2-7b-chat-hf", "lmsys/vicuna-7b-v1.5"):
        assert model in result.stderr
    assert "nothing was run" in result.stderr and "hf auth login" in result.stderr
    assert not (tmp_path / "r.duckdb").exists()


def test_local_directory_without_safetensors_is_refused(tmp_path):
    from shb.errors import ModelNotFound
    from shb.models import check_available

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"pickle")
    try:
        check_available(str(tmp_path / "m"))
    except ModelNotFound as exc:
        assert "allow_pickle" in str(exc) and "safetensors" in str(exc)
    else:
        raise AssertionError("a pickle-only checkpoint must be refused by default")
    check_available(str(tmp_path / "m"), allow_pickle=True)
