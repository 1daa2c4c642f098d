"""``shb report sahara``: ASR change against the number of ablated heads (paper Tables 3 and 5) and the
heads Sahara chose at each step.

The change at k is ASR(k heads ablated) - ASR(k = 0) of the same model, dataset, ablation, judge
(id and hash), decoding and max_new_tokens: ASR numbers are only comparable when all of those
match. At k = 0 no head is ablated, so when a result has no k = 0 row under its own ablation the
k = 0 row of another ablation (same everything else) stands in; the ``baseline_from`` column says
which was used. No torch here.
"""

from __future__ import annotations

import polars as pl

from shb.reports.render import require, where, with_decoding_label

_MATCH = "model_id, dataset_id, judge_id, judge_hash, decoding, max_new_tokens"


def asr_by_k(store, model=None, dataset=None, ablation=None, judge=None) -> pl.DataFrame:
    """Long rows: one per (model, dataset, ablation, head source, judge, decoding, max_new_tokens, k > 0)
    with asr_k, the k = 0 baseline asr_base, and delta = asr_k - asr_base (None without a baseline)."""
    body, params = where(model_id=model, dataset_id=dataset, judge_id=judge)
    ablation_body, ablation_params = where(ablation_id=ablation)
    sql = f"""
        WITH a AS (
            -- two explicit lists are two interventions: keep them apart (the view's sorted head list)
            SELECT model_id, dataset_id, ablation_id,
                   CASE WHEN head_source = 'explicit' THEN 'explicit ' || head_set ELSE head_source END AS head_source,
                   k, judge_id, judge_hash,
                   CAST(decoding AS VARCHAR) AS decoding, max_new_tokens, n, asr
            FROM asr WHERE {body}),
        -- several units can hold the same cell (reruns, two suites): pool them, weighted by n
        base_same AS (
            SELECT ablation_id, {_MATCH}, sum(asr * n) / sum(n) AS asr_base
            FROM a WHERE k = 0 GROUP BY ALL),
        base_any AS (
            SELECT {_MATCH}, sum(asr * n) / sum(n) AS asr_base
            FROM a WHERE k = 0 GROUP BY ALL),
        ablated AS (
            SELECT ablation_id, head_source, {_MATCH}, k, sum(asr * n) / sum(n) AS asr_k, sum(n) AS n
            FROM a WHERE k > 0 AND {ablation_body} GROUP BY ALL)
        SELECT x.model_id, x.head_source, x.ablation_id, x.dataset_id, x.judge_id,
               left(x.judge_hash, 8) AS judge_hash, x.decoding, x.max_new_tokens, x.k, x.n, x.asr_k,
               coalesce(s.asr_base, y.asr_base) AS asr_base,
               x.asr_k - coalesce(s.asr_base, y.asr_base) AS delta,
               CASE WHEN s.asr_base IS NOT NULL THEN 'same ablation'
                    WHEN y.asr_base IS NOT NULL THEN 'any ablation' END AS baseline_from
        FROM ablated x
        LEFT JOIN base_same s ON s.ablation_id = x.ablation_id AND s.model_id = x.model_id
             AND s.dataset_id = x.dataset_id AND s.judge_id = x.judge_id AND s.judge_hash IS NOT DISTINCT FROM x.judge_hash
             AND s.decoding = x.decoding AND s.max_new_tokens IS NOT DISTINCT FROM x.max_new_tokens
        LEFT JOIN base_any y ON y.model_id = x.model_id
             AND y.dataset_id = x.dataset_id AND y.judge_id = x.judge_id AND y.judge_hash IS NOT DISTINCT FROM x.judge_hash
             AND y.decoding = x.decoding AND y.max_new_tokens IS NOT DISTINCT FROM x.max_new_tokens
        ORDER BY ALL"""
    frame = store.query(sql, params + ablation_params)
    return require(frame, "ASR results with ablated heads (k > 0)",
                   "run a suite with an `asr` metric whose k includes 0 and 1..5 (e.g. suites/paper-mini.json)",
                   [model, dataset, ablation, judge])


ROW_KEYS = ["model_id", "head_source", "ablation_id", "dataset_id", "judge_id", "judge_hash", "decoding",
            "max_new_tokens", "asr_base"]


def change_table(long: pl.DataFrame) -> pl.DataFrame:
    """The layout of the paper's Tables 3 and 5: one row per head-set source x ablation x dataset (and
    model, judge, decoding), columns k=1..K holding ASR(k) - ASR(0), and their mean."""
    wide = long.pivot(on="k", index=ROW_KEYS, values="delta", sort_columns=True)
    ks = sorted(int(c) for c in wide.columns if c not in ROW_KEYS)
    wide = wide.rename({str(k): f"k={k}" for k in ks})
    k_cols = [f"k={k}" for k in ks]
    wide = wide.with_columns(pl.mean_horizontal(k_cols).alias("mean"))
    return with_decoding_label(wide.select(ROW_KEYS + k_cols + ["mean"]).sort(ROW_KEYS[:8]))


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


def figures(long: pl.DataFrame) -> list[tuple[str, bytes]]:
    """One line chart per (model, dataset): ASR change against k, one line per head source x ablation x
    decoding x judge (k = 0 drawn at 0)."""
    from shb.reports import figures as fig

    long = with_decoding_label(long.filter(pl.col("delta").is_not_null()))
    out = []
    for (model, dataset), group in long.group_by(["model_id", "dataset_id"], maintain_order=True):
        series = {}
        keys = ["head_source", "ablation_id", "decoding", "judge_id"]
        # the legend names what differs between lines; what all share goes once into the title
        varying, shared = fig.varying_parts(group.to_dicts(), keys)
        for key, rows in group.sort("k").group_by(keys, maintain_order=True):
            named = dict(zip(keys, key))
            label = " / ".join(str(named[c]) for c in varying if named[c] not in (None, "")) or str(key[0])
            series[label] = ([0] + rows["k"].to_list(), [0.0] + rows["delta"].to_list())
        out.append((fig.slug("sahara-asr-change", model, dataset),
                    fig.lines(series, f"ASR change against heads ablated\n{model} / {dataset}"
                              + (f"\n{shared}" if shared else ""), "heads ablated (k)", "ASR(k) - ASR(0)")))
    return out
