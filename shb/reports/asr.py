"""``shb report asr``: baseline (k = 0, no head ablated) against ablated ASR, by model, dataset, prompt
format, ablation, head source, decoding and judge.

The prompt format is not a column of the ``asr`` view; it is part of the unit's resolved spec
(units.spec -> dataset -> format). A baseline matches an ablated row on model, dataset, format,
judge (id and hash), decoding and max_new_tokens; at k = 0 the ablation kind does not matter, so
any ablation's k = 0 row of that cell serves. No torch here.
"""

from __future__ import annotations

import polars as pl

from shb.reports.render import require, where, with_decoding_label


def summary(store, model=None, dataset=None, ablation=None, judge=None) -> pl.DataFrame:
    body, params = where(**{"a.model_id": model, "a.dataset_id": dataset, "a.judge_id": judge})
    ablation_body, ablation_params = where(ablation_id=ablation)
    sql = f"""
        WITH a AS (
            SELECT a.model_id, a.dataset_id, coalesce(json_extract_string(u.spec, '$.dataset.format'), 'direct') AS format,
                   a.ablation_id, a.head_source, a.k, a.judge_id, a.judge_hash,
                   CAST(a.decoding AS VARCHAR) AS decoding, a.max_new_tokens, a.n, a.asr
            FROM asr a LEFT JOIN units u USING (unit_id) WHERE {body}),
        base AS (
            SELECT model_id, dataset_id, format, judge_id, judge_hash, decoding, max_new_tokens,
                   sum(asr * n) / sum(n) AS baseline_asr, sum(n) AS baseline_n
            FROM a WHERE k = 0 GROUP BY ALL),
        ablated AS (
            SELECT model_id, dataset_id, format, ablation_id, head_source, k, judge_id, judge_hash, decoding,
                   max_new_tokens, sum(asr * n) / sum(n) AS ablated_asr, sum(n) AS n
            FROM a WHERE k > 0 AND {ablation_body} GROUP BY ALL)
        SELECT x.model_id, x.dataset_id, x.format, x.ablation_id, x.head_source, x.k, x.decoding,
               x.max_new_tokens, x.judge_id, b.baseline_asr, x.ablated_asr,
               x.ablated_asr - b.baseline_asr AS change, b.baseline_n, x.n
        FROM ablated x LEFT JOIN base b ON b.model_id = x.model_id AND b.dataset_id = x.dataset_id
             AND b.format = x.format AND b.judge_id = x.judge_id AND b.judge_hash IS NOT DISTINCT FROM x.judge_hash
             AND b.decoding = x.decoding AND b.max_new_tokens IS NOT DISTINCT FROM x.max_new_tokens
        ORDER BY ALL"""
    frame = store.query(sql, params + ablation_params)
    if frame.is_empty():
        # Only baselines (k = 0) so far: still worth showing, with the ablated columns empty.
        frame = store.query(f"""
            WITH a AS (
                SELECT a.model_id, a.dataset_id, coalesce(json_extract_string(u.spec, '$.dataset.format'), 'direct') AS format,
                       a.judge_id, CAST(a.decoding AS VARCHAR) AS decoding, a.max_new_tokens, a.n, a.asr
                FROM asr a LEFT JOIN units u USING (unit_id) WHERE {body} AND a.k = 0)
            SELECT model_id, dataset_id, format, NULL::VARCHAR AS ablation_id, NULL::VARCHAR AS head_source,
                   0 AS k, decoding, max_new_tokens, judge_id, sum(asr * n) / sum(n) AS baseline_asr,
                   NULL::DOUBLE AS ablated_asr, NULL::DOUBLE AS change, sum(n) AS baseline_n, NULL::BIGINT AS n
            FROM a GROUP BY ALL ORDER BY ALL""", params)
    frame = require(frame, "ASR results", "run a suite with an `asr` metric (e.g. suites/paper-mini.json)",
                    [model, dataset, ablation, judge])
    return with_decoding_label(frame)
