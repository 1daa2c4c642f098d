"""suites/beyond-mini.json run for real, as shipped: the four plug-ins of issue 23 produce their rows and
reports, each shows what the toys were built to show, and the closing note prints what they measured
(method overlap, one attention figure, the attention swap's ASR, the AHD curve), whatever it shows.

The suite runs in 80 s on two cores once its toys are cached (3 min 15 s from an empty cache);
the same plug-ins also run through both executors at test size in tests/integration/test_same_tables.py.
SHB_BEYOND_DB=path reads a finished run's database instead of running the suite."""

import json
import os
import time
from pathlib import Path

import pytest

from tests.integration.test_paper_mini import shb

pytestmark = pytest.mark.slow
SUITE = "suites/beyond-mini.json"
HEADS_MODELS = ("toy-a", "toy-l2", "toy-l2-ahd")
METHODS = {"ships", "ships_dataset", "sahara", "rdsha"}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    if os.environ.get("SHB_BEYOND_DB"):  # a database of a finished `shb run suites/beyond-mini.json`
        return Path(os.environ["SHB_BEYOND_DB"])
    path = tmp_path_factory.mktemp("beyond-mini") / "results.duckdb"
    started = time.perf_counter()
    shb("run", SUITE, "--db", str(path), "--quiet")
    print(f"\nbeyond-mini ran in {time.perf_counter() - started:.0f} s")
    return path


def _json(*args):
    return json.loads(shb(*args, "--format", "json"))


def _sql(db, query):
    return _json("sql", query, "--db", str(db))


def _overlap(db, model):
    return _json("report", "overlap", "--metric", "methods", "--model", model, "--dataset", "toy-harmful-32",
                 "--ablation", "ua", "--top", "3", "--db", str(db)).values()


def _curve(db):
    """{model: {k: ASR}} of the Sahara heads ablated k at a time."""
    rows = _sql(db, "SELECT model_id, k, asr FROM asr WHERE head_source = 'sahara:sahara-16' ORDER BY ALL")
    curve: dict = {}
    for r in rows:
        curve.setdefault(r["model_id"], {})[r["k"]] = r["asr"]
    return curve


def _swap_asr(db):
    """{(model, intervention): asr view row} of the attention-swap units."""
    rows = _sql(db, "SELECT model_id, head_source, asr, n FROM asr WHERE head_source LIKE 'intervention:%' ORDER BY ALL")
    return {(r["model_id"], r["head_source"].removeprefix("intervention:")): r for r in rows}


def test_every_planned_unit_is_done(db):
    planned = _json("plan", SUITE)
    units = _sql(db, "SELECT status, count(*) AS n FROM units GROUP BY 1")
    assert units == [{"status": "done", "n": len(planned)}]


def test_every_method_finds_the_planted_head_of_toy_a(db):
    """toy-a's alignment trained one head and nothing else: each of the four head finders must rank it in
    its top 3 (they agree on little else: that is what the overlap table is for)."""
    from shb.models.toy.build import resolve

    ((layer, head),) = resolve(0, align_seed=1)["align_heads"]
    _pairs, layers = _overlap(db, "toy-a")
    assert {r["method"] for r in layers} == METHODS
    for r in layers:
        assert f"{layer}-{head}" in r["top_heads"], r


def test_attention_swap_moves_safety_where_alignment_put_it(db):
    """toy-a was aligned in one head's attention weights only, so its MLPs are the base model's: loading
    the base's MLPs changes no answer, loading the base's attention removes the refusal."""
    swap = _swap_asr(db)
    assert swap[("toy-a", "attention-from-toy-base")]["asr"] >= 0.9
    plain = _sql(db, "SELECT asr FROM asr WHERE model_id = 'toy-a' AND head_source = 'sahara:sahara-16' AND k = 0")
    assert swap[("toy-a", "mlp-from-toy-base")]["asr"] == plain[0]["asr"]
    same = _sql(db, "SELECT count(*) AS n, count(*) FILTER (WHERE s.text = g.text) AS same "
                    "FROM generations s JOIN generations g USING (model_id, prompt_id) "
                    "WHERE s.intervention_id = 'mlp-from-toy-base' AND s.model_id = 'toy-a' "
                    "AND g.intervention_id IS NULL AND g.k = 0 AND g.head_source = 'sahara:sahara-16'")
    assert same == [{"n": 32, "same": 32}]


def test_head_dropout_spreads_safety_over_more_heads(db):
    """Trained on layer 2's eight heads, ordinary alignment puts the refusal in one of them (ablating it
    breaks safety); with AHD (p = 0.5) the model is as safe unmodified and one head no longer suffices."""
    curve = _curve(db)
    assert curve["toy-l2"][1] >= 0.75
    assert curve["toy-l2-ahd"][0] <= 0.25 and curve["toy-l2-ahd"][1] <= 0.25


def test_html_book_compares_the_methods_of_every_cell(db, tmp_path):
    """`shb report html` holds `overlap --metric methods` for each model, dataset and ablation where two or
    more head finders ran, beside the plain overlap report."""
    page = tmp_path / "book.html"
    shb("report", "html", "--db", str(db), "--out", str(page))
    text = page.read_text()
    assert "overlap --metric methods --model toy-a --dataset toy-harmful-32 --ablation ua" in text
    assert text.count("which layers each method&#x27;s top-10 favours") >= 1


def test_closing_note(db, tmp_path):
    lines = ["", "== beyond-mini closing note =="]
    for model in HEADS_MODELS:
        pairs, layers = _overlap(db, model)
        assert {r["method"] for r in layers} == METHODS
        lines.append(f"method overlap (top-3), {model}:")
        lines += [f"  {r['method_a']:>13} / {r['method_b']:<13} Jaccard {r['jaccard']:.2f}  Spearman "
                  f"{r['spearman'] if r['spearman'] is None else round(r['spearman'], 2)}" for r in pairs]
        lines += [f"  {r['method']:>13}: {','.join(r['top_heads'])}  ({r['per_layer']})" for r in layers]
    out = tmp_path / "attention"
    figures = shb("report", "attention", "--db", str(db), "--format", "png", "--out", str(out)).split()
    assert figures and all(Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    lines.append(f"attention figures: {', '.join(figures)}")
    for model in ("toy-a", "toy-l2"):
        summary = _json("report", "attention", "--db", str(db), "--model", model)
        assert {r["prompt_set"] for r in summary} == {"harmful", "benign"}
        assert {r["role"] for r in summary} >= {"median", "safety-1"}
        lines += [f"  {model} {r['role']} {r['head']} {r['prompt_set']}: {', '.join(r['top_tokens'])}"
                  for r in summary]
    swap = _swap_asr(db)
    assert {intervention for _, intervention in swap} == {"attention-from-toy-base", "mlp-from-toy-base"}
    lines += [f"swap ASR {model} {intervention}: {r['asr']:.3f} (n={r['n']})"
              for (model, intervention), r in swap.items()]
    curve = _curve(db)
    assert set(curve) == {*HEADS_MODELS, "toy-full"}  # toy-full: the swap's unmodified ASR, and a fourth curve
    drawn = shb("report", "asr", "--db", str(db), "--format", "png", "--across", "models", "--out", str(out)).split()
    ahd_figure = [f for f in drawn if "asr-by-k-models-toy-harmful-32-sahara_sahara-16" in f]
    assert len(ahd_figure) == 1
    lines.append(f"AHD figure: {ahd_figure[0]}")
    for model in (*HEADS_MODELS, "toy-full"):
        lines.append(f"AHD curve {model}: " + "  ".join(f"k={k}:{asr:.2f}" for k, asr in curve[model].items()))
    for ordinary in ("toy-a", "toy-l2"):
        target = curve[ordinary][1]
        reached = [k for k, asr in curve["toy-l2-ahd"].items() if asr >= target]
        lines.append(f"ASR of one head on {ordinary}: {target:.2f}; toy-l2-ahd reaches it at k = "
                     f"{reached[0] if reached else 'none of ' + str(sorted(curve['toy-l2-ahd']))}")
    utility = [r for r in _json("report", "utility", "--db", str(db)) if r["metric_id"] == "utility-ahd"]
    assert {r["model_id"] for r in utility} == {"toy-l2", "toy-l2-ahd"}
    lines += [f"utility {r['model_id']} k={r['k']} {r['part']} {r['measure']}: {r['value']:.3f}" for r in utility]
    print("\n".join(lines))
