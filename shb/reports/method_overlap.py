"""``shb report overlap --metric methods``: do different ways of finding safety heads agree?

On one model and dataset, each method's ranking of the heads:

- ``ships``: mean per-prompt Ships (Zhou et al. 2025, Eq. 9), higher first; a screened sweep is named
  ``(screened)`` and ranked by shb.reports.ships.SCREENED_RULE;
- ``ships_dataset``: generalized Ships (Eq. 11);
- ``sahara``: the heads Sahara chose, in the order it chose them (Algorithm 1), then every other
  head by its first-step score (each head ablated alone); its top-k set is its first k choices;
- ``rdsha``: |mean over prompts of O_h . r| / ||r|| (Huang et al. 2025, arXiv 2508.19697).

A method with several metric entries (two Sahara searches) appears once per metric id. The pairwise
table (top-k intersection, Jaccard, Spearman over the heads both rank) is overlap.pairwise's; the
layer table says which layers each method's top-k favours. Ships, generalized Ships and Sahara
depend on the head-ablation kind (``--ablation``); RDSHA ablates nothing. No torch here.
"""

from __future__ import annotations

import polars as pl

from shb.errors import UsageError

TITLE = "Ships, generalized Ships, Sahara and RDSHA"

_QUERIES = {
    "ships_dataset": """SELECT u.metric_id, s.layer, s.head, avg(s.score) AS score FROM ships_dataset s
                        JOIN units u USING (unit_id)
                        WHERE s.model_id = ? AND s.dataset_id = ? AND s.ablation_id = ? GROUP BY ALL""",
    "rdsha": """SELECT u.metric_id, r.layer, r.head, abs(avg(r.projection)) AS score FROM rdsha r
                JOIN units u USING (unit_id) WHERE r.model_id = ? AND r.dataset_id = ? GROUP BY ALL""",
}


def _sahara(store, model: str, dataset: str, ablation: str) -> list[tuple[str, int, int, float]]:
    """(metric id, layer, head, ordering score): chosen heads above every other, in step order."""
    rows = store.con.execute(
        """SELECT u.metric_id, s.step, s.layer, s.head, s.score, s.chosen FROM sahara_steps s JOIN units u USING (unit_id)
           WHERE u.model_id = ? AND u.dataset_id = ? AND u.ablation_id = ?""", [model, dataset, ablation]).fetchall()
    from shb.reports.overlap import sahara_ranking

    out = []
    for metric_id in sorted({r[0] for r in rows}):
        ranking = sahara_ranking([r[1:] for r in rows if r[0] == metric_id])
        out += [(metric_id, layer, head, score) for (layer, head), score in ranking.items()]
    return out


def scores(store, model: str, dataset: str, ablation: str) -> pl.DataFrame:
    """One row per (method, layer, head), in the shape overlap.pairwise takes (``result`` = method)."""
    from shb.reports.ships import head_means_sql

    # Ships: a screened sweep is named so and its heads scored by shb.reports.ships.SCREENED_RULE
    ships = store.con.execute(f"""
        SELECT CASE WHEN scoring = 'screened' THEN metric_id || ' (screened)' ELSE metric_id END, layer, head,
               mean_ships FROM ({head_means_sql(store, "s.model_id = ? AND s.dataset_id = ? AND s.ablation_id = ?")})""",
        [model, dataset, ablation]).fetchall()
    screened = any(r[0].endswith(" (screened)") for r in ships)
    rows = [("ships", *r) for r in ships]
    for kind, sql in _QUERIES.items():
        params = [model, dataset] + ([ablation] if kind != "rdsha" else [])
        rows += [(kind, *r) for r in store.con.execute(sql, params).fetchall()]
    rows += [("sahara", *r) for r in _sahara(store, model, dataset, ablation)]
    if not rows:
        raise UsageError(f"no head scores for model '{model}', dataset '{dataset}', ablation '{ablation}': run a suite "
                         "with ships, ships_dataset, sahara or rdsha metrics on them (e.g. suites/paper-mini.json)")
    per_kind: dict[str, set] = {}
    for kind, metric_id, *_ in rows:
        per_kind.setdefault(kind, set()).add(metric_id)
    frame = pl.DataFrame(
        [{"result": kind + (" (screened)" if screened else "") if len(per_kind[kind]) == 1 and kind == "ships"
          else kind if len(per_kind[kind]) == 1 else f"{kind}:{metric_id}", "method": kind,
          "model_id": model, "dataset_id": dataset, "ablation_id": None if kind == "rdsha" else ablation,
          "layer": layer, "head": head, "score": float(score)}
         for kind, metric_id, layer, head, score in rows],
        schema_overrides={"ablation_id": pl.String})
    order = {kind: i for i, kind in enumerate(("ships", "ships_dataset", "sahara", "rdsha"))}
    return frame.sort([pl.col("method").replace_strict(order, return_dtype=pl.Int64), "result", "layer", "head"])


def layers(frame: pl.DataFrame, top: int, n_layers: int | None = None) -> pl.DataFrame:
    """Per method: its top-k heads, how many fall in each layer, and their mean layer."""
    from shb.reports.overlap import top_heads

    tops = top_heads(frame, top)
    n_layers = n_layers or int(frame["layer"].max()) + 1
    rows = []
    for result in frame["result"].unique(maintain_order=True).to_list():
        heads = sorted(tops[result])
        counts = [sum(1 for layer, _ in heads if layer == i) for i in range(n_layers)]
        rows.append({"method": result, "top_heads": [f"{layer}-{head}" for layer, head in heads],
                     "per_layer": " ".join(f"L{i}:{c}" for i, c in enumerate(counts) if c),  # layers it picks from
                     "mean_layer": sum(layer for layer, _ in heads) / len(heads) if heads else None})
    return pl.DataFrame(rows, schema_overrides={"mean_layer": pl.Float64, "top_heads": pl.List(pl.String)})


def single(store, column: str, given: tuple, what: str, flag: str, where: str = "units") -> str:
    """The one value of ``column`` the user named, or the only one stored; else a clear error."""
    if len(given) == 1:
        return given[0]
    known = [r[0] for r in store.con.execute(f"SELECT DISTINCT {column} FROM {where} ORDER BY 1").fetchall()
             if r[0] is not None]
    if not given and len(known) == 1:
        return known[0]
    raise UsageError(f"--metric methods compares methods on one {what}: give exactly one {flag} "
                     f"(stored: {', '.join(known) or 'none'})")
