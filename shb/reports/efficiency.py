"""``shb report efficiency``: parameters modified (count and share of the model) against ASR, for
every head-ablation result in the database, beside the paper's published rows for other methods.

Parameter count of a head set, from the ``models`` table geometry (no torch): one head's edit
touches head_dim x hidden_size weights, whether it is the query rows (undifferentiated, mean
with site q) or the output-projection columns (scaling, zero, mean with site output). Biases are
ignored (Llama and Vicuna have none; for Qwen2 q-bias it undercounts by head_dim per head).
undifferentiated with site k edits the key rows of the head's kv group, also head_dim x hidden.
share = count / models.n_params.

Rows carry ``source``: ``measured`` (this database) or ``published (...)`` (a number copied from a
paper, never measured here). Measured baselines (ActSVD, safety layers, ...) will arrive in a
``baselines`` table with the columns of BASELINE_COLUMNS; when it exists it is UNIONed in. No torch.
"""

from __future__ import annotations

import polars as pl

from shb.reports.render import require, where, with_decoding_label

# The paper compares Sahara with methods that edit ~3-5% of the weights; the table number was not checked here.
PAPER = "published (Zhou et al. 2025, ICLR, comparison with prior safety-component methods)"

# Llama-2-7b-chat, as published; share in percent of all parameters, ASR as a fraction.
PUBLISHED = [
    {"method": "ActSVD (Wei et al. 2024)", "share_pct": 5.0, "asr": 0.73},
    {"method": "GTAC&DAP", "share_pct": 5.0, "asr": 0.64},
    {"method": "LSP (safety layers)", "share_pct": 3.0, "asr": 0.58},
    {"method": "Sahara, 3 heads (Zhou et al. 2025)", "share_pct": 0.018, "asr": 0.72},
]

# The columns a future measured-baselines table must provide to be UNIONed into this report.
BASELINE_COLUMNS = ("method", "model_id", "dataset_id", "params_modified", "share_pct", "asr", "judge_id",
                    "decoding", "max_new_tokens")

COLUMNS = ["source", "method", "model_id", "dataset_id", "ablation_id", "head_source", "k", "params_modified",
           "share_pct", "asr", "judge_id", "decoding", "max_new_tokens"]

# The SQL expression for weights edited per ablated head; the CASE keeps the kinds apart so that a
# kind with a different footprint (biases, kv groups) changes one line.
PER_HEAD = """CASE json_extract_string(u.spec, '$.ablation.kind')
        WHEN 'undifferentiated' THEN m.head_dim * m.hidden_size   -- query (or key) rows
        WHEN 'mean' THEN m.head_dim * m.hidden_size               -- query rows or o_proj columns (site)
        WHEN 'scaling' THEN m.hidden_size * m.head_dim            -- o_proj columns
        WHEN 'zero' THEN m.hidden_size * m.head_dim               -- o_proj columns
    END"""


def measured(store, model=None, dataset=None) -> pl.DataFrame:
    """One row per head-ablation ASR result (k > 0): heads ablated, weights edited, share, ASR."""
    body, params = where(**{"g.model_id": model, "g.dataset_id": dataset})
    frame = store.query(f"""
        WITH g AS (
            -- per generation: how many heads its head set has (per-prompt head sets may differ in size)
            SELECT g.generation_id, g.unit_id, g.model_id, g.dataset_id, g.ablation_id, g.head_source, g.k,
                   len(g.heads) AS n_heads, CAST(g.decoding AS VARCHAR) AS decoding, g.max_new_tokens
            FROM generations g WHERE g.k > 0 AND {body})
        SELECT 'measured' AS source, 'heads: ' || g.head_source || ' (' || g.ablation_id || ')' AS method,
               g.model_id, g.dataset_id, g.ablation_id, g.head_source, g.k,
               CAST(round(avg(g.n_heads * {PER_HEAD})) AS BIGINT) AS params_modified,
               100.0 * avg(g.n_heads * {PER_HEAD}) / any_value(m.n_params) AS share_pct,
               avg(CASE WHEN j.harmful THEN 1.0 ELSE 0.0 END) AS asr,
               j.judge_id, g.decoding, g.max_new_tokens
        FROM g JOIN judgments j USING (generation_id)
             JOIN units u ON u.unit_id = g.unit_id
             LEFT JOIN models m ON m.model_id = g.model_id
        GROUP BY g.model_id, g.dataset_id, g.ablation_id, g.head_source, g.k, j.judge_id, g.decoding, g.max_new_tokens
        ORDER BY ALL""", params)
    return frame


def baselines(store) -> pl.DataFrame | None:
    """Measured baselines, when a ``baselines`` table exists (it does not yet)."""
    has = store.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'baselines'")["n"][0]
    if not has:
        return None
    return store.query(f"""SELECT 'measured' AS source, {', '.join(BASELINE_COLUMNS)},
                                  NULL::VARCHAR AS ablation_id, NULL::VARCHAR AS head_source, NULL::INTEGER AS k
                           FROM baselines""")


def published() -> pl.DataFrame:
    return pl.DataFrame([{"source": PAPER, "model_id": "Llama-2-7b-chat (paper)", **row} for row in PUBLISHED])


def report(store, model=None, dataset=None, include_published: bool = True) -> pl.DataFrame:
    parts = [measured(store, model, dataset)]
    extra = baselines(store)
    if extra is not None:
        parts.append(extra)
    parts = [p for p in parts if not p.is_empty()]
    if not parts:
        require(pl.DataFrame(), "head-ablation ASR results",
                "run a suite with an `asr` metric and k > 0 (e.g. suites/paper-mini.json)", [model, dataset])
    if include_published:
        parts.append(published())
    frame = pl.concat(parts, how="diagonal_relaxed")
    frame = frame.select([c for c in COLUMNS if c in frame.columns])
    return with_decoding_label(frame)


def figure(frame: pl.DataFrame) -> list[tuple[str, bytes]]:
    from shb.reports import figures as fig

    points = []
    for row in frame.iter_rows(named=True):
        is_measured = row["source"] == "measured"
        if is_measured and row.get("k") is not None:
            series = " / ".join(str(row[c]) for c in ("model_id", "head_source", "ablation_id", "decoding"))
            label = f"k={row['k']}"
        else:
            series, label = row["method"], row["method"]
        points.append({"x": row["share_pct"], "y": row["asr"], "label": label, "series": series,
                       "published": not is_measured})
    return [("efficiency", fig.scatter(points, "ASR against share of parameters modified\n"
                                                "(published rows: Llama-2-7b-chat, copied from the paper)",
                                       "parameters modified (% of model, log scale)", "ASR"))]
