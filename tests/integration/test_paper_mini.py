"""suites/paper-mini.json, the paper suite's CPU twin, run for real; every report renders in every
format from its database; the overlap report's numbers are printed for the record."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.benchmarks]  # paper-mini fetches MaliciousInstruct
FORMATS = {"ships": ["table", "json", "csv", "png", "html"], "sahara": ["table", "json", "csv", "png", "html"],
           "asr": ["table", "json", "csv", "html"], "overlap": ["table", "json", "csv", "png", "html"],
           "efficiency": ["table", "json", "csv", "png", "html"], "runs": ["table", "json", "csv", "html"],
           "utility": ["table", "json", "csv", "html"]}


def shb(*args):
    result = subprocess.run([sys.executable, "-m", "shb.cli", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"shb {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("paper-mini") / "results.duckdb"
    started = time.perf_counter()
    shb("run", "suites/paper-mini.json", "--db", str(path), "--quiet")
    print(f"\npaper-mini ran in {time.perf_counter() - started:.0f} s")
    return path


def test_every_unit_is_done(db):
    units = json.loads(shb("sql", "SELECT status, count(*) AS n FROM units GROUP BY 1", "--db", str(db), "--format", "json"))
    assert units == [{"status": "done", "n": 58}]  # 55 + the held-out Table 1 block (sahara-select, its asr and utility)


def test_utility_of_sahara_heads_beside_random_heads(db):
    """paper-mini's utility metrics: the unmodified toy-a, its 3 Sahara heads and 3 random heads, with intervals."""
    rows = json.loads(shb("report", "utility", "--db", str(db), "--format", "json"))
    got = {(r["metric_id"], r["part"], r["k"]) for r in rows}
    for metric in ("utility-sahara", "utility-random"):
        assert {(metric, part, k) for part in ("lm_eval", "over_refusal", "benign_loss") for k in (0, 3)} <= got
    assert all(r["lo"] <= r["value"] <= r["hi"] for r in rows)
    unmodified = next(r for r in rows if r["part"] == "lm_eval" and r["k"] == 0)
    assert unmodified["value"] > 0.8            # the toy answers its topic task (chance 0.25)


@pytest.mark.parametrize("report", sorted(FORMATS))
def test_report_renders_in_every_format(db, tmp_path, report):
    for fmt in FORMATS[report]:
        out = tmp_path / f"{report}-{fmt}"
        args = ["report", report, "--db", str(db), "--format", fmt]
        text = shb(*args, "--out", str(out)) if fmt in ("png", "html") else shb(*args)
        if fmt == "json":
            assert json.loads(text), report
        elif fmt == "csv":
            assert text.count("\n") >= 2, report
        elif fmt == "png":
            pngs = sorted(out.glob("*.png"))
            assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)
        elif fmt == "html":
            page = out.read_text()
            assert page.startswith("<!DOCTYPE html>") or page.lstrip().lower().startswith("<!doctype html>")
            assert "<table" in page
        else:
            assert text.strip(), report


@pytest.mark.parametrize("report", sorted(FORMATS))
def test_default_table_fits_80_columns(db, report):
    """At 80 columns every report's table shows whole numbers (nothing cut to '…') and no line is wider."""
    import os

    result = subprocess.run([sys.executable, "-m", "shb.cli", "report", report, "--db", str(db)], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines and "…" not in result.stdout
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]


def test_overlap_same_base_against_different_base(db):
    """Toy-a and toy-b share a base (like Llama-2-chat and Vicuna); toy-c has its own."""
    tables = json.loads(shb("report", "overlap", "--db", str(db), "--top", "10", "--ablation", "ua",
                            "--dataset", "toy-harmful-32", "--format", "json"))
    rows = next(rows for title, rows in tables.items() if title.startswith("pairwise"))
    pairs = {(r["result_a"].split(" / ")[0], r["result_b"].split(" / ")[0]): r for r in rows}
    same, other = pairs[("toy-a", "toy-b")], pairs[("toy-a", "toy-c")]
    print(f"\ntop-10 overlap toy-a/toy-b (same base): {same['intersection']}/10, Jaccard {same['jaccard']:.3f},"
          f" Spearman {same['spearman']:.3f}; toy-a/toy-c (different base): {other['intersection']}/10,"
          f" Jaccard {other['jaccard']:.3f}, Spearman {other['spearman']:.3f}")
    top1 = json.loads(shb("report", "ships", "--db", str(db), "--top", "1", "--ablation", "ua",
                          "--dataset", "toy-harmful-32", "--format", "json"))
    heads = {r["model_id"]: (r["layer"], r["head"]) for r in top1}
    assert heads["toy-a"] == heads["toy-b"] != heads["toy-c"]   # the planted head of each base, found blind
    assert same["spearman"] > other["spearman"]


def test_every_table1_method_has_utility_beside_its_asr(db):
    """paper-mini measures each baseline's utility too; the efficiency report puts it beside the ASR."""
    rows = json.loads(shb("report", "efficiency", "--db", str(db), "--model", "toy-a", "--format", "json"))
    fitted = [r for r in rows if r["source"] == "measured" and r["family"] in
              ("refusal_direction", "layers", "actsvd", "setdiff", "safety_neurons")]
    assert {r["family"] for r in fitted} == {"refusal_direction", "layers", "actsvd", "setdiff", "safety_neurons"}
    for r in fitted:
        assert r["utility_acc_change"] is not None and r["over_refusal_change"] is not None, r["method"]
        assert r["benign_nll_change"] is not None, r["method"]

