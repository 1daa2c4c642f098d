"""``shb report utility``: lm-eval accuracy, over-refusal and benign loss of every intervention, with
the unmodified model's row (k = 0) beside it.

One row per model x utility metric x part/task/measure x intervention. Proportions (accuracy,
refusal rate: every per-document value 0 or 1) carry a 95% Wilson interval; other measures
(negative log-likelihood in nats, perplexity-like lm-eval metrics) the mean with its standard error
and mean +- 1.96 SE. ``change`` is value - unablated value of the same unit. The unmodified model is
measured in every unit (every ablation kind); at k = 0 the ablation kind changes nothing, so one
unit's row is shown (``ablation_id`` "-"). Over-refusal rows carry ``broken``: the share of benign
answers that are broken (loops, empty, no language, echoes; shb.judges.outcome), which the refusal
rate counts as refusals. No torch here.
"""

from __future__ import annotations

import math

import polars as pl

from shb.reports.render import require, where
from shb.reports.stats import Z_95, wilson_interval

KEYS = ["model_id", "metric_id", "part", "task", "measure", "judge_id"]
COLUMNS = KEYS + ["ablation_id", "head_source", "k", "heads", "n", "value", "lo", "hi", "se", "unablated", "change",
                  "broken"]
_DOC_KEYS = ["unit_id", "part", "task", "measure", "judge_id", "k"]


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
    frame = frame.join(_broken_shares(store), on=_DOC_KEYS, how="left", nulls_equal=True)
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


def _cell_names(frame: pl.DataFrame) -> dict[tuple, str]:
    """Short column names per (part, task, measure): "acc", "over-refusal", "benign nll" where a part has one
    task and measure (the task goes into the caption), "<measure>: <task>" where it has several."""
    order = {"lm_eval": 0, "over_refusal": 1, "benign_loss": 2}
    cells = sorted(frame.select("part", "task", "measure").unique().rows(),
                   key=lambda c: (order.get(c[0], 3), c[0], c[1], c[2]))
    names = {}
    for part, task, measure in cells:
        alone = sum(1 for p, _, _ in cells if p == part) == 1
        short = {"over_refusal": "over-refusal", "benign_loss": f"benign {measure}"}.get(part, measure)
        names[(part, task, measure)] = short if alone else f"{short}: {task}"
    return names


def caption(frame: pl.DataFrame) -> str:
    """What each short column of ``for_table`` measured."""
    names = _cell_names(frame)
    return "; ".join(f"{name} = {task}" for (part, task, measure), name in names.items() if ":" not in name)


def for_table(frame: pl.DataFrame) -> pl.DataFrame:
    """The terminal view: a row per model and setting (the unmodified model, each intervention, each head
    set at its k), a column per task and measure, each cell the value with its change against the
    unmodified model. The unmodified model's row appears once per model where every metric measured the
    same values (to 6 significant digits; one row per metric where they differ, e.g. other tasks or
    document counts). Intervals, n and the broken share are in ``--format json/csv``."""
    from shb.reports.render import number

    names = _cell_names(frame)
    base = frame.filter(pl.col("k") == 0).with_columns(
        pl.col("value").map_elements(lambda v: float(f"{v:.6g}"), return_dtype=pl.Float64).alias("rounded"))
    spread = base.group_by("model_id", "part", "task", "measure", "judge_id").agg(pl.col("rounded").n_unique().alias("m"))
    per_metric = set(spread.filter(pl.col("m") > 1)["model_id"].to_list())
    several_ablations = frame.filter(pl.col("k") > 0)["ablation_id"].n_unique() > 1
    rows: dict[tuple, dict] = {}
    for r in frame.sort("model_id", "k", "metric_id").iter_rows(named=True):
        source = str(r["head_source"])
        if r["k"] == 0:
            setting, k = "unmodified" + (f" ({r['metric_id']})" if r["model_id"] in per_metric else ""), None
            text = number(r["value"])
        else:
            intervention = source.startswith("intervention:")
            setting = source.split(":", 1)[1] if intervention else f"{r['heads']} ({source})"
            setting += f" · {r['ablation_id']}" if several_ablations else ""
            k = None if intervention else r["k"]
            change = r["change"]
            text = number(r["value"]) + ("" if change is None else f" ({'+' if change >= 0 else ''}{number(change)})")
        row = rows.setdefault((r["model_id"], setting, k), {"model": r["model_id"], "setting": setting, "k": k})
        row[names[(r["part"], r["task"], r["measure"])]] = text
    columns = ["model", "setting", "k", *dict.fromkeys(names.values())]
    return pl.DataFrame(list(rows.values()), infer_schema_length=None).select(columns)


def _broken_shares(store) -> pl.DataFrame:
    """Share of broken benign answers per over-refusal row (None where the answers predate outcomes)."""
    return store.query("""
        SELECT unit_id, part, task, measure, judge_id, k,
               avg(CASE WHEN json_extract_string(detail, '$.outcome') IS NULL THEN NULL
                        WHEN json_extract_string(detail, '$.outcome') = 'broken' THEN 1.0 ELSE 0.0 END) AS broken
        FROM utility_docs WHERE part = 'over_refusal' GROUP BY ALL""")


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
