"""``shb report attention``: which prompt tokens a safety head attends to from the last position,
on harmful and on benign prompts, beside a median head (rows of the ``attention`` metric).

A token's weight in one prompt is the summed attention weight of its occurrences; the table and
the figure show each token's mean over the prompts of the set (0 where a prompt lacks it), the
tokens with the largest means first. ``on_last`` and ``on_first`` are the mean weights on the last
position itself and on the first token (where heads with nothing to read park their attention).
No torch here.
"""

from __future__ import annotations

import polars as pl

from shb.reports.render import require, where

GROUP = ["model_id", "dataset_id", "role", "layer", "head", "prompt_set"]
# Byte-level BPE vocabularies (GPT-2, Llama-3, SmolLM2) mark a leading space and a newline with
# these characters; the rows keep the vocabulary's token, the report shows what it stands for.
READABLE = {"\u0120": "\u2423", "\u010a": "\\n", "\u2581": "\u2423"}


def readable(token: str) -> str:
    for mark, shown in READABLE.items():
        token = token.replace(mark, shown)
    return token


def token_weights(store, model=None, dataset=None) -> pl.DataFrame:
    """One row per (model, dataset, role, head, prompt set, token): mean weight over the set's prompts."""
    body, params = where(model_id=[model] if model else [], dataset_id=[dataset] if dataset else [])
    frame = store.query(f"""
        WITH rows AS (SELECT * FROM head_attention WHERE {body}),
        per_prompt AS (SELECT {', '.join(GROUP)}, prompt_id, token, sum(weight) AS w FROM rows GROUP BY ALL),
        sizes AS (SELECT {', '.join(GROUP)}, count(DISTINCT prompt_id) AS n FROM rows GROUP BY ALL)
        SELECT p.model_id, p.dataset_id, p.role, p.layer, p.head, p.prompt_set, p.token,
               sum(p.w) / any_value(s.n) AS mean_weight, count(*) AS prompts_with_token, any_value(s.n) AS n
        FROM per_prompt p JOIN sizes s USING ({', '.join(GROUP)})
        GROUP BY ALL ORDER BY ALL""", params)
    return require(frame, "attention rows", "run a suite with an `attention` metric (e.g. suites/paper-mini.json)",
                   {"--model": model, "--dataset": dataset})


def summary(store, model=None, dataset=None, top: int = 5) -> pl.DataFrame:
    """Per (model, head, prompt set): prompts, the top tokens with their mean weight, weight on last/first."""
    tokens = token_weights(store, model, dataset).with_columns(
        pl.col("token").map_elements(readable, return_dtype=pl.String))
    body, params = where(model_id=[model] if model else [], dataset_id=[dataset] if dataset else [])
    ends = store.query(f"""
        WITH rows AS (SELECT *, max(position) OVER (PARTITION BY unit_id, prompt_set, prompt_id, layer, head) AS last
                      FROM head_attention WHERE {body})
        SELECT {', '.join(GROUP)},
               avg(CASE WHEN position = last THEN weight END) AS on_last,
               avg(CASE WHEN position = 0 THEN weight END) AS on_first
        FROM rows GROUP BY ALL""", params)
    ranked = tokens.sort(GROUP + ["mean_weight", "token"], descending=[False] * len(GROUP) + [True, False])
    tops = ranked.group_by(GROUP, maintain_order=True).agg(
        pl.col("n").first().alias("prompts"),
        pl.format("{} ({})", pl.col("token"),  # one format for every weight: "0.090", never "0.09" beside "0.0"
                  pl.col("mean_weight").map_elements(lambda w: f"{w:.3f}", return_dtype=pl.String))
        .head(top).alias("top_tokens"))
    out = tops.join(ends, on=GROUP, how="left")
    return out.with_columns(pl.format("{}-{}", "layer", "head").alias("head_name")).select(
        "model_id", "dataset_id", "role", "head_name", "prompt_set", "prompts", "top_tokens", "on_last", "on_first"
    ).rename({"head_name": "head"})


def figure(tokens: pl.DataFrame, top: int = 8) -> list[tuple[str, bytes]]:
    """Per model and dataset: one panel per (head, prompt set), bars = the top tokens' mean weights."""
    from shb.reports import figures as fig

    plt = fig.pyplot()
    out = []
    for (model, dataset), frame in tokens.group_by(["model_id", "dataset_id"], maintain_order=True):
        heads = frame.select("role", "layer", "head").unique().sort(
            [pl.col("role").str.starts_with("median"), "role"]).rows()
        sets = [s for s in ("harmful", "benign") if s in set(frame["prompt_set"].to_list())]
        figure_, axes = plt.subplots(len(heads), len(sets), figsize=(4.2 * len(sets), 2.3 * len(heads)), squeeze=False)
        for i, (role, layer, head) in enumerate(heads):
            for j, prompt_set in enumerate(sets):
                ax = axes[i][j]
                panel = frame.filter((pl.col("role") == role) & (pl.col("prompt_set") == prompt_set)).sort(
                    ["mean_weight", "token"], descending=[True, False]).head(top)
                labels = [readable(t) for t in panel["token"].to_list()][::-1]
                ax.barh(range(len(labels)), panel["mean_weight"].to_list()[::-1],
                        color="tab:red" if role.startswith("safety") else "tab:gray")
                ax.set_yticks(range(len(labels)), labels, fontsize=7)
                ax.set_xlim(0, 1)
                n = panel["n"].max() if len(panel) else 0
                ax.set_title(f"{role} head {layer}-{head}, {prompt_set} prompts (n={n})", fontsize=8)
                if i == len(heads) - 1:
                    ax.set_xlabel("mean attention weight from the last position", fontsize=7)
        figure_.suptitle(f"where safety heads look: {model} / {dataset}", fontsize=9)
        figure_.tight_layout()
        out.append((fig.slug("attention", model, dataset), fig._png(figure_)))
    return out
