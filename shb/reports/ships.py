"""``shb report ships``: heads ranked by mean Ships, how often each is a prompt's top-1 / top-10 head,
and a layer x head heatmap of the mean score (paper Fig. 4b)."""

from __future__ import annotations

import polars as pl

from shb.errors import UsageError


def _filters(model: str | None, dataset: str | None, ablation: str | None) -> tuple[str, list]:
    clauses, params = [], []
    for column, value in (("model_id", model), ("dataset_id", dataset), ("ablation_id", ablation)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" AND ".join(clauses) or "TRUE"), params


def ranking(store, model=None, dataset=None, ablation=None, top: int | None = 20) -> pl.DataFrame:
    """One row per (model, dataset, ablation, layer, head): mean score, top-1 and top-10 frequency, rank."""
    where, params = _filters(model, dataset, ablation)
    sql = f"""
        WITH s AS (SELECT * FROM ships WHERE {where}),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY unit_id, prompt_id ORDER BY score DESC, layer, head) AS prompt_rank
            FROM s)
        SELECT model_id, dataset_id, ablation_id, layer, head,
               avg(score) AS mean_ships, median(score) AS median_ships, max(score) AS max_ships,
               avg(CASE WHEN prompt_rank = 1 THEN 1.0 ELSE 0.0 END) AS top1_share,
               avg(CASE WHEN prompt_rank <= 10 THEN 1.0 ELSE 0.0 END) AS top10_share,
               count(*) AS n_prompts
        FROM ranked GROUP BY model_id, dataset_id, ablation_id, layer, head"""
    frame = store.query(sql, params)
    if frame.is_empty():
        raise UsageError("no Ships scores match" + (f" (filters: {', '.join(map(str, params))})" if params else "")
                         + "; run a suite with a `ships` metric first (e.g. `shb run suites/demo.json`)")
    frame = frame.sort(["model_id", "dataset_id", "ablation_id", "mean_ships", "layer", "head"],
                       descending=[False, False, False, True, False, False])
    frame = frame.with_columns(
        pl.col("mean_ships").rank("ordinal", descending=True).over(["model_id", "dataset_id", "ablation_id"])
        .cast(pl.Int64).alias("rank"))
    if top:
        frame = frame.filter(pl.col("rank") <= top)
    return frame.select(["model_id", "dataset_id", "ablation_id", "rank", "layer", "head", "mean_ships",
                         "median_ships", "max_ships", "top1_share", "top10_share", "n_prompts"])


def screening(store, model=None, dataset=None, ablation=None) -> pl.DataFrame:
    """Per screened unit: heads estimated and verified exactly per prompt (empty without screened units)."""
    has = store.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'ships_estimates'")
    if not has["n"][0]:
        return pl.DataFrame()
    where, params = _filters(model, dataset, ablation)
    return store.query(f"""
        SELECT model_id, dataset_id, ablation_id, any_value(estimator) AS estimator,
               count(DISTINCT prompt_id) AS n_prompts,
               count(*) // count(DISTINCT prompt_id) AS heads_estimated,
               sum(CASE WHEN verified THEN 1 ELSE 0 END) // count(DISTINCT prompt_id) AS heads_verified
        FROM ships_estimates WHERE {where} GROUP BY unit_id, model_id, dataset_id, ablation_id ORDER BY ALL""", params)


def heatmap(store, model=None, dataset=None, ablation=None) -> pl.DataFrame:
    """Mean Ships per (model, dataset, ablation, layer, head): the data of the layer x head heatmap."""
    where, params = _filters(model, dataset, ablation)
    return store.query(f"""SELECT model_id, dataset_id, ablation_id, layer, head, avg(score) AS mean_ships
                           FROM ships WHERE {where} GROUP BY ALL ORDER BY ALL""", params)


def heatmap_lines(frame: pl.DataFrame, width: int = 80, top_n: int = 10) -> list:
    """One terminal heatmap per (model, dataset, ablation) as rich Text lines (shb.reports.termheat:
    log scale, colour where the terminal has it, the top heads named beside the grid)."""
    from shb.reports import termheat

    out = []
    for (model, dataset, ablation), group in frame.group_by(["model_id", "dataset_id", "ablation_id"],
                                                            maintain_order=True):
        title = f"mean Ships (KL, nats), {model} / {dataset} / {ablation}; rows: layers, columns: heads"
        out.extend(termheat.render(grid_of(group), title, top_n=top_n, width=width))
    return out


def distribution(store, model=None, dataset=None, ablation=None) -> pl.DataFrame:
    """Every per-prompt Ships score (one row per unit, prompt and head): the data of paper Fig. 13."""
    where, params = _filters(model, dataset, ablation)
    return store.query(f"""SELECT model_id, dataset_id, ablation_id, prompt_id, layer, head, score
                           FROM ships WHERE {where} ORDER BY ALL""", params)


def grid_of(group: pl.DataFrame, value: str = "mean_ships") -> list[list[float | None]]:
    """A (layers, heads) nested list from long rows; cells never scored stay None (drawn blank)."""
    n_layers = int(group["layer"].max()) + 1
    n_heads = int(group["head"].max()) + 1
    grid: list[list[float | None]] = [[None] * n_heads for _ in range(n_layers)]
    for layer, head, score in group.select(["layer", "head", value]).iter_rows():
        grid[layer][head] = score
    return grid


def figures(grid: pl.DataFrame, scores: pl.DataFrame) -> list[tuple[str, bytes]]:
    """(name, png) pairs: one layer x head heatmap (Fig. 4b / 7) and one score histogram (Fig. 13)
    per (model, dataset, ablation)."""
    from shb.reports import figures as fig

    out = []
    keys = ["model_id", "dataset_id", "ablation_id"]
    for (model, dataset, ablation), group in grid.group_by(keys, maintain_order=True):
        cells = [[float("nan") if v is None else v for v in row] for row in grid_of(group)]
        top = group.sort("mean_ships", descending=True).row(0, named=True)
        title = (f"mean Ships (KL, nats) per head\n{model} / {dataset} / {ablation}"
                 f" (top: {top['layer']}-{top['head']} = {top['mean_ships']:.3g})")
        out.append((fig.slug("ships-heatmap", model, dataset, ablation),
                    fig.heatmap(cells, title, "mean Ships (nats)", log=True)))
    for (model, dataset, ablation), group in scores.group_by(keys, maintain_order=True):
        values = group["score"].to_list()
        marks = {"median": float(group["score"].median()), "99th pct": float(group["score"].quantile(0.99))}
        title = (f"per-prompt Ships scores, all heads ({len(values)} prompt x head pairs)\n"
                 f"{model} / {dataset} / {ablation}")
        out.append((fig.slug("ships-distribution", model, dataset, ablation),
                    fig.histogram(values, title, "Ships (KL, nats)", marks)))
    return out
