"""``shb report asr``: baseline (k = 0, no head ablated) against ablated ASR, one row per intervention.

Reports never pool different interventions. A row is one unit's head set at one k: the unit fixes
every parameter that changes its numbers (model, prompts and their format, ablation kind and
epsilon, decoding, max_new_tokens, answer prefix, judge), and ``head_set`` (from the ``asr`` view:
the sorted head list, or the source where every prompt has its own set) keeps apart two explicit
lists of one size. A random control with several draws is one row per k: the ASR pooled over its
draws (with its interval) and the mean and spread of the per-draw ASRs (``draw_mean``, ``draw_sd``),
because a random control is a distribution over head sets, not one head set.

Every ASR carries its n and a 95% Wilson interval (``*_lo``, ``*_hi``; shb.reports.stats), so two
numbers can be told apart.

Beside every ASR: the shares of the four outcomes (refused / complied / broken / undetermined,
shb.judges.outcome; ``baseline_*`` and ``ablated_*``), None over answers judged before outcomes were
recorded. An undetermined answer (no refusal phrase, in a language the judge has no phrases for) is left
out of ASR and its n (the ``asr`` view): ASR is over the determined answers, and ``n_undetermined``
(``baseline_n_undetermined``) says how many were left out; the table shows them beside each n. ASR keeps the
paper's binary verdict, which scores a broken answer (a loop, an empty answer) as a refusal; so a head set
can lower ASR by breaking the model rather than by making it refuse. ``moved_by`` says ``breakdown`` for
a row whose ASR fell while the broken share rose by at least half of that fall (``BREAKDOWN_SHARE``), and
``refusal`` for one whose ASR fell mostly through refusals.

Baseline: the unit's own k = 0 row when it has one; otherwise the k = 0 row of another unit of the
same content but for what is changed (shb.reports.baseline, the one rule every report and figure
uses: same model, prompts and format, decoding, max_new_tokens, answer prefix, judge id and hash).
``baseline_from`` says which. The prompt format is not a column of the ``asr`` view; it comes from
the unit's resolved spec (units.spec -> dataset -> format). No torch here.
"""

from __future__ import annotations

import polars as pl

from shb.reports.render import require, where, with_decoding_label
from shb.reports.stats import mean_and_spread, with_wilson

OUTCOMES = ["refused", "complied", "broken", "undetermined"]
BREAKDOWN_SHARE = 0.5   # an ASR fall is "mainly breakdown" when the broken share rose by >= this much of it

COLUMNS = ["model_id", "dataset_id", "format", "ablation_id", "metric_id", "head_source", "head_set", "k", "draws",
           "decoding", "max_new_tokens", "answer_prefix", "judge_id", "judge_hash", "baseline_asr", "baseline_lo", "baseline_hi", "baseline_n",
           "ablated_asr", "ablated_lo", "ablated_hi", "n", "change", "baseline_n_undetermined", "n_undetermined",
           *[f"baseline_{o}" for o in OUTCOMES], *[f"ablated_{o}" for o in OUTCOMES], "broken_change", "moved_by",
           "draw_mean", "draw_sd", "baseline_from", "unit_id"]


def has_outcomes(store) -> bool:
    """Whether the judgments table has outcomes (a database from before them, opened read-only, is not migrated)."""
    return bool(store.query("SELECT count(*) AS n FROM information_schema.columns"
                            " WHERE table_name = 'judgments' AND column_name = 'outcome'")["n"][0])


def has_undetermined(store) -> bool:
    """Whether the asr view counts undetermined answers (a database from before them, opened read-only,
    is not migrated: it has none)."""
    return bool(store.query("SELECT count(*) AS n FROM information_schema.columns"
                            " WHERE table_name = 'asr' AND column_name = 'n_undetermined'")["n"][0])


def _rows(store, body, params) -> pl.DataFrame:
    """The asr view with the unit's metric id, prompt format and answer prefix."""
    if has_undetermined(store):
        outcomes = "a.n_undetermined, a.n_outcome, " + ", ".join(f"a.{o}" for o in OUTCOMES)
    elif has_outcomes(store):  # outcomes, but from before the fourth: none was undetermined
        outcomes = "0 AS n_undetermined, a.n_outcome, a.refused, a.complied, a.broken, " \
                   "CASE WHEN a.n_outcome > 0 THEN 0.0 END AS undetermined"
    else:
        outcomes = "0 AS n_undetermined, 0 AS n_outcome, " + ", ".join(f"NULL::DOUBLE AS {o}" for o in OUTCOMES)
    return store.query(f"""
        SELECT a.unit_id, u.metric_id, a.model_id, a.dataset_id,
               coalesce(json_extract_string(u.spec, '$.dataset.format'), 'direct') AS format,
               coalesce(json_extract_string(u.spec, '$.metric.answer_prefix'), '') AS answer_prefix,
               a.ablation_id, a.head_source, a.head_set, a.k, a.draw, a.judge_id, a.judge_hash,
               CAST(a.decoding AS VARCHAR) AS decoding, a.max_new_tokens, a.n, a.asr, {outcomes}
        FROM asr a LEFT JOIN units u USING (unit_id) WHERE {body}
        ORDER BY a.unit_id, a.k, a.draw, a.head_set, a.judge_id""", params)


def _per_intervention(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per (unit, head set or random control, k, judge): pooled ASR, n, draws, per-draw ASRs."""
    keyed = rows.with_columns(
        # a random control's draws are one row; every other source keeps each head set apart
        pl.when(pl.col("head_source") == "random").then(pl.lit("<random>")).otherwise(pl.col("head_set"))
        .alias("_set"))
    keys = ["unit_id", "_set", "k", "judge_id", "judge_hash", "decoding", "max_new_tokens"]
    grouped = keyed.group_by(keys, maintain_order=True).agg(
        *[pl.col(c).first() for c in ("metric_id", "model_id", "dataset_id", "format", "answer_prefix",
                                      "ablation_id", "head_source")],
        pl.col("head_set").unique(maintain_order=True).alias("_sets"),
        pl.len().alias("draws"),
        pl.col("n").sum().alias("n"),
        pl.col("n_undetermined").sum().alias("n_undetermined"),
        # over the determined answers; None where every answer was undetermined
        ((pl.col("asr").fill_null(0.0) * pl.col("n")).sum() / pl.col("n").sum().replace(0, None)).alias("asr"),
        # outcome shares pooled over the answers that have one (None where none has)
        *[((pl.col(o) * pl.col("n_outcome")).sum() / pl.col("n_outcome").sum().replace(0, None)).alias(o)
          for o in OUTCOMES],
        pl.col("asr").alias("_draw_asrs"))
    sets = grouped["_sets"].to_list()
    spreads = [mean_and_spread(list(v)) for v in grouped["_draw_asrs"].to_list()]
    return grouped.with_columns(
        pl.Series("head_set", [s[0] if len(s) == 1 else f"{len(s)} random sets" for s in sets], dtype=pl.String),
        pl.Series("draw_mean", [m if d > 1 else None for (m, _, d) in spreads], dtype=pl.Float64),
        pl.Series("draw_sd", [sd if d > 1 else None for (_, sd, d) in spreads], dtype=pl.Float64),
    ).drop("_sets", "_draw_asrs")


def _baselines(store, inter: pl.DataFrame) -> pl.DataFrame:
    """The ablated rows (k > 0), each with its baseline (shb.reports.baseline: the one rule)."""
    from shb.reports.baseline import cells, with_baselines

    renamed = inter.rename({"asr": "ablated_asr", **{o: f"ablated_{o}" for o in OUTCOMES}})
    values = ["asr", "n", "n_undetermined", *OUTCOMES]
    # a row's judge, decoding and length are its own (stored with each answer), matched row by row
    match = ["judge_id", "judge_hash", "decoding", "max_new_tokens"]
    with_base = with_baselines(inter.select("unit_id", "_set", "k", *match, "n", "n_undetermined", "asr", *OUTCOMES),
                               cells(store, inter["unit_id"].to_list()), values, match)
    keys = ["unit_id", "_set", "k", *match]
    return renamed.filter(pl.col("k") > 0).join(
        with_base.select(*keys, *[f"baseline_{v}" for v in values], "baseline_from"), on=keys, how="left",
        nulls_equal=True).drop("_set")


def moved_by(change, broken_change, refused_change) -> str | None:
    """What an ASR fall came from: "breakdown" when the broken share rose by at least BREAKDOWN_SHARE of
    the fall, else "refusal" when the refused share did; None for a rise, no change or no outcomes."""
    if change is None or broken_change is None or change >= 0:
        return None
    if broken_change >= BREAKDOWN_SHARE * -change:
        return "breakdown"
    if refused_change is not None and refused_change >= BREAKDOWN_SHARE * -change:
        return "refusal"
    return None


def _with_outcome_changes(frame: pl.DataFrame) -> pl.DataFrame:
    frame = frame.with_columns((pl.col("ablated_broken") - pl.col("baseline_broken")).alias("broken_change"))
    refused_change = (frame["ablated_refused"] - frame["baseline_refused"]).to_list()
    marks = [moved_by(c, b, r) for c, b, r in zip(frame["change"].to_list(), frame["broken_change"].to_list(),
                                                  refused_change)]
    return frame.with_columns(pl.Series("moved_by", marks, dtype=pl.String))


def summary(store, model=None, dataset=None, ablation=None, judge=None) -> pl.DataFrame:
    frame = rows_with_baselines(store, model, dataset, ablation, judge, lone_baselines=True)
    frame = require(frame, "ASR results", "run a suite with an `asr` metric (e.g. suites/demo.json)",
                    [model, dataset, ablation, judge])
    return with_decoding_label(frame)


def rows_with_baselines(store, model=None, dataset=None, ablation=None, judge=None,
                        lone_baselines: bool = False) -> pl.DataFrame:
    """One row per unit, head set (or random control), k and judge, each ablated ASR beside its baseline
    (empty when nothing matches); ``shb report sahara`` reads the same rows. With ``lone_baselines`` (the
    ASR report) a unit that measured k = 0 alone is a row too, its ablated columns empty; without, such
    rows appear only where nothing was ablated at all."""
    body, params = where(**{"a.model_id": model, "a.dataset_id": dataset, "a.judge_id": judge})
    rows = _rows(store, body, params)
    frame = pl.DataFrame()
    if not rows.is_empty():
        inter = _per_intervention(rows)
        ablated = _baselines(store, inter)
        # a unit measured unablated only (k = 0 alone: a refusal-rate metric such as `heads: []`, or a run
        # not finished) is shown as a baseline with the ablated columns empty
        with_ablated = set(inter.filter(pl.col("k") > 0)["unit_id"].to_list())
        alone = inter.filter((pl.col("k") == 0) & ~pl.col("unit_id").is_in(sorted(with_ablated)))
        if not lone_baselines and not ablated.is_empty():
            alone = alone.clear()
        elif not ablated.is_empty():  # a unit that is another row's baseline shows there
            borrowed = {b.removeprefix("unit ") for b in ablated["baseline_from"].drop_nulls().to_list()}
            alone = alone.filter(~pl.col("unit_id").is_in(sorted(borrowed)))
        if ablation is not None:
            ablated = ablated.filter(pl.col("ablation_id") == ablation)
            alone = alone.filter(pl.col("ablation_id") == ablation)
        parts = []
        if not ablated.is_empty():
            parts.append(ablated.with_columns((pl.col("ablated_asr") - pl.col("baseline_asr")).alias("change")))
        if not alone.is_empty():
            parts.append(alone.rename(
                {"asr": "baseline_asr", "n": "baseline_n", "n_undetermined": "baseline_n_undetermined",
                 **{o: f"baseline_{o}" for o in OUTCOMES}}).with_columns(
                pl.lit(None, pl.Float64).alias("ablated_asr"), pl.lit(None, pl.Int64).alias("n"),
                pl.lit(None, pl.Int64).alias("n_undetermined"),
                pl.lit(None, pl.Float64).alias("change"), pl.lit("same unit").alias("baseline_from"),
                *[pl.lit(None, pl.Float64).alias(f"ablated_{o}") for o in OUTCOMES]).drop("_set"))
        if not parts:
            return frame
        frame = pl.concat(parts, how="diagonal_relaxed")
        frame = _with_outcome_changes(frame)
        frame = with_wilson(frame, "baseline_asr", "baseline_n", "baseline")
        frame = with_wilson(frame, "ablated_asr", "n", "ablated")
        frame = frame.select(COLUMNS).sort(["model_id", "dataset_id", "format", "ablation_id", "head_source", "k",
                                            "head_set", "decoding", "judge_id", "unit_id"], nulls_last=True)
    return frame


def short_head_set(head_set: str | None, keep: int = 3) -> str | None:
    """A head set for an 80-column table: up to ``keep`` heads as they are, a longer one as its first
    ``keep`` heads and how many more (JSON, CSV and HTML keep the whole set; no ellipsis, which the
    tables reserve for nothing: a cut there would read as a truncated cell)."""
    if not head_set or head_set.count(",") < keep:
        return head_set
    heads = head_set.split(",")
    return ",".join(heads[:keep]) + f" +{len(heads) - keep} more"


def _with_interval(rate, lo, hi, n, undetermined=None) -> str | None:
    """``rate [lo, hi] n=N``, and ``+U undetermined`` where answers were left out of the rate."""
    left_out = f" +{undetermined} undetermined" if undetermined else ""
    if rate is None:
        return f"- (none determined, {undetermined} undetermined)" if undetermined else None
    from shb.reports.render import number

    return f"{number(rate)} [{number(lo)}, {number(hi)}]" + (f" n={n}" if n is not None else "") + left_out


def for_table(frame: pl.DataFrame) -> pl.DataFrame:
    """The terminal view: each ASR with its interval and n in one cell (or, where every ASR has the same
    n, one ``n`` column, which the table lifts into its title); JSON and CSV keep every column."""
    rows = []
    one_n = len(set(frame["n"].to_list()) | set(frame["baseline_n"].to_list())) == 1 if frame.height else False
    for r in frame.iter_rows(named=True):
        spread = None
        if r["draws"] and r["draws"] > 1 and r["draw_mean"] is not None:
            from shb.reports.render import number

            spread = f"{number(r['draw_mean'])} ± {number(r['draw_sd'])} ({r['draws']} draws)"
        rows.append({
            "model": r["model_id"], "dataset": r["dataset_id"], "format": r["format"], "ablation": r["ablation_id"],
            "metric": r["metric_id"], "heads": r["head_source"], "head_set": short_head_set(r["head_set"]), "k": r["k"],
            "decoding": r["decoding"], "judge": r["judge_id"],
            "baseline ASR [95% CI]": _with_interval(r["baseline_asr"], r["baseline_lo"], r["baseline_hi"],
                                                    None if one_n else r["baseline_n"], r["baseline_n_undetermined"]),
            "ablated ASR [95% CI]": _with_interval(r["ablated_asr"], r["ablated_lo"], r["ablated_hi"],
                                                   None if one_n else r["n"], r["n_undetermined"]),
            "change": r["change"], "draws: mean ± sd": spread, **({"n": r["n"]} if one_n else {})})
    out = pl.DataFrame(rows, infer_schema_length=None)
    if out["draws: mean ± sd"].null_count() == out.height:
        out = out.drop("draws: mean ± sd")
    return out


SETTINGS = ["head_source", "ablation_id", "format", "decoding", "judge_id"]
# Label columns a legend may name (what differs between the lines of a panel), before the specs' parts.
LINE_LABELS = [*SETTINGS, "metric_id", "max_new_tokens", "answer_prefix"]


def figures(frame: pl.DataFrame, across: str = "settings", specs: dict | None = None) -> list[tuple[str, bytes]]:
    """ASR against k with 95% Wilson intervals (k = 0: the row's baseline, shb.reports.baseline). A
    line is one unit and judge (shb.reports.figures.unit_lines: its legend names what differs between
    the lines of its panel, from the labels and, where those agree, the stored specs ``specs``:
    {unit id: spec}). ``across="settings"``: one figure per (model, dataset). ``across="models"``: one
    figure per dataset and setting, a line per model's unit, each with its own heads of that source
    (e.g. an ordinary and a head-dropout toy, each ablating its own Sahara heads). Interventions (no k)
    are left to ``shb report efficiency``, which places them against the parameters they edit."""
    from shb.reports import figures as fig
    from shb.reports.render import with_decoding_label

    frame = with_decoding_label(frame.filter(pl.col("head_source").is_not_null()
                                             & ~pl.col("head_source").str.starts_with("intervention")))
    panels = ["dataset_id", *SETTINGS] if across == "models" else ["model_id", "dataset_id"]
    labels = ["model_id", *LINE_LABELS] if across == "models" else LINE_LABELS
    out = []
    for panel, group in frame.group_by(panels, maintain_order=True):
        rows_of_panel = group.to_dicts()
        names, shared = fig.unit_lines(rows_of_panel, labels, specs)
        if across == "models":  # one setting per panel: what it is goes into the title
            shared = fig.varying_parts(rows_of_panel, [c for c in LINE_LABELS if c != "head_source"])[1]
        series: dict[str, list] = {}
        for key, rows in group.group_by(fig.LINE, maintain_order=True):
            points = {0: (0, r["baseline_asr"], r["baseline_lo"], r["baseline_hi"]) for r in rows.head(1).to_dicts()
                      if r["baseline_asr"] is not None}
            for r in rows.to_dicts():
                if r["ablated_asr"] is not None:   # None: every answer undetermined
                    points[r["k"]] = (r["k"], r["ablated_asr"], r["ablated_lo"], r["ablated_hi"])
            series[names[tuple(key)]] = list(points.values())
        if not series:
            continue
        if across == "models":
            named = dict(zip(panels, panel))
            title = (f"ASR against heads ablated, models side by side (95% Wilson intervals)\n{named['dataset_id']}"
                     f" · heads: {named['head_source']}\n{shared}")
            name = fig.slug("asr-by-k-models", *(named[c] for c in panels[:3]))
        else:
            model, dataset = panel
            title = f"ASR against heads ablated (95% Wilson intervals)\n{model} / {dataset}" + (
                f"\n{shared}" if shared else "")
            name = fig.slug("asr-by-k", model, dataset)
        out.append((name, fig.intervals(series, title, "heads ablated (k)", "ASR")))
    if not out:
        from shb.errors import UsageError

        raise UsageError("no head-set ASR to draw (only interventions); `shb report efficiency --format png` draws"
                         " those against the parameters they edit")
    return out


def outcome_table(frame: pl.DataFrame, short: bool = False) -> pl.DataFrame:
    """The four outcomes beside each ASR, one row per setting: each baseline once (k = 0) and each ablated
    row with ``ASR moved by``. Head set, k and the mark lead (a narrow table gives up trailing labels
    first; ``short``: long head sets abbreviated, for the terminal). Empty when no answer has an outcome."""
    labels = ["metric_id", "model_id", "dataset_id", "format", "ablation_id", "judge_id"]
    rows, seen = [], set()
    for r in frame.iter_rows(named=True):
        which = "ablated" if r["ablated_asr"] is not None else "baseline"
        base = r["unit_id"] if r["baseline_from"] == "same unit" else r["baseline_from"]
        if which == "ablated" and r["baseline_broken"] is not None and base not in seen:
            seen.add(base)
            rows.append({"head_set": "-", "k": 0, "ASR moved by": None, "asr": r["baseline_asr"],
                         **{o: r[f"baseline_{o}"] for o in OUTCOMES}, **{c: r[c] for c in labels}})
        if r[f"{which}_broken"] is not None:
            head_set = short_head_set(r["head_set"]) if short else r["head_set"]
            rows.append({"head_set": head_set if which == "ablated" else "-",
                         "k": r["k"] if which == "ablated" else 0, "ASR moved by": r["moved_by"],
                         "asr": r[f"{which}_asr"], **{o: r[f"{which}_{o}"] for o in OUTCOMES},
                         **{c: r[c] for c in labels}})
    schema = {"head_set": pl.String, "k": pl.Int64, "ASR moved by": pl.String, "asr": pl.Float64,
              **{o: pl.Float64 for o in OUTCOMES}, **{c: pl.String for c in labels}}
    return pl.DataFrame(rows, schema=schema)


def figure(frame: pl.DataFrame) -> list[tuple[str, bytes]]:
    """Stacked shares of refused / complied / undetermined / broken answers, baseline and ablated, one bar pair per row
    that has outcomes; the binary ASR drawn as a marker on each bar."""
    from shb.reports import figures as fig

    rows = [r for r in frame.iter_rows(named=True) if r["baseline_broken"] is not None or r["ablated_broken"] is not None]
    if not rows:
        from shb.errors import UsageError

        raise UsageError("no judged answers with outcomes (refused / complied / broken / undetermined) to draw: these answers were"
                         " judged by an older shb; re-run the asr metric into a new database (--db PATH)")
    bars = []
    # complied first: its right edge sits near the ASR marker (where nothing is undetermined; ASR is over
    # the determined answers, so the marker sits at complied / (1 - undetermined) of the bar otherwise)
    order = ["complied", "undetermined", "broken", "refused"]
    metric_of = {r["unit_id"]: r["metric_id"] for r in rows}   # a baseline from another unit is named by its metric
    for r in rows:
        cell = f"{r['model_id']} / {r['dataset_id']} / {r['judge_id']}"
        if r["baseline_broken"] is not None:
            unit = r["unit_id"] if r["baseline_from"] == "same unit" else r["baseline_from"].removeprefix("unit ")
            base = metric_of.get(unit, f"unit {unit}")
            bars.append((f"{cell}: {base} k=0", [r[f"baseline_{o}"] for o in order], r["baseline_asr"]))
        if r["ablated_broken"] is not None:
            bars.append((f"{cell}: {r['head_source']} {r['head_set']} k={r['k']}",
                         [r[f"ablated_{o}"] for o in order], r["ablated_asr"]))
    bars = list(dict((b[0], b) for b in bars).values())   # one k = 0 bar per cell
    return [("asr-outcomes", fig.stacked_shares(
        bars, order, "answers: complied / undetermined / broken / refused (ASR over determined answers marked)"))]
