"""suites/paper.json and suites/paper-mini.json: valid, shaped like the paper's experiment, and
`shb plan` works on them without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shb.suite import load

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "suites" / "paper.json"
MINI = REPO / "suites" / "paper-mini.json"
NO_TORCH = "import sys; sys.modules['torch'] = None; from shb.cli import main; main()"


def _metrics(suite):
    return {m.id: m for m in suite.metrics}


def test_paper_suite_declares_the_papers_experiment():
    suite = load(PAPER)
    models = {m.id: m for m in suite.models}
    # Llama-2-7b (base) is only the attention swap's reference (Fig. 6a): no head metric runs on it
    assert {m.get("path") for m in models.values()} == {"meta-llama/Llama-2-7b-chat-hf", "lmsys/vicuna-7b-v1.5",
                                                         "meta-llama/Llama-2-7b-hf"}
    assert all(m.get("geometry") == {"layers": 32, "heads": 32, "params": 6738415616} for m in models.values())
    kinds = {(d.kind, d.get("format")) for d in suite.datasets}
    assert kinds == {(k, f) for k in ("advbench", "jailbreakbench", "maliciousinstruct") for f in ("direct", "template")}
    assert all(d.get("path") is None for d in suite.datasets)  # fetched upstream, pinned by sha256
    assert {(a.kind, a.get("epsilon")) for a in suite.ablations} == {("undifferentiated", 1e-5), ("scaling", 1e-5)}
    metrics = _metrics(suite)
    assert {m.kind for m in metrics.values()} == {"ships", "ships_dataset", "sahara", "asr", "utility"}
    sahara = [m for m in metrics.values() if m.kind == "sahara"]
    assert len(sahara) == 1 and sahara[0].get("steps") == 5
    assert all(m.get("models") and "llama-2-7b" not in m.get("models") for m in metrics.values())
    assert {e.kind for e in suite.interventions} == {"attention_swap"}
    asr = [m for m in metrics.values() if m.kind == "asr" and not m.get("intervention")]
    # dataset-level (Sahara) and query-level (each prompt's top Ships heads), each greedy and top-5 sampled
    assert sorted((m.get("heads"), m.get("decoding")["mode"]) for m in asr) == sorted(
        (heads, mode) for heads in (f"sahara:{sahara[0].id}", "ships_per_prompt") for mode in ("greedy", "sample"))
    assert suite.defaults["dtype"] == "float32"  # as the paper ran
    assert models["vicuna-7b-v1.5"].get("allow_pickle") is True  # its hub repo has pickle weights only
    for m in asr:
        assert m.get("k") == [0, 1, 2, 3, 4, 5]
        assert m.get("max_new_tokens") == 128 and m.get("judge") == "keyword-paper"
        if m.get("decoding")["mode"] == "sample":
            assert m.get("decoding")["top_k"] == 5
    utility = [m for m in metrics.values() if m.kind == "utility"]   # Fig. 6b: zero-shot lm-eval tasks
    assert len(utility) == 1 and utility[0].get("heads") == f"sahara:{sahara[0].id}"
    assert utility[0].get("lm_eval") == {"tasks": ["boolq", "rte", "winogrande", "arc_challenge", "openbookqa"],
                                         "num_fewshot": 0}


def test_paper_mini_is_the_same_structure_on_toy_models():
    suite = load(MINI)
    assert all(m.kind == "toy" for m in suite.models)
    planted = [m for m in suite.models if m.get("align", "head") == "head" and m.get("stage", "aligned") == "aligned"]
    bases = [m.get("base_seed") for m in planted]
    assert len(planted) == 3 and len(set(bases)) == 2 and max(bases.count(b) for b in bases) == 2
    # and one toy whose safety is not planted: toy-a's recipe, aligned by training every weight
    (full,) = [m for m in suite.models if m.get("align") == "full"]
    toy_a = next(m for m in planted if m.id == "toy-a")
    assert {k: v for k, v in full.params.items() if k not in ("align", "description")} == toy_a.params
    # toy-a before alignment: the safety-neuron baseline's reference, on which no metric runs
    (base,) = [m for m in suite.models if m.get("stage") == "base"]
    assert base.get("base_seed") == toy_a.get("base_seed")
    assert all(base.id not in (m.get("models") or []) and m.get("models") for m in suite.metrics)
    assert {m.kind for m in suite.metrics} == {"ships", "ships_dataset", "sahara", "asr", "utility"}
    heads = {m.get("heads") for m in suite.metrics if m.kind == "utility" and m.get("heads")}
    # the Sahara heads beside a random set of the same size, and Table 1's heads (chosen on the select part)
    assert heads == {"sahara:sahara", "random", "sahara:sahara-select"}
    # and every Table 1 baseline's utility, beside its ASR
    assert {m.get("intervention") for m in suite.metrics if m.kind == "utility" and m.get("intervention")} \
        == {i.id for i in suite.interventions}
    by_kind = {m.kind: m for m in suite.metrics}
    assert by_kind["sahara"].get("steps") == 3 and by_kind["asr"].get("max_new_tokens") == 32
    toy = [d for d in suite.datasets if d.kind == "toy-harmful"]
    assert toy and toy[0].get("limit") <= 32
    # Paths are relative to the suite file (shb.suite.anchor_paths): load() makes them absolute. Its files
    # are the repository's own, or upstream benchmarks fetched and checked by their pinned hash.
    local = {d.id: Path(d.get("path")) for d in suite.datasets if d.get("path")}
    assert all(p.is_absolute() for p in local.values())
    assert local["toy-benign-chats"] == REPO / "suites" / "data" / "toy-benign-chats.jsonl"
    assert all(p.is_file() and p.is_relative_to(REPO) for p in local.values())
    assert any(d.kind == "maliciousinstruct" and not d.get("path") for d in suite.datasets)


@pytest.mark.parametrize("path", [PAPER, MINI])
def test_validate_cli(path):
    out = subprocess.run([sys.executable, "-c", NO_TORCH, "validate", str(path.relative_to(REPO))], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout


@pytest.mark.parametrize("path", [PAPER, MINI])
def test_plan_runs_without_torch(path, tmp_path, benchmark_files):
    suite = json.loads(path.read_text())
    # Seed a private cache with links to the hash-checked copies: the plan itself must not download.
    cache = tmp_path / "cache" / "datasets"
    cache.mkdir(parents=True)
    for kind_path in benchmark_files.values():
        (cache / kind_path.name).symlink_to(kind_path)
    env = {**os.environ, "SHB_CACHE": str(tmp_path / "cache"), "SHB_DB": str(tmp_path / "none.duckdb")}
    # cwd is the repository root, as in CI: the suites' own files ("suites/data/...") resolve from there.
    out = subprocess.run([sys.executable, "-c", NO_TORCH, "plan", str(path), "--format", "json"],
                         cwd=REPO, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    units = json.loads(out.stdout)
    assert units and all(u["status"] == "pending" for u in units)
    # every model has units, except a reference that only a fit reads (paper-mini's toy-a-base)
    references = {i.get("fit", {}).get("reference") for i in suite.get("interventions", [])}
    assert {u["model"] for u in units} == {m["id"] for m in suite["models"]} - references
    if path.name == "paper.json":  # geometry hints alone give the cost
        assert all(u["forwards"] for u in units)
