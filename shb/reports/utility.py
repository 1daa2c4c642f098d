"""``shb report utility``: lm-eval accuracy, over-refusal and benign loss of every intervention, with
the unmodified model's row (k = 0) beside it.

One row per model x utility metric x part/task/measure x intervention. Proportions (accuracy,
refusal rate: every per-document value 0 or 1) carry a 95% Wilson interval; other measures
(negative log-likelihood in nats, perplexity-like lm-eval metrics) the mean with its standard error
and mean +- 1.96 SE. ``change`` is value - unablated value of the same unit. The unmodified model is
measured in every unit (every ablation kind); at k = 0 the ablation kind changes nothing, so one
unit's row is shown (``ablation_id`` "-"). No torch here.
"""

from __future__ import annotations

import math

import polars as pl

from shb.reports.render import require, where
from shb.reports.stats import Z_95, wilson_interval

KEYS = ["model_id", "metric_id", "part", "task", "measure", "judge_id"]
COLUMNS = KEYS + ["ablation_id", "head_source", "k", "heads", "n", "value", "lo", "hi", "se", "unablated", "change"]


def summary(store, model=None, part=None, task=None, ablation=None) -> pl.DataFrame:
    body, params = where(model_id=model, part=part, task=task)
    exists = store.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'utility'")["n"][0]
    if not exists:   # a database written before the utility tables (opened read-only, so not migrated)
        from shb.errors import UsageError

        raise UsageError("no utility results in this database (it predates them); run a suite with a `utility` metric")
    frame = store.query(f"""
        SELECT model_id, metric_id, part, task, measure, judge_id, ablation_id, head_source, k, heads, unit_id,
               n, value, sd, is_binary
        FROM utility WHERE {body} AND n > 0""", params)
    frame = require(frame, "utility results", "run a suite with a `utility` metric (e.g. suites/paper-mini.json)",
                    [model, part, task, ablation])
    base = (frame.filter(pl.col("k") == 0).sort("ablation_id", "unit_id")
            .group_by(KEYS, maintain_order=True).first()
            .with_columns(pl.lit("-").alias("ablation_id"), pl.lit("-").alias("head_source")))
    ablated = frame.filter(pl.col("k") > 0)
    if ablation is not None:
        ablated = ablated.filter(pl.col("ablation_id") == ablation)
    # change: against the k = 0 row of the same unit (same model, metric config and cell)
    unit_base = frame.filter(pl.col("k") == 0).select("unit_id", *KEYS[2:], pl.col("value").alias("unablated"))
    ablated = ablated.join(unit_base, on=["unit_id", *KEYS[2:]], how="left")
    base = base.with_columns(pl.col("value").alias("unablated"))
    rows = pl.concat([base, ablated.select(base.columns)], how="vertical_relaxed")
    lo, hi, se = [], [], []
    for value, n, sd, binary in rows.select("value", "n", "sd", "is_binary").iter_rows():
        if binary:
            a, b = wilson_interval(value * n, int(n))
            lo.append(a), hi.append(b), se.append(None)
        else:
            s = sd / math.sqrt(n) if sd is not None and n > 1 else float("nan")
            lo.append(value - Z_95 * s), hi.append(value + Z_95 * s), se.append(s)
    rows = rows.with_columns(pl.Series("lo", lo, dtype=pl.Float64), pl.Series("hi", hi, dtype=pl.Float64),
                             pl.Series("se", se, dtype=pl.Float64),
                             (pl.col("value") - pl.col("unablated")).alias("change"),
                             pl.col("heads").list.join(",").alias("heads"))
    return rows.sort([*KEYS, "k", "ablation_id", "head_source"]).select(COLUMNS)


def figures(frame: pl.DataFrame) -> list[tuple[str, bytes]]:
    """One figure per model: each intervention's change against the unmodified model, a panel per
    task and measure, with the interval of the intervention's value shifted by the unmodified value."""
    from shb.reports import figures as fig

    ablated = frame.filter(pl.col("k") > 0)
    out = []
    for (model,), group in ablated.group_by(["model_id"], maintain_order=True):
        panels: dict[str, list] = {}
        for r in group.to_dicts():
            base = r["unablated"] if r["unablated"] is not None else 0.0
            label = r["metric_id"] + (f" (k={r['k']})" if r["head_source"] and not str(r["head_source"]).startswith(
                "intervention") else "")
            lo = None if r["lo"] is None else r["lo"] - base
            hi = None if r["hi"] is None else r["hi"] - base
            panels.setdefault(f"{r['part']}: {r['task']} ({r['measure']})", []).append((label, r["change"], lo, hi))
        if panels:
            out.append((fig.slug("utility-change", model),
                        fig.bars(panels, f"utility change against the unmodified model: {model}",
                                 "change (intervention - unmodified)")))
    if not out:
        from shb.errors import UsageError

        raise UsageError("no intervention to draw (only the unmodified model's utility is measured)")
    return out
