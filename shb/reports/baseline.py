"""Which k = 0 row is the baseline of which row: one rule for ``shb report asr``, ``sahara``,
``efficiency`` and every figure drawn from them.

A baseline is the measure with nothing changed: no head ablated (k = 0), no intervention applied. A
row's baseline is the k = 0 row of its own unit when the unit has one. Otherwise it is the k = 0 row
of another unit whose resolved content (``units.spec``, written by shb.plan) equals the row's unit's in
everything but what says what is changed: the ablation kind (nothing is ablated at k = 0), the unit the
heads come from (``upstream``), an intervention, and the metric parameters its kind names in
``Metric.baseline_ignores`` (the head source, k, draws, the seed of random heads, the judge, which
rows match by their stored judge id and configuration hash instead). So a baseline always shares the
model (weights, dtype), the prompts (content, split, format, system prompt), the decoding,
max_new_tokens and the answer prefix, and any parameter a new metric kind adds. Several such units hold
the same answers (greedy decoding, per-row sampling seeds): one is taken (the largest n, then the
smallest unit id), never their sum, which would narrow an interval for nothing. ``baseline_from``
says which: ``same unit`` or ``unit <id>``. No torch here.
"""

from __future__ import annotations

import hashlib
import json

import polars as pl

# Parts of a unit's spec that say what is changed, not what is measured on: never part of a baseline cell.
CHANGE_PARTS = ("ablation", "upstream", "intervention")


def cell_of(spec: dict | None) -> str | None:
    """The baseline cell of a unit's resolved spec: its content less what says what is changed."""
    if not spec:
        return None
    from shb.registry import METRICS, metric

    params = dict(spec.get("metric") or {})
    ignored = metric(params["kind"]).baseline_ignores if params.get("kind") in METRICS else ()
    content = {k: v for k, v in spec.items() if k not in CHANGE_PARTS}
    content["metric"] = {k: v for k, v in params.items() if k not in ignored}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def unit_specs(store, unit_ids) -> dict[str, dict | None]:
    """{unit id: its stored resolved spec} (what a unit is: figures name what differs between units)."""
    ids = sorted({u for u in unit_ids if u is not None})
    if not ids:
        return {}
    rows = store.query("SELECT unit_id, spec FROM units WHERE list_contains($ids, unit_id)", {"ids": ids})
    return {u: (json.loads(s) if isinstance(s, str) else s) for u, s in rows.iter_rows()}


def cells(store, unit_ids) -> dict[str, str | None]:
    """{unit id: baseline cell} from the stored specs (a unit without a stored spec has none)."""
    return {u: cell_of(spec) for u, spec in unit_specs(store, unit_ids).items()}


def with_baselines(rows: pl.DataFrame, unit_cells: dict[str, str | None], values: list[str],
                   match: list[str]) -> pl.DataFrame:
    """The rows with k > 0 of ``rows`` (one per unit, head set, k and ``match`` columns such as the
    judge), each with ``baseline_<v>`` for every column v of ``values`` and ``baseline_from``, taken from
    the k = 0 rows of ``rows`` by the rule of this module. ``n`` must be a column (it breaks ties)."""
    keyed = rows.with_columns(pl.col("unit_id").replace_strict(unit_cells, default=None, return_dtype=pl.String)
                              .alias("_cell"))
    carried = [f"baseline_{v}" for v in values]
    base = keyed.filter(pl.col("k") == 0).select(
        "unit_id", "_cell", *match, pl.col("n").alias("_base_n"), *[pl.col(v).alias(f"baseline_{v}") for v in values])
    same = base.select("unit_id", *match, *[pl.col(c).alias(f"_same_{c}") for c in carried]).unique(
        ["unit_id", *match], keep="first", maintain_order=True)
    other = (base.filter(pl.col("_cell").is_not_null()).sort(["_base_n", "unit_id"], descending=[True, False])
             .group_by(["_cell", *match], maintain_order=True).first()
             .select("_cell", *match, *[pl.col(c).alias(f"_other_{c}") for c in carried],
                     pl.col("unit_id").alias("_other_unit")))
    out = keyed.filter(pl.col("k") > 0).join(same, on=["unit_id", *match], how="left", nulls_equal=True)
    out = out.join(other, on=["_cell", *match], how="left", nulls_equal=False)
    first = carried[0]
    has_same = pl.col(f"_same_{first}").is_not_null()
    return out.with_columns(
        *[pl.when(has_same).then(pl.col(f"_same_{c}")).otherwise(pl.col(f"_other_{c}")).alias(c) for c in carried],
        pl.when(has_same).then(pl.lit("same unit"))
        .when(pl.col(f"_other_{first}").is_not_null()).then(pl.lit("unit ") + pl.col("_other_unit"))
        .otherwise(pl.lit(None, pl.String)).alias("baseline_from"),
    ).drop(*[f"_{w}_{c}" for w in ("same", "other") for c in carried], "_other_unit", "_cell")
