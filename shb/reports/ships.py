"""``shb report ships``: heads ranked by mean Ships, how often each is a prompt's top-1 / top-10 head,
and a layer x head heatmap of the mean score (paper Fig. 4b).

A result is one unit (docs/design.md, "Identity": content, not labels): rows are grouped by unit, never by
the model, dataset and ablation labels alone, so an exact sweep and a screened one (whose exact rows
cover only the heads it verified) are never averaged together, and neither are two units that
reached one database under the same labels. ``metric_id`` and ``scoring`` (exact | screened) say
which is which; where units still share every label, ``unit_id`` is shown and ``mixed_note`` says so.

A screened sweep (``screen``: an attribution estimate picks each prompt's candidates, only those are
scored exactly) stores a head's exact score only on the prompts where it was verified. Its heads rank
by ``SCREENED_RULE``: the sum of a head's exact scores over *every* prompt of the sweep, a prompt where
it was not verified counting 0 (KL's lower bound; the screen judged it below that prompt's top
candidates). A head verified on 2 of 64 prompts is thus not ranked by its mean over those 2. For an
exact sweep this is the plain mean. ``n_verified`` says on how many prompts each head was scored.
"""

from __future__ import annotations

import polars as pl

from shb.errors import UsageError

# The labels of a result, and the columns that tell two units apart where the labels coincide.
RESULT = ["model_id", "dataset_id", "ablation_id", "metric_id", "scoring", "unit_id"]


def _filters(model: str | None, dataset: str | None, ablation: str | None, alias: str = "s") -> tuple[str, list]:
    clauses, params = [], []
    for column, value in (("model_id", model), ("dataset_id", dataset), ("ablation_id", ablation)):
        if value is not None:
            clauses.append(f"{alias}.{column} = ?")
            params.append(value)
    return (" AND ".join(clauses) or "TRUE"), params


def _scored(store, table: str, where: str) -> str:
    """``table``'s rows with the unit's metric label and whether its sweep was screened."""
    screened = ("EXISTS (SELECT 1 FROM ships_estimates e WHERE e.unit_id = s.unit_id)" if _has_estimates(store)
                else "FALSE")
    return f"""SELECT s.*, coalesce(u.metric_id, '?') AS metric_id,
                      CASE WHEN {screened} THEN 'screened' ELSE 'exact' END AS scoring
               FROM {table} s LEFT JOIN units u USING (unit_id) WHERE {where}"""


SCREENED_RULE = ("mean over every prompt of the sweep, a prompt where the head was not verified counting 0 "
                 "(KL's lower bound)")


def head_means_sql(store, table_where: str) -> str:
    """SQL for one row per (unit, layer, head) of ``ships``: the labels, ``scoring``, ``mean_ships`` by
    the rule of this module (the plain mean for an exact sweep), ``n_verified`` (prompts with an exact
    score) and ``unit_prompts`` (prompts of the sweep). ``table_where``: a filter on ``ships s``."""
    return f"""
        WITH s AS ({_scored(store, "ships", table_where)}),
        p AS (SELECT unit_id, count(DISTINCT prompt_id) AS unit_prompts FROM s GROUP BY unit_id)
        SELECT s.model_id, s.dataset_id, s.ablation_id, s.metric_id, s.scoring, s.unit_id, s.layer, s.head,
               sum(s.score) / any_value(p.unit_prompts) AS mean_ships, count(*) AS n_verified,
               any_value(p.unit_prompts) AS unit_prompts
        FROM s JOIN p USING (unit_id) GROUP BY ALL"""


def _has_estimates(store) -> bool:
    return bool(store.query("SELECT count(*) AS n FROM information_schema.tables "
                            "WHERE table_name = 'ships_estimates'")["n"][0])


def mixed_note(frame: pl.DataFrame, what: str = "results") -> str | None:
    """A sentence when several units of ``frame`` share every label (kept apart by unit_id), else None."""
    labels = [c for c in RESULT if c != "unit_id" and c in frame.columns]
    if frame.is_empty() or "unit_id" not in frame.columns:
        return None
    counts = frame.select(*labels, "unit_id").unique().group_by(labels).len().filter(pl.col("len") > 1)
    if counts.is_empty():
        return None
    names = ["/".join(str(v) for v in row[:len(labels)]) for row in counts.iter_rows()]
    return (f"{what} of {len(names)} label combination(s) come from several units with different content "
            f"({'; '.join(names)}): kept apart by unit_id, never averaged")


def _drop_unit_if_unique(frame: pl.DataFrame) -> pl.DataFrame:
    """unit_id is shown only where labels alone do not tell the units apart."""
    return frame if mixed_note(frame) else frame.drop("unit_id")


def ranking(store, model=None, dataset=None, ablation=None, top: int | None = 20) -> pl.DataFrame:
    """One row per (unit, layer, head): mean score, top-1 and top-10 frequency, rank within the unit."""
    where, params = _filters(model, dataset, ablation)
    sql = f"""
        WITH s AS ({_scored(store, "ships", where)}),
        p AS (SELECT unit_id, count(DISTINCT prompt_id) AS unit_prompts FROM s GROUP BY unit_id),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY unit_id, prompt_id ORDER BY score DESC, layer, head) AS prompt_rank
            FROM s JOIN p USING (unit_id))
        -- shares and the mean are over every prompt of the sweep (SCREENED_RULE; the plain mean when exact)
        SELECT model_id, dataset_id, ablation_id, metric_id, scoring, unit_id, layer, head,
               sum(score) / any_value(unit_prompts) AS mean_ships, median(score) AS median_ships,
               max(score) AS max_ships,
               sum(CASE WHEN prompt_rank = 1 THEN 1.0 ELSE 0.0 END) / any_value(unit_prompts) AS top1_share,
               sum(CASE WHEN prompt_rank <= 10 THEN 1.0 ELSE 0.0 END) / any_value(unit_prompts) AS top10_share,
               count(*) AS n_verified, any_value(unit_prompts) AS n_prompts
        FROM ranked GROUP BY unit_id, model_id, dataset_id, ablation_id, metric_id, scoring, layer, head"""
    frame = store.query(sql, params)
    if frame.is_empty():
        raise UsageError("no Ships scores match" + (f" (filters: {', '.join(map(str, params))})" if params else "")
                         + "; run a suite with a `ships` metric first (e.g. `shb run suites/demo.json`)")
    keys = RESULT
    frame = frame.sort([*keys, "mean_ships", "layer", "head"], descending=[False] * len(keys) + [True, False, False])
    frame = frame.with_columns(
        pl.col("mean_ships").rank("ordinal", descending=True).over(keys).cast(pl.Int64).alias("rank"))
    if top:
        frame = frame.filter(pl.col("rank") <= top)
    return _drop_unit_if_unique(frame.select([*keys, "rank", "layer", "head", "mean_ships", "median_ships",
                                              "max_ships", "top1_share", "top10_share", "n_verified", "n_prompts"]))


def screening(store, model=None, dataset=None, ablation=None) -> pl.DataFrame:
    """Per screened unit: heads estimated and verified exactly per prompt (top and sampled), and the
    recall measured from the sample (shb.reports.screen_recall; empty without screened units)."""
    from shb.reports import screen_recall

    if not _has_estimates(store):
        return pl.DataFrame()
    where, params = _filters(model, dataset, ablation)
    frame = store.query(f"""
        SELECT s.model_id, s.dataset_id, s.ablation_id, coalesce(u.metric_id, '?') AS metric_id, s.unit_id,
               any_value(s.estimator) AS estimator, count(DISTINCT s.prompt_id) AS n_prompts,
               count(*) // count(DISTINCT s.prompt_id) AS heads_estimated,
               sum(CASE WHEN s.verified THEN 1 ELSE 0 END) // count(DISTINCT s.prompt_id) AS heads_verified
        FROM ships_estimates s LEFT JOIN units u USING (unit_id) WHERE {where}
        GROUP BY ALL ORDER BY ALL""", params)
    if frame.is_empty():
        return frame
    where_e, params_e = _filters(model, dataset, ablation, alias="e")
    recall = screen_recall.summary(screen_recall.per_group(store, "ships_estimates", "ships", "prompt_id",
                                                           where_e, params_e))
    return frame.join(recall.drop("checked"), on="unit_id", how="left")


def heatmap(store, model=None, dataset=None, ablation=None) -> pl.DataFrame:
    """Mean Ships per (unit, layer, head): the data of the layer x head heatmap."""
    where, params = _filters(model, dataset, ablation)
    frame = store.query(f"""SELECT model_id, dataset_id, ablation_id, metric_id, scoring, unit_id, layer, head, mean_ships
                            FROM ({head_means_sql(store, where)}) ORDER BY ALL""", params)
    return _drop_unit_if_unique(frame)


def _result_keys(frame: pl.DataFrame) -> list[str]:
    return [c for c in RESULT if c in frame.columns]


def _result_name(values: tuple) -> str:
    return " / ".join(str(v) for v in values)


def heatmap_lines(frame: pl.DataFrame, width: int = 80, top_n: int = 10) -> list:
    """One terminal heatmap per (model, dataset, ablation) as rich Text lines (shb.reports.termheat:
    log scale, colour where the terminal has it, the top heads named beside the grid)."""
    from shb.reports import termheat

    out = []
    for values, group in frame.group_by(_result_keys(frame), maintain_order=True):
        title = f"mean Ships (KL, nats), {_result_name(values)}; rows: layers, columns: heads"
        out.extend(termheat.render(grid_of(group), title, top_n=top_n, width=width))
    return out


def distribution(store, model=None, dataset=None, ablation=None) -> pl.DataFrame:
    """Every per-prompt Ships score (one row per unit, prompt and head): the data of paper Fig. 13."""
    where, params = _filters(model, dataset, ablation)
    frame = store.query(f"""SELECT model_id, dataset_id, ablation_id, metric_id, scoring, unit_id, prompt_id, layer,
                                   head, score FROM ({_scored(store, "ships", where)}) ORDER BY ALL""", params)
    return _drop_unit_if_unique(frame)


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
    for values, group in grid.group_by(_result_keys(grid), maintain_order=True):
        cells = [[float("nan") if v is None else v for v in row] for row in grid_of(group)]
        top = group.sort("mean_ships", descending=True).row(0, named=True)
        title = (f"mean Ships (KL, nats) per head\n{_result_name(values)}"
                 f" (top: {top['layer']}-{top['head']} = {top['mean_ships']:.3g})")
        out.append((fig.slug("ships-heatmap", *map(str, values)), fig.heatmap(cells, title, "mean Ships (nats)", log=True)))
    for values, group in scores.group_by(_result_keys(scores), maintain_order=True):
        values_ = group["score"].to_list()
        marks = {"median": float(group["score"].median()), "99th pct": float(group["score"].quantile(0.99))}
        title = (f"per-prompt Ships scores, all heads ({len(values_)} prompt x head pairs)\n{_result_name(values)}")
        out.append((fig.slug("ships-distribution", *map(str, values)),
                    fig.histogram(values_, title, "Ships (KL, nats)", marks)))
    return out
