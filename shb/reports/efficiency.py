"""``shb report efficiency``: parameters modified against ASR, for every measured method - head sets
and fitted interventions (refusal direction, layers, ActSVD, set difference, safety neurons) - side
by side per model, dataset (and prompt format), judge and decoding, beside the paper's published
Table 1 rows.

Cost, one definition for every method (shb.interventions.ParamCount, README "Cost of a method"),
measured from the edit when the asr unit ran:
- ``entries_changed`` (generations.params_entries): weight entries whose value changes (for an
  intervention on activations, the entries of the weights whose output it overrides);
  ``share_pct`` = entries_changed / models.n_params;
- ``values_chosen`` (generations.params_dof): values the method chooses or fits (k heads, the
  layers, the neurons, the pruned entries, a direction's d values, low-rank factors);
- ``extra_runs``: further model runs per forward pass at inference (1 for DAP's reference model).
Rows from databases older than that fall back to the head geometry of the ``models`` table (one
head edits head_dim x hidden_size weights; k heads chosen). ``fit_note`` says where a fit fell
back (the refusal direction when no candidate passed Arditi et al.'s filters).

One row per asr unit and k (two explicit head lists are two rows; a fitted intervention is one
row per fit); the method label names the head set or the intervention. ASR carries a 95% Wilson
interval over its n judged answers (shb.reports.stats). Rows carry ``source``: ``measured`` or
``published (...)``, a number copied from the paper, never measured here. Where a ``utility`` metric
measured the same head set on the same model and ablation, its changes against the unmodified model
sit beside the ASR (lm-eval accuracy, over-refusal rate, benign NLL in nats): ASR gained against
utility lost. Beside each ASR, its baseline (``baseline_asr``, ``baseline_from``: the k = 0 row
shb.reports.baseline's one rule picks, as ``shb report asr`` shows it). Beside each ASR, the shares of refused / complied / broken / undetermined answers (shb.judges.outcome):
an intervention that lowers ASR by breaking the model shows a large ``broken``. No torch.
"""

from __future__ import annotations

import re

import polars as pl

from shb.reports.render import require, where, with_decoding_label
from shb.reports.stats import with_wilson

PAPER = "published (Table 1)"   # Zhou et al. 2025, ICLR, Table 1

# Llama-2-7b-chat, as published in Zhou et al.'s Table 1 (read from a secondary summary of the
# paper, docs/methods.md, "LSP and safety layers": check against the PDF before comparing); share in percent of all
# parameters, ASR as a fraction, asr_pm the paper's +-.
PUBLISHED = [
    {"method": "ActSVD (Wei et al. 2024)", "share_pct": 5.0, "asr": 0.73, "asr_pm": 0.03},
    {"method": "GTAC&DAP (Chen et al. 2024)", "share_pct": 5.0, "asr": 0.64, "asr_pm": 0.03},
    {"method": "LSP (Zhao et al. 2024)", "share_pct": 3.0, "asr": 0.58, "asr_pm": 0.04},
    {"method": "Sahara, 3 heads (Zhou et al. 2025)", "share_pct": 0.018, "asr": 0.72, "asr_pm": 0.05},
]

COLUMNS = ["source", "model_id", "dataset_id", "format", "judge_id", "decoding", "max_new_tokens", "family", "method",
           "k", "entries_changed", "share_pct", "values_chosen", "extra_runs", "n", "asr", "asr_lo", "asr_hi", "asr_pm",
           "baseline_asr", "baseline_from",
           "refused", "complied", "broken", "undetermined", "utility_acc_change", "over_refusal_change", "benign_nll_change", "fit_note"]

# Further model runs per forward pass at inference, by intervention kind (the same for every row of
# that kind): DAP runs the unaligned reference model in lockstep to read the activations it patches.
EXTRA_RUNS = {"safety_neurons": 1}

# Weights edited per ablated head, from geometry: only for rows stored before params were measured.
PER_HEAD = """CASE json_extract_string(u.spec, '$.ablation.kind')
        WHEN 'undifferentiated' THEN m.head_dim * m.hidden_size   -- query (or key) rows
        WHEN 'mean' THEN m.head_dim * m.hidden_size               -- query rows or o_proj columns (site)
        WHEN 'scaling' THEN m.hidden_size * m.head_dim            -- o_proj columns
        WHEN 'zero' THEN m.hidden_size * m.head_dim               -- o_proj columns
    END"""


def measured(store, model=None, dataset=None) -> pl.DataFrame:
    """One row per (asr unit, k, judge) with k > 0: method, parameters modified, ASR."""
    body, params = where(**{"g.model_id": model, "g.dataset_id": dataset})
    has_params = "params_entries" in store.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'generations'")["column_name"].to_list()
    entries = f"coalesce(g.params_entries, len(g.heads) * {PER_HEAD})" if has_params else f"len(g.heads) * {PER_HEAD}"
    dof = "coalesce(g.params_dof, len(g.heads))" if has_params else "len(g.heads)"
    iv_id = "g.intervention_id" if has_params else "NULL::VARCHAR"
    iv_kind = "json_extract_string(g.intervention, '$.kind')" if has_params else "NULL::VARCHAR"
    from shb.reports.asr import OUTCOMES, has_outcomes

    # the four outcomes beside the ASR (shb.judges.outcome); NULL where the answers predate them; ASR and n over
    # the determined answers, as the asr view counts them (shb.store.DETERMINED)
    from shb.store import DETERMINED

    determined = f" FILTER (WHERE {DETERMINED})" if has_outcomes(store) else ""
    shares = ", ".join(
        (f"avg(CASE WHEN j.outcome IS NULL THEN NULL WHEN j.outcome = '{o}' THEN 1.0 ELSE 0.0 END) AS {o}"
         if has_outcomes(store) else f"NULL::DOUBLE AS {o}") for o in OUTCOMES)
    frame = store.query(f"""
        WITH g AS (
            SELECT g.*, {iv_id} AS iv_id, {iv_kind} AS iv_kind, CAST(g.decoding AS VARCHAR) AS decoding_text,
                   array_to_string(g.heads, ',') AS head_list,
                   coalesce(json_extract_string(u.spec, '$.dataset.format'), 'direct') AS format,
                   {entries} AS entries, {dof} AS dof, m.n_params
            FROM generations g JOIN units u ON u.unit_id = g.unit_id LEFT JOIN models m ON m.model_id = g.model_id
            WHERE g.k > 0 AND {body})
        SELECT 'measured' AS source, g.unit_id, g.model_id, g.dataset_id, any_value(g.format) AS format, j.judge_id,
               j.judge_hash,
               g.decoding_text AS decoding, g.max_new_tokens,
               CASE WHEN any_value(g.iv_id) IS NOT NULL THEN any_value(g.iv_id)
                    WHEN count(DISTINCT g.head_list) = 1
                        THEN 'heads ' || any_value(g.head_list) || ' (' || any_value(g.ablation_id) || ')'
                    ELSE 'heads: ' || any_value(g.head_source) || ' k=' || g.k || ' (' || any_value(g.ablation_id) || ')'
               END AS method,
               CASE WHEN any_value(g.iv_id) IS NOT NULL THEN any_value(g.iv_kind)
                    ELSE 'heads: ' || any_value(g.head_source) || ' (' || any_value(g.ablation_id) || ')' END AS family,
               any_value(g.iv_id) AS intervention_id, any_value(g.head_source) AS head_source,
               CASE WHEN count(DISTINCT g.head_list) = 1 AND len(any_value(g.heads)) > 0
                    THEN array_to_string(list_sort(any_value(g.heads)), ',') END AS head_key,
               json_extract_string(any_value(g.intervention), '$.fit_id') AS fit_key,
               any_value(g.ablation_id) AS ablation_id, g.k,
               CAST(round(avg(g.entries)) AS BIGINT) AS entries_changed,
               CAST(round(avg(g.dof)) AS BIGINT) AS values_chosen,
               100.0 * avg(g.entries) / any_value(g.n_params) AS share_pct,
               count(*){determined} AS n, avg(CASE WHEN j.harmful THEN 1.0 ELSE 0.0 END){determined} AS asr, {shares}
        FROM g JOIN judgments j USING (generation_id)
        GROUP BY g.unit_id, g.k, g.model_id, g.dataset_id, j.judge_id, j.judge_hash, g.decoding_text, g.max_new_tokens
        ORDER BY g.model_id, g.dataset_id, j.judge_id, decoding, g.max_new_tokens, family, share_pct, method""", params)
    frame = frame.with_columns(
        pl.col("family").replace_strict(EXTRA_RUNS, default=0, return_dtype=pl.Int64).alias("extra_runs"))
    return _with_baselines(store, with_wilson(_with_fit_notes(store, frame), "asr", "n"))


def _with_baselines(store, frame: pl.DataFrame) -> pl.DataFrame:
    """``baseline_asr`` and ``baseline_from`` beside each row: the k = 0 ASR that shb report asr compares
    it with (shb.reports.baseline's one rule), so a method's ASR reads against the unmodified model's."""
    from shb.reports.asr import rows_with_baselines

    if frame.is_empty():
        return frame.with_columns(pl.lit(None, pl.Float64).alias("baseline_asr"),
                                  pl.lit(None, pl.String).alias("baseline_from"))
    keys = ["unit_id", "k", "judge_id", "judge_hash"]
    base = rows_with_baselines(store)
    if base.is_empty():
        base = pl.DataFrame(schema={**{k: frame.schema[k] for k in keys}, "baseline_asr": pl.Float64,
                                    "baseline_from": pl.String})
    base = base.filter(pl.col("k") > 0).select(*keys, "baseline_asr", "baseline_from").unique(keys, keep="first")
    return frame.with_row_index("_row").join(base, on=keys, how="left", nulls_equal=True).sort("_row").drop("_row")


def _with_fit_notes(store, frame: pl.DataFrame) -> pl.DataFrame:
    """``fit_note``: what a fit had to give up, from fits.meta (the refusal direction's fallback)."""
    exists = store.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'fits'")["n"][0]
    if not exists or frame.is_empty():
        return frame.with_columns(pl.lit(None, pl.String).alias("fit_note"))
    notes = store.query("""
        SELECT fit_id AS fit_key,
               CASE WHEN json_extract(meta, '$.fallback') = 'true'
                    THEN 'fallback: no candidate passed every filter; the best under the layer bound was kept' END
                   AS fit_note
        FROM fits""")
    return (frame.with_row_index("_row").join(notes, on="fit_key", how="left").sort("_row").drop("_row"))


def utility_changes(store) -> pl.DataFrame | None:
    """Utility lost under each head set (shb report utility's change against the unmodified model),
    keyed like the measured rows: model, ablation and the sorted head list. None without utility results."""
    exists = store.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'utility_change'")
    if not exists["n"][0]:
        return None
    frame = store.query("""
        SELECT c.model_id, c.ablation_id,
               CASE WHEN len(c.heads) > 0 THEN array_to_string(list_sort(c.heads), ',') END AS head_key,
               json_extract_string(u.spec, '$.intervention.fit_id') AS fit_key,
               avg(CASE WHEN c.part = 'lm_eval' AND c.measure = 'acc' THEN c.change END) AS utility_acc_change,
               avg(CASE WHEN c.part = 'over_refusal' THEN c.change END) AS over_refusal_change,
               avg(CASE WHEN c.part = 'benign_loss' THEN c.change END) AS benign_nll_change
        FROM utility_change c JOIN units u USING (unit_id) GROUP BY ALL""")
    return None if frame.is_empty() else frame


def _with_utility(rows: pl.DataFrame, utility: pl.DataFrame) -> pl.DataFrame:
    """Head sets match on model, ablation and the sorted head list; fitted baselines on model and fit."""
    measures = ["utility_acc_change", "over_refusal_change", "benign_nll_change"]
    by_heads = utility.filter(pl.col("head_key").is_not_null()).select("model_id", "ablation_id", "head_key", *measures)
    by_fit = (utility.filter(pl.col("fit_key").is_not_null()).select("model_id", "fit_key", *measures)
              .unique(["model_id", "fit_key"], keep="first"))
    rows = rows.with_row_index("_row")  # the measured order (model, dataset, judge, decoding, family, share)
    heads = rows.filter(pl.col("fit_key").is_null()).join(by_heads, on=["model_id", "ablation_id", "head_key"],
                                                          how="left")
    fitted = rows.filter(pl.col("fit_key").is_not_null()).join(by_fit, on=["model_id", "fit_key"], how="left")
    return pl.concat([heads, fitted], how="diagonal_relaxed").sort("_row").drop("_row")


# The judge behind the published numbers: Zhou et al.'s own evaluation, not a judge run here, so a
# published ASR is never comparable with (or ranked among) the measured rows.
PUBLISHED_JUDGE = "Zhou et al.'s (as published)"


def published() -> pl.DataFrame:
    return pl.DataFrame([{"source": PAPER, "model_id": "Llama-2-7b-chat (paper)", "judge_id": PUBLISHED_JUDGE,
                          "family": "published", **row} for row in PUBLISHED])


def report(store, model=None, dataset=None, include_published: bool = True) -> pl.DataFrame:
    rows = measured(store, model, dataset)
    utility = utility_changes(store)
    if utility is not None and not rows.is_empty():
        # ASR gained beside utility lost, for the head sets a `utility` metric measured too
        rows = _with_utility(rows, utility)
    parts = [p for p in [rows] if not p.is_empty()]
    if not parts:
        require(pl.DataFrame(), "ASR results with a head set or an intervention",
                "run a suite with an `asr` metric with k > 0 or an intervention (e.g. suites/paper-mini.json)",
                [model, dataset])
    if include_published:
        parts.append(published())
    frame = pl.concat(parts, how="diagonal_relaxed")
    frame = frame.select([c for c in COLUMNS if c in frame.columns])
    return with_decoding_label(frame)


def for_table(measured: pl.DataFrame) -> pl.DataFrame:
    """The terminal view of the measured rows: entries changed and their share of the model, the ASR with
    its interval, the broken share of the answers, values chosen, extra runs, then what the method did to
    utility (change against the unmodified model). The head-set family drops its "heads: " prefix and
    the method its repeated ablation, so the columns fit 80 characters where they can; JSON and CSV keep
    every column."""
    from shb.reports.asr import short_head_set
    from shb.reports.render import number

    def family(r) -> str:
        return r["family"].removeprefix("heads: ") if r["family"] else "-"

    def method(r) -> str:
        text = r["method"] or "-"
        if r["family"] and r["family"].startswith("heads: "):  # the family names the source and ablation
            if text.startswith("heads: "):  # no one head set: per prompt, per draw
                return "(varies)"
            text = re.sub(r" \([^()]*\)$", "", text.removeprefix("heads "))
            text = short_head_set(text)  # a 32-head set would crowd out the other columns
        return text

    def utility(r) -> str | None:
        parts = [(name, r.get(column)) for name, column in (("acc", "utility_acc_change"),
                                                            ("over-refusal", "over_refusal_change"),
                                                            ("NLL", "benign_nll_change"))]
        shown = [f"{name} {'+' if v >= 0 else ''}{number(v)}" for name, v in parts if v is not None]
        return ", ".join(shown) or None

    rows = []
    for r in measured.iter_rows(named=True):
        share = r.get("share_pct")
        rows.append({
            **{c: r[c] for c in ("source", "model_id", "dataset_id", "format", "judge_id", "decoding",
                                 "max_new_tokens") if c in r},
            # numbers a narrow table gives up rightmost first: n, extra runs, chosen, broken, share, entries;
            # what was applied (a head list, an intervention id) stands after the cost and is not a key
            # column, so a narrow table gives it up before the cost where family and k tell rows apart
            "family": family(r), "k": r["k"], "entries": r["entries_changed"],
            "share %": share, "asr": r["asr"], "asr_lo": r["asr_lo"], "asr_hi": r["asr_hi"], "applied": method(r),
            "broken": r.get("broken"), "chosen": r["values_chosen"], "extra runs": r["extra_runs"], "n": r["n"],
            "utility change": utility(r), "fit_note": r.get("fit_note")})
    out = pl.DataFrame(rows, infer_schema_length=None)
    return out.drop([c for c in ("broken", "utility change", "fit_note") if out[c].null_count() == out.height])


def figure(frame: pl.DataFrame, one_axis: bool = False) -> list[tuple[str, bytes]]:
    """ASR against the share of entries modified (log axis): one series per method family (a head
    source and ablation, or an intervention kind), per model, dataset, judge and decoding; Wilson
    intervals as error bars. The paper's published rows (another model, not measured here) get a
    panel of their own beside the measured one (``one_axis``: on the same axes). Labels are placed
    where they overlap nothing (``figures.place_labels``); the legend names only what differs between
    series, and what all share goes once into the title."""
    from shb.reports import figures as fig

    plt = fig.pyplot()
    usable = [r for r in frame.iter_rows(named=True) if r.get("share_pct") and r["share_pct"] > 0
              and r.get("asr") is not None]
    measured = [r for r in usable if r["source"] == "measured"]
    paper = [r for r in usable if r["source"] != "measured"]
    panels = 1 if one_axis or not (measured and paper) else 2
    figure_, axes = plt.subplots(1, panels, figsize=(6.5 * panels + 2.5, 4.8), sharey=True, squeeze=False)
    ax_measured, ax_paper = axes[0][0], axes[0][-1]
    cells = ["model_id", "dataset_id", "judge_id", "decoding"]
    varying, shared = fig.varying_parts(measured, cells)
    series: dict[str, list[dict]] = {}
    for row in measured:
        parts = [row["family"]] + [str(row[c]) for c in varying]
        series.setdefault(" | ".join(parts), []).append(row)
    palette = plt.get_cmap("tab20").colors   # more series than the default cycle's 10 colours
    labels = {id(ax_measured): [], id(ax_paper): []}
    for index, (name, rows) in enumerate(series.items()):
        rows = sorted(rows, key=lambda r: r["share_pct"])
        lo = [r["asr"] - (r["asr_lo"] if r.get("asr_lo") is not None else r["asr"]) for r in rows]
        hi = [(r["asr_hi"] if r.get("asr_hi") is not None else r["asr"]) - r["asr"] for r in rows]
        ax_measured.errorbar([r["share_pct"] for r in rows], [r["asr"] for r in rows], yerr=[lo, hi], marker="o",
                             markersize=5, capsize=2, linestyle="-" if name.startswith("heads:") else "none",
                             label=name, color=palette[index % len(palette)])
        for r in rows:
            tag = f"k={r['k']}" if r["family"].startswith("heads:") else r["method"]
            labels[id(ax_measured)].append((r["share_pct"], r["asr"], tag))
    if paper:
        ax_paper.errorbar([r["share_pct"] for r in paper], [r["asr"] for r in paper],
                          yerr=[r.get("asr_pm") or 0 for r in paper], fmt="s", color="black", capsize=2,
                          label="published, Llama-2-7b-chat (not measured here)")
        labels[id(ax_paper)] += [(r["share_pct"], r["asr"], r["method"]) for r in paper]
        if panels == 2:
            ax_paper.set_title("published (Table 1 of the paper, Llama-2-7b-chat)", fontsize=9)
    from matplotlib.ticker import NullFormatter

    for ax in {id(a): a for a in (ax_measured, ax_paper)}.values():
        ax.set_xscale("log")
        ax.set_xlabel("weight entries modified (% of model, log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.25, y=0.12)  # room inside the axes for the labels of the outermost points
        low, high = ax.get_xlim()
        if high / low > 10:  # a decade or more has labelled major ticks; minor labels (3x10^0) would crowd them
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:  # within a decade: a few plain labels (2, 5, 10), not 3x10^0 crowding 10^1
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    ax_measured.set_ylabel("ASR (95% Wilson interval)")
    if panels == 2:
        ax_measured.set_title("measured here" + (f"\n{shared}" if shared else ""), fontsize=9)
    figure_.suptitle("ASR against share of parameters modified", fontsize=10)
    handles = [h for ax in {id(a): a for a in (ax_measured, ax_paper)}.values()
               for h in zip(*ax.get_legend_handles_labels())]
    if handles:
        import textwrap

        figure_.legend([h for h, _ in handles], [textwrap.fill(t, 60) for _, t in handles], fontsize=7,
                       loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=1 if len(handles) > 4 else 2, frameon=False)
    figure_.tight_layout()
    for ax in {id(a): a for a in (ax_measured, ax_paper)}.values():
        fig.place_labels(ax, list(dict.fromkeys(labels[id(ax)])))
    return [("efficiency", fig._png(figure_))]
