"""The recall a screened run measured on itself (shb.screen_check), for ``shb report ships`` and
``shb report sahara``.

Per prompt (Ships) or step (Sahara) a screened run verified its estimate's top N candidates
(``verified_as = 'top'``; with Ships' ``pool`` also ``'pool'``, counted with them) and a uniform
random sample of the U others (``'sample'``). Let t be the
k-th best exact score among the top N (k = min(10, N)). A sampled candidate scoring above t would have
entered the verified top k: the screen missed it. With h of s sampled above t, h / s * U estimates how
many unverified candidates beat t, the number of top-k candidates the screen missed (an upper bound on
the exact top k members outside the verified ranking; recall@k >= 1 - missed / k). Reported per unit:
the mean of that estimate over prompts / steps, the one-sided 95% Clopper-Pearson upper bound of the
pooled share h / s times the mean U, and the recall@k the mean implies. Where any sampled candidate beat
t the report prints a warning: the exact scores of those candidates are real and are in the ranking
(Ships: the head's rows in ``ships``; Sahara: a step's best sampled candidate is chosen when it beats the
top N), but the screen misses heads like them that were not sampled.

No torch here.
"""

from __future__ import annotations

import math

import polars as pl

K = 10  # the rank the recall is about: the top 10 of the paper's per-prompt rankings


def _columns(store, table: str) -> set[str]:
    return set(store.query("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                           [table])["column_name"])


def per_group(store, estimates: str, exact: str, group: str, where: str, params: list) -> pl.DataFrame:
    """One row per (unit, prompt or step): k, the threshold t, sampled, above (sampled candidates above t)
    and unverified (candidates outside the top). ``where`` filters ``estimates e`` (joined with ``units u``).
    A database written before the sample (no ``verified_as``) reads as top-verified rows only."""
    how = ("e.verified_as" if "verified_as" in _columns(store, estimates)
           else "CASE WHEN e.verified THEN 'top' END")
    return store.query(f"""
        WITH x AS (
            SELECT e.unit_id, e.{group} AS grp, {how} AS how, s.score
            FROM {estimates} e JOIN units u USING (unit_id)
                 LEFT JOIN {exact} s ON s.unit_id = e.unit_id AND s.{group} = e.{group}
                                        AND s.layer = e.layer AND s.head = e.head
            WHERE {where}),
        top AS (
            SELECT unit_id, grp, score,
                   row_number() OVER (PARTITION BY unit_id, grp ORDER BY score DESC) AS r,
                   count(*) OVER (PARTITION BY unit_id, grp) AS n_top
            FROM x WHERE how IN ('top', 'pool')),
        t AS (SELECT unit_id, grp, least(any_value(n_top), {K}) AS k, min(score) AS t
              FROM top WHERE r <= {K} GROUP BY ALL)
        SELECT x.unit_id, x.grp, any_value(t.k) AS k,
               sum(CASE WHEN x.how = 'sample' THEN 1 ELSE 0 END) AS sampled,
               sum(CASE WHEN x.how = 'sample' AND x.score > t.t THEN 1 ELSE 0 END) AS above,
               sum(CASE WHEN x.how IS NULL OR x.how = 'sample' THEN 1 ELSE 0 END) AS unverified
        FROM x JOIN t USING (unit_id, grp) GROUP BY ALL ORDER BY ALL""", params)


def upper_share(hits: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial share: the p at which P(X <= hits) = 1 - level."""
    if n == 0:
        return 1.0
    if hits >= n:
        return 1.0

    def cdf(p: float) -> float:
        if p <= 0:
            return 1.0
        logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
                + (n - i) * math.log1p(-p) for i in range(hits + 1)]
        top = max(logs)
        return math.exp(top) * sum(math.exp(v - top) for v in logs)

    lo, hi = 0.0, 1.0
    for _ in range(60):  # cdf falls as p grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - level else (lo, mid)
    return hi


def summary(groups: pl.DataFrame) -> pl.DataFrame:
    """Per unit, from ``per_group``: groups, sampled, above, missed (estimated top-k candidates missed per
    prompt / step), missed_95 (its 95% upper bound), recall_est (recall@k the estimate implies). Units
    whose rows hold no sample say so with nulls."""
    rows = []
    for (unit_id,), g in groups.group_by(["unit_id"], maintain_order=True):
        k = int(g["k"].min())
        with_sample = g.filter(pl.col("sampled") > 0)
        sampled, above = int(g["sampled"].sum()), int(g["above"].sum())
        missed = missed_95 = recall = None
        if not with_sample.is_empty():
            missed = float((with_sample["above"] / with_sample["sampled"] * with_sample["unverified"]).mean())
            missed_95 = upper_share(above, sampled) * float(with_sample["unverified"].mean())
            recall = 1.0 - min(missed, k) / k
        rows.append({"unit_id": unit_id, "k": k, "checked": g.height, "sampled": sampled, "above_kth": above,
                     "missed_per": missed, "missed_95": missed_95, "recall_est": recall})
    schema = {"unit_id": pl.Utf8, "k": pl.Int64, "checked": pl.Int64, "sampled": pl.Int64, "above_kth": pl.Int64,
              "missed_per": pl.Float64, "missed_95": pl.Float64, "recall_est": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def warnings(frame: pl.DataFrame, per: str) -> list[str]:
    """One line per unit of ``frame`` (a ``summary`` joined with metric_id) whose sample found a missed
    candidate; ``per``: "prompt" (a Ships sweep) or "step" (a Sahara search)."""
    what, run = ("heads", "sweep") if per == "prompt" else ("candidates", "search")
    out = []
    for row in frame.filter(pl.col("above_kth") > 0).iter_rows(named=True):
        k = row["k"]
        out.append(f"warning: screened {row.get('metric_id', '?')} (unit {row['unit_id'][:12]}): {row['above_kth']} of "
                   f"{row['sampled']} randomly sampled {what} scored above their {per}'s {k}th-best verified one: about "
                   f"{row['missed_per']:.1f} unverified {what} per {per} belong in the top {k} (95% bound "
                   f"{row['missed_95']:.1f}; estimated recall@{k} {row['recall_est']:.2f}). The sampled ones keep their "
                   f"exact scores in the results, the others are missing: raise screen.top or run the exact {run}")
    return out
