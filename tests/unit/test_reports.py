"""Reports on a database filled with synthetic but schema-correct rows (no model, no torch).

Expected values come from the rows inserted here (counts of harmful verdicts, chosen heads, head
geometry), never from re-running the report's own query.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import polars as pl
import pytest
from click.testing import CliRunner

from shb.reports import asr as asr_report
from shb.reports import efficiency, overlap, runs, sahara
from shb.store import Store

LAYERS, HEADS, HEAD_DIM, HIDDEN, N_PARAMS = 3, 4, 8, 32, 50_000
N_PROMPTS = 10
# harmful verdicts out of N_PROMPTS at k = 0..5, per decoding; the ASR change at k is (c[k] - c[0]) / 10
HARMFUL = {"greedy": [1, 3, 4, 6, 6, 8], "sample": [2, 2, 5, 5, 7, 9]}
DECODING = {"greedy": {"mode": "greedy"}, "sample": {"mode": "sample", "top_k": 5, "temperature": 1.0, "top_p": 1.0}}
CHOSEN = [(1, 2), (0, 3), (2, 1)]   # Sahara's head per step 1..3


def _unit(unit_id, model, dataset, ablation, metric, kind, fmt="chat", ablation_kind="undifferentiated", run="r1",
          status="done"):
    spec = {"version": 1, "model": {"kind": "toy"}, "dataset": {"kind": "toy-harmful", "format": fmt},
            "ablation": {"kind": ablation_kind, "epsilon": 1e-5}, "metric": {"kind": kind}}
    return {"unit_id": unit_id, "run_id": run, "suite_name": "synthetic", "model_id": model, "dataset_id": dataset,
            "ablation_id": ablation, "metric_id": metric, "metric_kind": kind, "spec": spec, "status": status,
            "error": None, "seconds": 2.5, "n_chunks": 3}


def _head_scores(seed):
    rng = random.Random(seed)
    return {(layer, head): rng.random() for layer in range(LAYERS) for head in range(HEADS)}


def fill(store: Store) -> None:
    base = _head_scores(0)
    rows = {"runs": [], "units": [], "models": [], "ships": [], "ships_dataset": [], "sahara_steps": [],
            "generations": [], "judgments": [], "chunks": []}
    for run_id, status in (("r1", "done"), ("r2", "failed")):
        rows["runs"].append({"run_id": run_id, "suite_name": "synthetic", "status": status, "shb_version": "0.1.0",
                             "torch_version": "2.13.0", "git_commit": "abc123", "device": "cpu", "dtype": "float32"})
    for model in ("toy-a", "toy-b", "toy-c"):
        rows["models"].append({"model_id": model, "source": "toy", "architecture": "llama", "n_layers": LAYERS,
                               "n_heads": HEADS, "n_kv_heads": HEADS, "head_dim": HEAD_DIM, "hidden_size": HIDDEN,
                               "n_params": N_PARAMS})
    # toy-a and toy-b: identical head scores; toy-c: the same scores negated (reversed ranks).
    per_model = {"toy-a": base, "toy-b": dict(base), "toy-c": {h: -s for h, s in base.items()}}
    for model, scores in per_model.items():
        uid = f"ships-{model}"
        rows["units"].append(_unit(uid, model, "toy-harmful", "ua", "ships", "ships"))
        for prompt in range(N_PROMPTS):
            for (layer, head), score in scores.items():
                rows["ships"].append({"unit_id": uid, "model_id": model, "dataset_id": "toy-harmful", "prompt_id": prompt,
                                      "ablation_id": "ua", "layer": layer, "head": head,
                                      "score": score + 0.01 * math.sin(prompt)})  # same shift for every head
        uid = f"sd-{model}"
        rows["units"].append(_unit(uid, model, "toy-harmful", "ua", "ships_dataset", "ships_dataset"))
        for (layer, head), score in scores.items():
            rows["ships_dataset"].append({"unit_id": uid, "model_id": model, "dataset_id": "toy-harmful",
                                          "ablation_id": "ua", "layer": layer, "head": head, "score": score, "rank_r": 1})
    rows["units"].append(_unit("sahara-a", "toy-a", "toy-harmful", "ua", "sahara", "sahara"))
    for step, chosen in enumerate(CHOSEN, start=1):
        for layer in range(LAYERS):
            for head in range(HEADS):
                rows["sahara_steps"].append({"unit_id": "sahara-a", "step": step, "layer": layer, "head": head,
                                             "score": 1.0 + step + (2.0 if (layer, head) == chosen else 0.0),
                                             "chosen": (layer, head) == chosen})
    rows["units"].append(_unit("asr-a", "toy-a", "toy-harmful", "ua", "asr", "asr", fmt="template"))
    heads = [f"{l}-{h}" for l, h in CHOSEN] + ["1-1", "2-2"]
    for mode, counts in HARMFUL.items():
        for k, harmful in enumerate(counts):
            for prompt in range(N_PROMPTS):
                gid = f"g-{mode}-{k}-{prompt}"
                rows["generations"].append({
                    "generation_id": gid, "unit_id": "asr-a", "model_id": "toy-a", "dataset_id": "toy-harmful",
                    "prompt_id": prompt, "heads": heads[:k], "head_source": "sahara:sahara", "k": k, "ablation_id": "ua",
                    "decoding": DECODING[mode], "max_new_tokens": 32, "sample_index": 0, "text": "x", "n_tokens": 1,
                    "finish_reason": "length"})
                rows["judgments"].append({"generation_id": gid, "unit_id": "asr-a", "judge_id": "keyword-paper",
                                          "judge_hash": "h" * 16, "harmful": prompt < harmful, "raw": None})
    rows["chunks"] += [{"unit_id": "ships-toy-a", "chunk": f"layer-{i}", "run_id": "r1", "seconds": 1.0}
                       for i in range(LAYERS)]
    rows["units"].append(_unit("broken", "toy-c", "toy-harmful", "sc", "ships", "ships", run="r2", status="failed"))
    # utility: accuracy 9/10 unablated, 7/10 with the 3 Sahara heads; benign NLL 2.0 -> 2.5 nats
    rows["units"].append(_unit("util-a", "toy-a", "toy-harmful", "ua", "utility", "utility"))
    rows["utility_docs"] = []
    for k, correct, nll in ((0, 9, 2.0), (3, 7, 2.5)):
        for doc in range(N_PROMPTS):
            common = {"unit_id": "util-a", "model_id": "toy-a", "dataset_id": "toy-harmful", "ablation_id": "ua",
                      "metric_id": "utility", "judge_id": "", "k": k, "head_source": "sahara:sahara",
                      "heads": [f"{l}-{h}" for l, h in CHOSEN][:k], "doc_id": doc, "sample_index": 0, "weight": 1.0}
            rows["utility_docs"].append({**common, "part": "lm_eval", "task": "shb_toy_topic", "measure": "acc",
                                         "value": 1.0 if doc < correct else 0.0})
            rows["utility_docs"].append({**common, "part": "benign_loss", "task": "toy-benign-chats", "measure": "nll",
                                         "value": nll + 0.1 * math.sin(doc)})
    # attention of the first Sahara head and a median head: the safety head reads "bomb" on harmful prompts
    rows["units"].append(_unit("att-a", "toy-a", "toy-harmful", "ua", "attention", "attention"))
    rows["head_attention"] = []
    tokens = {"harmful": ["<s>", "how", "bomb", "<|assistant|>"], "benign": ["<s>", "bake", "bread", "<|assistant|>"]}
    weights = {("safety-1", "harmful"): [0.1, 0.1, 0.7, 0.1], ("safety-1", "benign"): [0.6, 0.1, 0.1, 0.2],
               ("median", "harmful"): [0.4, 0.2, 0.2, 0.2], ("median", "benign"): [0.4, 0.2, 0.2, 0.2]}
    for (role, prompt_set), ws in weights.items():
        layer, head = CHOSEN[0] if role == "safety-1" else (0, 0)
        for prompt in range(2):
            rows["head_attention"] += [
                {"unit_id": "att-a", "model_id": "toy-a", "dataset_id": "toy-harmful", "ablation_id": "ua",
                 "prompt_set": prompt_set, "prompts_dataset_id": "toy-harmful" if prompt_set == "harmful" else "toy-benign",
                 "prompt_id": prompt, "role": role, "layer": layer, "head": head, "position": i, "token": t, "weight": w}
                for i, (t, w) in enumerate(zip(tokens[prompt_set], ws))]
    with store.transaction():
        for table, table_rows in rows.items():
            store.insert(table, table_rows)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("reports") / "results.duckdb"
    with Store(path) as store:
        fill(store)
    return path


@pytest.fixture()
def store(db):
    with Store(db, read_only=True) as s:
        yield s


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("empty") / "results.duckdb"
    Store(path).close()
    return path


# -- sahara ----------------------------------------------------------------------------------------
def test_sahara_k_columns_are_the_inserted_asr_differences(store):
    table = sahara.change_table(sahara.asr_by_k(store))
    assert table.height == 2  # greedy and sampled are never pooled
    for row in table.iter_rows(named=True):
        mode = "greedy" if row["decoding"] == "greedy" else "sample"
        counts = HARMFUL[mode]
        assert row["asr_base"] == pytest.approx(counts[0] / N_PROMPTS)
        expected = [(counts[k] - counts[0]) / N_PROMPTS for k in range(1, 6)]
        assert [row[f"k={k}"] for k in range(1, 6)] == pytest.approx(expected)
        assert row["mean"] == pytest.approx(sum(expected) / 5)
        assert row["head_source"] == "sahara:sahara" and row["ablation_id"] == "ua"


def test_sahara_chosen_heads_step_by_step(store):
    heads = sahara.chosen_heads(store)
    assert heads["head_name"].to_list() == [f"{l}-{h}" for l, h in CHOSEN]
    assert heads["step"].to_list() == [1, 2, 3]
    assert heads["head_set"].to_list()[-1] == ",".join(f"{l}-{h}" for l, h in CHOSEN)


# -- overlap ---------------------------------------------------------------------------------------
def test_spearman_hand_computed():
    # ranks of y with a tie: 1, 2, 3.5, 5, 3.5; centred x: -2..2, centred y: -2, -1, .5, 2, .5
    # sum of products 8, sums of squares 10 and 9.5: rho = 8 / sqrt(95)
    assert overlap.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert overlap.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert overlap.spearman([1, 1, 1], [1, 2, 3]) is None  # constant vector: undefined
    with pytest.raises(ValueError):
        overlap.spearman([1, 2], [1])


@pytest.mark.parametrize("metric", ["ships", "ships_dataset"])
def test_overlap_identical_and_reversed(store, metric):
    pairs = overlap.pairwise(overlap.scores(store, metric), top=5)
    by_pair = {(r["result_a"].split(" ")[0], r["result_b"].split(" ")[0]): r for r in pairs.iter_rows(named=True)}
    same = by_pair[("toy-a", "toy-b")]
    assert same["intersection"] == 5 and same["jaccard"] == pytest.approx(1.0)
    assert same["spearman"] == pytest.approx(1.0)
    assert same["heads_compared"] == LAYERS * HEADS
    reversed_ = by_pair[("toy-a", "toy-c")]
    assert reversed_["spearman"] == pytest.approx(-1.0)
    assert reversed_["intersection"] == 0 and reversed_["jaccard"] == pytest.approx(0.0)
    top5 = sorted(_head_scores(0).items(), key=lambda kv: -kv[1])[:5]
    assert sorted(same["shared_heads"]) == sorted(f"{l}-{h}" for (l, h), _ in top5)


def test_overlap_shared_heads_and_filters(store):
    scores = overlap.scores(store, "ships", models=["toy-a", "toy-b"])
    shared = overlap.shared_heads(scores, top=3)
    assert shared.height == 3 and set(shared["n_results"].to_list()) == {2}
    from shb.errors import UsageError

    with pytest.raises(UsageError, match="two or more results"):
        overlap.pairwise(overlap.scores(store, "ships", models=["toy-a"]), top=3)


# -- asr, efficiency, runs -------------------------------------------------------------------------
def test_asr_baseline_against_ablated(store):
    frame = asr_report.summary(store)
    assert set(frame["format"].to_list()) == {"template"}  # from units.spec -> dataset -> format
    greedy = frame.filter((pl.col("decoding") == "greedy") & (pl.col("k") == 3)).row(0, named=True)
    assert greedy["baseline_asr"] == pytest.approx(HARMFUL["greedy"][0] / N_PROMPTS)
    assert greedy["ablated_asr"] == pytest.approx(HARMFUL["greedy"][3] / N_PROMPTS)


def test_efficiency_parameter_counts_from_geometry(store):
    frame = efficiency.report(store)
    measured = frame.filter(pl.col("source") == "measured")
    for row in measured.iter_rows(named=True):
        assert row["entries_changed"] == row["k"] * HEAD_DIM * HIDDEN and row["values_chosen"] == row["k"]
        assert row["share_pct"] == pytest.approx(100.0 * row["k"] * HEAD_DIM * HIDDEN / N_PARAMS)
    greedy = measured.filter((pl.col("decoding") == "greedy") & (pl.col("k") == 2)).row(0, named=True)
    assert greedy["asr"] == pytest.approx(HARMFUL["greedy"][2] / N_PROMPTS)
    published = frame.filter(pl.col("source").str.starts_with("published"))
    assert published.height == len(efficiency.PUBLISHED)
    assert published["entries_changed"].null_count() == published.height  # never invented
    assert measured.filter(pl.col("k") == 0).is_empty()


def test_runs_counts_by_status(store):
    frame = runs.runs(store)
    r1 = frame.filter(pl.col("run_id") == "r1").row(0, named=True)
    r2 = frame.filter(pl.col("run_id") == "r2").row(0, named=True)
    assert r1["done"] == 10 and r1["failed"] == 0 and r1["chunks"] == LAYERS  # 3 ships, 3 ships_dataset, sahara, asr, utility, attention
    assert r2["failed"] == 1 and r2["done"] == 0 and r2["git_commit"] == "abc123"


# -- the command line: every format, empty databases, missing matplotlib ---------------------------
def _cli(*args):
    from shb.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


REPORTS = {"ships": [], "sahara": [], "asr": [], "overlap": ["--top", "4"], "efficiency": [], "runs": []}
FORMATS = {"ships": "table json csv png html", "sahara": "table json csv png html", "asr": "table json csv html",
           "overlap": "table json csv png html", "efficiency": "table json csv png html", "runs": "table json csv html"}


@pytest.mark.parametrize("name", list(REPORTS))
def test_every_format_renders(db, tmp_path, name):
    for fmt in FORMATS[name].split():
        out = tmp_path / f"{name}-{fmt}"
        args = ["report", name, "--db", str(db), *REPORTS[name], "--format", fmt]
        if fmt in ("png", "html"):
            args += ["--out", str(out) if fmt == "png" else str(out) + ".html"]
        result = _cli(*args)
        assert result.exit_code == 0, (fmt, result.output)
        if fmt == "json":
            assert json.loads(result.output)
        elif fmt == "csv":
            import io

            assert pl.read_csv(io.StringIO(result.output)).height > 0
        elif fmt == "png":
            files = sorted(out.glob("*.png"))
            assert files
            for file in files:
                blob = file.read_bytes()
                assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5_000, file
        elif fmt == "html":
            page = (tmp_path / f"{name}-{fmt}.html").read_text()
            assert page.startswith("<!DOCTYPE html>") and "<table" in page
            if "png" in FORMATS[name]:
                assert "data:image/png;base64," in page


@pytest.mark.parametrize("name", list(REPORTS))
def test_empty_database_says_what_to_run(empty_db, name):
    result = _cli("report", name, "--db", str(empty_db), *REPORTS[name])
    assert result.exit_code == 2
    assert "shb run" in result.output or "suite" in result.output


def test_figures_without_matplotlib_name_the_extra(db, tmp_path, monkeypatch):
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = _cli("report", "overlap", "--db", str(db), "--format", "png", "--out", str(tmp_path))
    assert result.exit_code == 2 and "pip install 'shb[figures]'" in result.output
    page = tmp_path / "page.html"
    result = _cli("report", "overlap", "--db", str(db), "--format", "html", "--out", str(page))
    assert result.exit_code == 0 and "<table" in page.read_text()  # tables still there


def test_reports_never_import_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import shb.reports.cli, shb.reports.ships, shb.reports.sahara, shb.reports.asr, shb.reports.overlap,"
            " shb.reports.efficiency, shb.reports.runs, shb.reports.html, shb.reports.figures")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_efficiency_puts_utility_lost_beside_asr_gained(store):
    """The synthetic utility unit measured the 3 Sahara heads of toy-a (ua): accuracy 0.9 -> 0.7 and benign
    NLL 2.0 -> 2.5 nats; the k = 3 efficiency rows carry those changes, the other rows none."""
    from shb.reports import efficiency

    frame = efficiency.report(store, include_published=False)
    with_utility = frame.filter(pl.col("utility_acc_change").is_not_null())
    assert sorted(with_utility["k"].to_list()) == [3, 3]   # greedy and sampled decoding, same head set
    assert with_utility["utility_acc_change"].to_list() == pytest.approx([-0.2, -0.2])
    assert with_utility["benign_nll_change"].to_list() == pytest.approx([0.5, 0.5], abs=0.02)
    assert frame.filter(pl.col("k") != 3)["utility_acc_change"].null_count() == frame.filter(pl.col("k") != 3).height

