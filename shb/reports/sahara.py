"""``shb report sahara``: ASR change against the number of ablated heads (paper Tables 3 and 5) and the
heads Sahara chose at each step.

The change at k is ASR(k heads ablated) - ASR(k = 0), the baseline chosen by the one rule of
shb.reports.baseline (the unit's own k = 0, else the k = 0 of a unit of the same content but for what
is changed: same model, prompts and format, decoding, max_new_tokens, answer prefix, judge id and
hash); the ``baseline_from`` column says which was used. Units are never pooled (one row per asr
unit and head set). No torch here.
"""

from __future__ import annotations

import polars as pl

from shb.reports.render import require, where, with_decoding_label


def asr_by_k(store, model=None, dataset=None, ablation=None, judge=None) -> pl.DataFrame:
    """Long rows: one per (asr unit, head set, judge, k > 0) with asr_k, the k = 0 baseline asr_base,
    and delta = asr_k - asr_base (None without a baseline): the rows of ``shb report asr``, whose
    baselines come from the one rule (shb.reports.baseline). Units are never pooled: one unit is one
    content (docs/design.md, "One resolved unit"), so two units under one label combination (a database
    written before every label was checked) are two rows, told apart by ``unit_id``."""
    from shb.reports import asr

    frame = asr.rows_with_baselines(store, model, dataset, ablation, judge)
    if not frame.is_empty():
        frame = frame.filter(pl.col("ablated_asr").is_not_null()).select(
            "model_id",
            # two explicit lists are two interventions: keep them apart (the view's sorted head list)
            pl.when(pl.col("head_source") == "explicit").then(pl.lit("explicit ") + pl.col("head_set"))
            .otherwise(pl.col("head_source")).alias("head_source"),
            "ablation_id", "metric_id", "dataset_id", "judge_id", pl.col("judge_hash").str.slice(0, 8),
            "decoding", "max_new_tokens", "answer_prefix", "k", "n", pl.col("ablated_asr").alias("asr_k"),
            pl.col("baseline_asr").alias("asr_base"), pl.col("change").alias("delta"), "baseline_from", "unit_id")
    return require(frame, "ASR results with ablated heads (k > 0)",
                   "run a suite with an `asr` metric whose k includes 0 and 1..5 (e.g. suites/paper-mini.json)",
                   [model, dataset, ablation, judge])


ROW_KEYS = ["model_id", "head_source", "ablation_id", "metric_id", "dataset_id", "judge_id", "judge_hash", "decoding",
            "max_new_tokens", "answer_prefix", "asr_base", "unit_id"]


def change_table(long: pl.DataFrame) -> pl.DataFrame:
    """The layout of the paper's Tables 3 and 5: one row per asr unit (head-set source x ablation x
    dataset x metric, model, judge, decoding), columns k=1..K holding ASR(k) - ASR(0), and their mean.
    ``unit_id`` is kept only where two units share every label."""
    # a fitted intervention is not a head count (its row is `shb report asr`'s and `efficiency`'s)
    long = long.filter(~pl.col("head_source").str.starts_with("intervention:"))
    wide = long.pivot(on="k", index=ROW_KEYS, values="delta", sort_columns=True)
    ks = sorted(int(c) for c in wide.columns if c not in ROW_KEYS)
    wide = wide.rename({str(k): f"k={k}" for k in ks})
    k_cols = [f"k={k}" for k in ks]
    wide = wide.with_columns(pl.mean_horizontal(k_cols).alias("mean"))
    wide = with_decoding_label(wide.select(ROW_KEYS + k_cols + ["mean"]).sort(ROW_KEYS[:10]))
    labels = ROW_KEYS[:10]
    shared = wide.group_by(labels).len().filter(pl.col("len") > 1)
    wide = wide if not shared.is_empty() else wide.drop("unit_id")
    # the values lead the long labels, so that a narrow terminal gives up the metric id before a k column
    lead = ["model_id", "head_source", "ablation_id", "dataset_id", "asr_base", *k_cols, "mean"]
    return wide.select(lead + [c for c in wide.columns if c not in lead])


def chosen_heads(store, model=None, dataset=None, ablation=None) -> pl.DataFrame:
    """The head Sahara chose at each step, with its score and the head set so far."""
    body, params = where(**{"u.model_id": model, "u.dataset_id": dataset, "u.ablation_id": ablation})
    frame = store.query(f"""
        SELECT u.model_id, u.dataset_id, u.ablation_id, u.metric_id, s.step, s.layer, s.head,
               s.layer || '-' || s.head AS head_name, s.score, s.unit_id
        FROM sahara_steps s JOIN units u USING (unit_id)
        WHERE s.chosen AND {body}
        ORDER BY u.model_id, u.dataset_id, u.ablation_id, u.metric_id, s.unit_id, s.step""", params)
    frame = require(frame, "Sahara steps", "run a suite with a `sahara` metric (e.g. suites/paper-mini.json)",
                    [model, dataset, ablation])
    # The head set after each step: the chosen heads of this unit up to and including it.
    sets, current, last_unit = [], [], None
    for unit_id, name in frame.select(["unit_id", "head_name"]).iter_rows():
        current = [] if unit_id != last_unit else current
        current = current + [name]
        last_unit = unit_id
        sets.append(",".join(current))
    return frame.with_columns(pl.Series("head_set", sets)).select(
        ["model_id", "dataset_id", "ablation_id", "metric_id", "step", "head_name", "score", "head_set", "unit_id"])


def screening(store, model=None, dataset=None, ablation=None) -> pl.DataFrame:
    """Per screened Sahara unit: candidates verified per step (top M and sampled), steps whose chosen head
    came from the sample, and the recall measured on the sample (shb.reports.screen_recall). Empty
    without screened units."""
    from shb.reports import screen_recall

    if not store.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'sahara_estimates'")["n"][0]:
        return pl.DataFrame()
    body, params = where(**{"u.model_id": model, "u.dataset_id": dataset, "u.ablation_id": ablation})
    sampled = ("e.verified_as = 'sample'" if "verified_as" in screen_recall._columns(store, "sahara_estimates")
               else "FALSE")
    frame = store.query(f"""
        SELECT u.model_id, u.dataset_id, u.ablation_id, u.metric_id, e.unit_id, count(DISTINCT e.step) AS steps,
               count(*) // count(DISTINCT e.step) AS candidates,
               sum(CASE WHEN e.verified THEN 1 ELSE 0 END) // count(DISTINCT e.step) AS verified_per_step,
               CAST(sum(CASE WHEN {sampled} AND s.chosen THEN 1 ELSE 0 END) AS BIGINT) AS chosen_from_sample
        FROM sahara_estimates e JOIN units u USING (unit_id)
             LEFT JOIN sahara_steps s ON s.unit_id = e.unit_id AND s.step = e.step AND s.layer = e.layer
                                         AND s.head = e.head
        WHERE {body} GROUP BY ALL ORDER BY ALL""", params)
    if frame.is_empty():
        return frame
    recall = screen_recall.summary(screen_recall.per_group(store, "sahara_estimates", "sahara_steps", "step",
                                                           body, params))
    return frame.join(recall.drop("checked"), on="unit_id", how="left")


def figures(long: pl.DataFrame, specs: dict | None = None) -> list[tuple[str, bytes]]:
    """One line chart per (model, dataset): ASR change against k (k = 0 drawn at 0), a line per asr unit
    and judge whose legend names what differs between the lines (shb.reports.figures.unit_lines;
    ``specs``: {unit id: stored spec})."""
    from shb.reports import figures as fig

    long = with_decoding_label(long.filter(pl.col("delta").is_not_null()))
    keys = ["head_source", "metric_id", "ablation_id", "decoding", "max_new_tokens", "answer_prefix", "judge_id"]
    out = []
    for (model, dataset), group in long.group_by(["model_id", "dataset_id"], maintain_order=True):
        # the legend names what differs between lines; what all share goes once into the title
        names, shared = fig.unit_lines(group.to_dicts(), keys, specs)
        series = {}
        for key, rows in group.sort("k").group_by(fig.LINE, maintain_order=True):
            series[names[tuple(key)]] = ([0] + rows["k"].to_list(), [0.0] + rows["delta"].to_list())
        out.append((fig.slug("sahara-asr-change", model, dataset),
                    fig.lines(series, f"ASR change against heads ablated\n{model} / {dataset}"
                              + (f"\n{shared}" if shared else ""), "heads ablated (k)", "ASR(k) - ASR(0)")))
    return out
