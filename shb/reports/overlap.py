"""``shb report overlap``: do different results name the same safety heads? (paper Fig. 5)

A *result* is one unit (model, dataset, ablation and metric content) with a score per head: the mean per-prompt Ships
(``--metric ships``), the generalized Ships (``--metric ships_dataset``) or a Sahara search's ranking
(``--metric sahara``: its chosen heads in order, then the rest by their first-step score; ``sahara_ranking``,
which ``--metric methods`` uses too).
Results may differ in model, dataset or ablation: ``--model M`` with several ``--dataset`` compares one model's
heads across datasets (e.g. the languages of suites/multilingual.json), several ``--model`` one dataset's
across models. For each pair of results:
the size of the intersection of their top-k head sets, its Jaccard index, and the Spearman rank
correlation of the full score vectors over the heads both scored. A screened Ships sweep is named
``(screened)`` and its heads scored by shb.reports.ships.SCREENED_RULE. Heads are compared by
(layer, head) position, which is meaningful across models of one geometry (fine-tunes of one base).
No torch here.
"""

from __future__ import annotations

from itertools import combinations

import polars as pl

from shb.errors import UsageError
from shb.reports.render import require, where

METRICS = {
    "ships": ("ships", "avg(score)", "mean Ships (KL, nats)"),
    "ships_dataset": ("ships_dataset", "avg(score)", "generalized Ships (degrees)"),
    "sahara": ("sahara_steps", None, "Sahara: chosen heads in order, then first-step scores"),
}


def scores(store, metric: str = "ships", models=None, datasets=None, ablations=None) -> pl.DataFrame:
    """One row per (result, layer, head): result label, model, dataset, ablation, score.

    A result is one unit (content), never a label combination: two units of one model, dataset and
    ablation (an exact and a screened sweep, two metric ids) are two results, named by their metric
    label where that is needed, and by unit id where every label coincides (a database written before
    labels were checked)."""
    if metric not in METRICS:
        raise UsageError(f"unknown overlap metric '{metric}'; known: {', '.join(METRICS)}")
    table, aggregate, _ = METRICS[metric]
    table_of = "u" if metric == "sahara" else "s"   # sahara_steps has no model or dataset column: its unit's
    body, params = where(**{f"{table_of}.model_id": list(models or []), f"{table_of}.dataset_id": list(datasets or []),
                            f"{table_of}.ablation_id": list(ablations or [])})
    if metric == "ships":   # a screened sweep's heads by shb.reports.ships.SCREENED_RULE, and named screened
        from shb.reports.ships import head_means_sql

        frame = store.query(f"""
            SELECT unit_id, metric_id, model_id, dataset_id, ablation_id, layer, head, mean_ships AS score, scoring
            FROM ({head_means_sql(store, body)}) ORDER BY ALL""", params)
    elif metric == "sahara":
        frame = _sahara_scores(store, body, params)
    else:
        frame = store.query(f"""
            SELECT s.unit_id, coalesce(u.metric_id, '?') AS metric_id, s.model_id, s.dataset_id, s.ablation_id,
                   s.layer, s.head, {aggregate} AS score, 'exact' AS scoring
            FROM {table} s LEFT JOIN units u USING (unit_id) WHERE {body} GROUP BY ALL ORDER BY ALL""", params)
    frame = require(frame, f"{metric} scores", f"run a suite with a `{metric}` metric (e.g. suites/paper-mini.json)",
                    {"--model": models, "--dataset": datasets, "--ablation": ablations})
    units = frame.select("model_id", "dataset_id", "ablation_id", "metric_id", "unit_id", "scoring").unique(
        ["unit_id"], maintain_order=True)
    names = {}
    for row in units.iter_rows(named=True):
        name = [row["model_id"], row["dataset_id"], row["ablation_id"]]
        # the labels a reader needs: the metric where two units share model, dataset and ablation, the
        # unit id where they share every label
        for extra, labels in (("metric_id", ["model_id", "dataset_id", "ablation_id"]),
                              ("unit_id", ["model_id", "dataset_id", "ablation_id", "metric_id"])):
            same = units.filter(*[pl.col(c) == row[c] for c in labels])
            if same.height > 1:
                name.append(row[extra])
        names[row["unit_id"]] = " / ".join(name) + (" (screened)" if row["scoring"] == "screened" else "")
    return frame.with_columns(pl.col("unit_id").replace_strict(names).alias("result")).select(
        "result", "model_id", "dataset_id", "ablation_id", "metric_id", "unit_id", "scoring", "layer", "head", "score")


def sahara_ranking(steps) -> dict[tuple[int, int], float]:
    """{(layer, head): ordering score} of one Sahara search from its ``(step, layer, head, score, chosen)``
    rows: the chosen heads above every other, in step order, then every other head by its first-step score
    (each head ablated alone). A screened search scored only its verified candidates; a chosen head is
    ranked even where step 0 did not score it."""
    alone = {(layer, head): score for step, layer, head, score, _ in steps if step == 0}
    chosen = sorted((step, layer, head) for step, layer, head, _, c in steps if c)
    top = max(alone.values(), default=0.0)
    return {**alone, **{(layer, head): top + len(chosen) - i for i, (_, layer, head) in enumerate(chosen)}}


def _sahara_scores(store, body: str, params: list) -> pl.DataFrame:
    """Per Sahara unit, its ranking of the heads (sahara_ranking) as scores."""
    steps = store.query(f"""
        SELECT s.unit_id, coalesce(u.metric_id, '?') AS metric_id, u.model_id, u.dataset_id, u.ablation_id,
               s.step, s.layer, s.head, s.score, s.chosen
        FROM sahara_steps s JOIN units u USING (unit_id) WHERE {body} ORDER BY ALL""", params)
    rows = []
    for (unit_id,), group in steps.group_by(["unit_id"], maintain_order=True):
        first = group.row(0, named=True)
        ranking = sahara_ranking(group.select("step", "layer", "head", "score", "chosen").iter_rows())
        rows += [{**{c: first[c] for c in ("unit_id", "metric_id", "model_id", "dataset_id", "ablation_id")},
                  "layer": layer, "head": head, "score": float(score), "scoring": "exact"}
                 for (layer, head), score in sorted(ranking.items())]
    schema = {"unit_id": pl.String, "metric_id": pl.String, "model_id": pl.String, "dataset_id": pl.String,
              "ablation_id": pl.String, "layer": pl.Int64, "head": pl.Int64, "score": pl.Float64, "scoring": pl.String}
    return pl.DataFrame(rows, schema=schema)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho: the Pearson correlation of the average ranks (ties share their mean rank).

    None when fewer than two pairs or when either vector is constant (rho is undefined there).
    """
    if len(x) != len(y):
        raise ValueError(f"spearman: vectors of different lengths ({len(x)} and {len(y)})")
    if len(x) < 2:
        return None
    frame = pl.DataFrame({"x": x, "y": y}, schema={"x": pl.Float64, "y": pl.Float64})
    ranks = frame.select(pl.col("x").rank("average"), pl.col("y").rank("average"))
    if ranks["x"].n_unique() < 2 or ranks["y"].n_unique() < 2:
        return None
    return float(ranks.select(pl.corr("x", "y", method="pearson")).item())


def top_heads(frame: pl.DataFrame, top: int) -> dict[str, set[tuple[int, int]]]:
    """The top-``top`` heads of each result (ties broken by layer, then head, so the set is stable)."""
    ranked = frame.sort(["result", "score", "layer", "head"], descending=[False, True, False, False])
    return {result: {(r, h) for r, h in group.head(top).select(["layer", "head"]).iter_rows()}
            for (result,), group in ranked.group_by(["result"], maintain_order=True)}


def _name(head: tuple[int, int]) -> str:
    return f"{head[0]}-{head[1]}"


def pairwise(frame: pl.DataFrame, top: int = 10) -> pl.DataFrame:
    """One row per pair of results: top-k intersection, Jaccard, Spearman over the common heads, shared heads."""
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    results = frame["result"].unique(maintain_order=True).to_list()
    if len(results) < 2:
        raise UsageError(f"overlap needs two or more results; only {results[0]!r} matches. Drop filters, or run"
                         " the suite's other models, datasets or ablations first")
    tops = top_heads(frame, top)
    vectors = {result: {(r, h): s for r, h, s in group.select(["layer", "head", "score"]).iter_rows()}
               for (result,), group in frame.group_by(["result"], maintain_order=True)}
    rows = []
    for a, b in combinations(results, 2):
        common = sorted(set(vectors[a]) & set(vectors[b]))
        shared = tops[a] & tops[b]
        union = tops[a] | tops[b]
        rows.append({
            "result_a": a, "result_b": b, "top": top,
            "intersection": len(shared), "jaccard": len(shared) / len(union) if union else None,
            "spearman": spearman([vectors[a][h] for h in common], [vectors[b][h] for h in common]),
            "heads_compared": len(common), "shared_heads": [_name(h) for h in sorted(shared)],
        })
    return pl.DataFrame(rows, schema_overrides={"jaccard": pl.Float64, "spearman": pl.Float64,
                                                "shared_heads": pl.List(pl.String)})


def shared_heads(frame: pl.DataFrame, top: int = 10) -> pl.DataFrame:
    """Heads in the top-k of two or more results: how many and which, most shared first."""
    tops = top_heads(frame, top)
    counts: dict[tuple[int, int], list[str]] = {}
    for result, heads in tops.items():
        for head in heads:
            counts.setdefault(head, []).append(result)
    rows = [{"head": _name(h), "layer": h[0], "head_index": h[1], "n_results": len(rs), "of": len(tops),
             "results": sorted(rs)} for h, rs in counts.items() if len(rs) >= 2]
    schema = {"head": pl.String, "layer": pl.Int64, "head_index": pl.Int64, "n_results": pl.Int64, "of": pl.Int64,
              "results": pl.List(pl.String)}
    return pl.DataFrame(rows, schema=schema).sort(["n_results", "layer", "head_index"], descending=[True, False, False])


def figure(pairs: pl.DataFrame, metric: str, top: int, label: str | None = None) -> list[tuple[str, bytes]]:
    """The pairwise top-k overlap matrix: colour = Jaccard, text = intersection / k. ``label``: what
    is compared (default: the metric's name)."""
    from shb.reports import figures as fig

    results = list(dict.fromkeys(pairs["result_a"].to_list() + pairs["result_b"].to_list()))
    index = {r: i for i, r in enumerate(results)}
    n = len(results)
    values = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    notes = [[f"{top}/{top}" if i == j else "" for j in range(n)] for i in range(n)]
    for a, b, shared, jac in pairs.select(["result_a", "result_b", "intersection", "jaccard"]).iter_rows():
        i, j = index[a], index[b]
        values[i][j] = values[j][i] = jac or 0.0
        notes[i][j] = notes[j][i] = f"{shared}/{top}\nJ={jac or 0:.2f}"
    title = f"top-{top} head overlap ({label or METRICS[metric][2]})\ncolour: Jaccard index; text: shared heads / k"
    return [(fig.slug("overlap", metric, f"top{top}"), fig.matrix(values, results, title, "Jaccard index", notes))]
