"""suites/beyond-mini.json run for real: the four plug-ins of issue 23 produce their rows and reports,
and the closing note prints what they measured (method overlap, one attention figure, the attention
swap's ASR, the AHD curve), whatever it shows.

The whole suite trains two more toys and runs Sahara for 8 steps on three models: tens of minutes on two
cores, too long for the default test command. It runs when asked (SHB_FULL_SUITES=1), or reads a finished
run's database (SHB_BEYOND_DB); the same plug-ins run through both executors at test size in
tests/integration/test_same_tables.py on every test run."""

import json
import os
import time
from pathlib import Path

import pytest

from tests.integration.test_paper_mini import shb

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (os.environ.get("SHB_FULL_SUITES") or os.environ.get("SHB_BEYOND_DB")),
                                 reason="runs the whole beyond-mini suite (tens of minutes on 2 cores): set "
                                        "SHB_FULL_SUITES=1, or SHB_BEYOND_DB to a finished run's database")]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    if os.environ.get("SHB_BEYOND_DB"):  # a database of a finished `shb run suites/beyond-mini.json`: its note only
        return Path(os.environ["SHB_BEYOND_DB"])
    path = tmp_path_factory.mktemp("beyond-mini") / "results.duckdb"
    started = time.perf_counter()
    shb("run", "suites/beyond-mini.json", "--db", str(path), "--quiet")
    print(f"\nbeyond-mini ran in {time.perf_counter() - started:.0f} s")
    return path


def _tables(*args):
    return json.loads(shb(*args, "--format", "json"))


def test_every_unit_is_done(db):
    units = _tables("sql", "SELECT status, count(*) AS n FROM units GROUP BY 1", "--db", str(db))
    assert units == [{"status": "done", "n": 28}]


def test_closing_note(db, tmp_path):
    lines = ["", "== beyond-mini closing note =="]
    for model in ("toy-a", "toy-full", "toy-full-ahd"):
        tables = _tables("report", "overlap", "--metric", "methods", "--model", model, "--dataset", "toy-harmful-32",
                         "--ablation", "ua", "--top", "3", "--db", str(db))
        pairs, layers = tables.values()
        assert {r["method"] for r in layers} == {"ships", "ships_dataset", "sahara", "rdsha"}
        lines.append(f"method overlap (top-3), {model}:")
        lines += [f"  {r['method_a']:>13} / {r['method_b']:<13} Jaccard {r['jaccard']:.2f}  Spearman "
                  f"{r['spearman'] if r['spearman'] is None else round(r['spearman'], 2)}" for r in pairs]
        lines += [f"  {r['method']:>13}: {','.join(r['top_heads'])}  ({r['per_layer']})" for r in layers]
    out = tmp_path / "attention"
    figures = shb("report", "attention", "--db", str(db), "--format", "png", "--out", str(out)).split()
    assert figures and all(Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    lines.append(f"attention figures: {', '.join(figures)}")
    summary = _tables("report", "attention", "--db", str(db), "--model", "toy-a")
    lines += [f"  {r['role']} {r['head']} {r['prompt_set']}: {', '.join(r['top_tokens'])}" for r in summary]
    asr = _tables("sql", "SELECT g.model_id, g.intervention_id, avg(CASE WHEN j.harmful THEN 1.0 ELSE 0 END) AS asr, "
                  "count(*) AS n FROM generations g JOIN judgments j USING (generation_id) "
                  "WHERE g.intervention_id IS NOT NULL GROUP BY ALL ORDER BY ALL", "--db", str(db))
    assert {r["intervention_id"] for r in asr} == {"attention-from-toy-base", "mlp-from-toy-base"}
    lines += [f"swap ASR {r['model_id']} {r['intervention_id']}: {r['asr']:.3f} (n={r['n']})" for r in asr]
    curve = _tables("sql", "SELECT model_id, k, avg(asr) AS asr, sum(n) AS n FROM asr WHERE head_source = "
                    "'sahara:sahara-8' GROUP BY ALL ORDER BY ALL", "--db", str(db))
    assert {r["model_id"] for r in curve} == {"toy-a", "toy-full", "toy-full-ahd"}
    for model in ("toy-a", "toy-full", "toy-full-ahd"):
        lines.append(f"AHD curve {model}: " + "  ".join(f"k={r['k']}:{r['asr']:.2f}" for r in curve
                                                       if r["model_id"] == model))
    ahd = {r["k"]: r["asr"] for r in curve if r["model_id"] == "toy-full-ahd"}
    for ordinary in ("toy-a", "toy-full"):
        target = next(r["asr"] for r in curve if r["model_id"] == ordinary and r["k"] == 1)
        reached = [k for k in sorted(ahd) if ahd[k] >= target]
        lines.append(f"ASR of one head on {ordinary}: {target:.2f}; toy-full-ahd reaches it at k = "
                     f"{reached[0] if reached else f'none of {sorted(ahd)}'}")
    print("\n".join(lines))
