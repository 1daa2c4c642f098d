"""``shb report ...``: one subcommand per report; each calls a pure query and a renderer.

Formats: ``table`` (rich), ``json``, ``csv`` (text on stdout), ``png`` (figures written to --out, a
directory, default ./figures) and ``html`` (one self-contained page: tables and base64 figures; to
--out, a file, or stdout). png and html need matplotlib (``pip install 'shb[figures]'``); html
without it still carries the tables. ``shb report html`` gathers every report into one page.

Options every report shares behave the same everywhere: ``--wide`` (added to each report command at
the end of this module) prints every column instead of fitting the terminal; ``--top`` is an
integer checked by click (``top_option``), where 0 is accepted only by reports that say what it means.
"""

from __future__ import annotations

import click

from shb.cli_common import DB_OPTION, friendly

ALL_FORMATS = ["table", "json", "csv", "png", "html"]
TEXT_FORMATS = ["table", "json", "csv"]


def format_option(formats=ALL_FORMATS):
    return click.option("--format", "fmt", type=click.Choice(formats), default="table", show_default=True)


def top_option(default: int, what: str, zero: str | None = None):
    """``--top N``: a positive integer; ``zero`` (e.g. "every head") allows 0 and says what it means."""
    help_text = what + (f"; 0: {zero}" if zero else "")
    return click.option("--top", default=default, show_default=True, type=click.IntRange(min=0 if zero else 1),
                        help=help_text)


def _wide() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get("shb_wide"))


# set while ``shb report html`` runs each report: emit() hands its sections here instead of printing
_COLLECTED: list | None = None


OUT_OPTION = click.option("--out", "out", default=None, metavar="PATH",
                          help="png: directory for the figures (default ./figures); html: file (default stdout)")


def emit(fmt: str, title: str, tables: list[tuple[str, object]], make_figures=None, out=None, csv_table: int = 0):
    """Render ``tables`` ((heading, polars frame) pairs) and, for png/html, ``make_figures()``'s PNGs."""
    import json

    from shb.reports.render import to_text

    if fmt == "table":
        for heading, frame in tables:
            to_text(frame, "table", title=heading, wide=_wide())
        return
    if fmt == "json":
        if len(tables) == 1:
            click.echo(to_text(tables[0][1], "json"))
        else:
            click.echo(json.dumps({heading: frame.to_dicts() for heading, frame in tables}, indent=1, default=str))
        return
    if fmt == "csv":
        click.echo(to_text(tables[csv_table][1], "csv"), nl=False)
        return
    if fmt == "png":
        from shb.reports import figures

        if make_figures is None:
            raise click.UsageError("this report has no figure; use --format table, json, csv or html")
        from shb.errors import UsageError

        try:
            made = make_figures()
        except UsageError as exc:
            # click prints this verbatim; shb's rich error printer would read "[figures]" as markup.
            raise click.UsageError(str(exc)) from None
        for path in figures.write(made, out or "figures"):
            click.echo(path)
        return
    # html
    from shb.errors import UsageError
    from shb.reports import html

    sections = list(tables)
    note = None
    if make_figures is not None:
        try:
            sections += [(name, png) for name, png in make_figures()]
        except UsageError as exc:  # matplotlib missing: the tables alone are still a report
            note = f"figures left out: {exc}"
    if _COLLECTED is not None:
        _COLLECTED.append({"title": title, "sections": sections, "note": note})
        return
    page = html.page(title, sections, note)
    if out:
        from shb.paths import write_out_file

        write_out_file(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        click.echo(out)
    else:
        click.echo(page, nl=False)


@click.group()
def report():
    """Tables and figures from the results database."""


@report.command("ships")
@DB_OPTION
@click.option("--model", default=None)
@click.option("--dataset", default=None)
@click.option("--ablation", default=None)
@top_option(10, "heads to list per model/dataset/ablation (a line says how many more there are)", zero="every head")
@format_option()
@OUT_OPTION
@friendly
def report_ships(db, model, dataset, ablation, top, fmt, out):
    """Heads ranked by mean Ships, with how often each is a prompt's top-1 / top-10 head.
    png/html: layer x head heatmaps (paper Fig. 4b, 7) and score histograms (Fig. 13)."""
    import polars as pl

    from shb.reports import ships
    from shb.store import Store

    with Store(db, read_only=True) as store:
        every = ships.ranking(store, model, dataset, ablation, None)
        frame = every.filter(pl.col("rank") <= top) if top else every
        grid = ships.heatmap(store, model, dataset, ablation)
        scores = ships.distribution(store, model, dataset, ablation) if fmt in ("png", "html") else None
        screened = ships.screening(store, model, dataset, ablation)
    mixed = ships.mixed_note(frame, "rankings")
    tables = [("heads ranked by mean Ships (KL, nats)" + (f" ({mixed})" if mixed else ""), frame)]
    warned = []
    if not screened.is_empty():
        from shb.reports import screen_recall

        # Screened sweeps score only each prompt's top candidates exactly: say how many, so a mean
        # over fewer prompts is read as what it is, and what the random sample says they missed.
        tables.append(("screened sweeps: heads verified exactly per prompt, top and sampled (heads rank by their"
                       " exact scores over every prompt, an unverified prompt counting 0); recall measured on the"
                       " sample: sampled heads above their prompt's 10th-best verified one (above_kth), top-10 heads"
                       " missed per prompt (missed_per, 95% bound missed_95) and the recall@10 it implies"
                       " (recall_est)", screened))
        warned = screen_recall.warnings(screened, "prompt")
    tables += _warning_section(fmt, warned)
    emit(fmt, "Ships: heads ranked by mean Ships (KL, nats)", tables, lambda: ships.figures(grid, scores), out)
    if fmt == "table" and frame.height < every.height:  # the compact default says what it left out
        groups = every.select(["model_id", "dataset_id", "ablation_id"]).n_unique()
        import textwrap

        from shb.reports.render import make_console

        click.echo(textwrap.fill(f"top {top} heads of each of {groups} model/dataset/ablation group(s);"
                                 f" {every.height - frame.height} more heads not listed (--top 0 lists every head)",
                                 width=make_console().width))
    if fmt == "table":
        from shb.reports.render import make_console

        console = make_console()
        for line in ships.heatmap_lines(grid, width=min(console.width, 120)):
            console.print(line, overflow="ignore", crop=False)
    _print_warnings(fmt, warned)  # last, where a reader of the terminal sees it


def _warning_section(fmt: str, lines: list[str]) -> list:
    """html: the screens' warnings as a section of the page (table: printed after the tables instead)."""
    if fmt != "html" or not lines:
        return []
    import polars as pl

    return [("warnings: the recall check of screened runs", pl.DataFrame({"warning": lines}))]


def _print_warnings(fmt: str, lines: list[str]) -> None:
    if fmt == "table":
        for line in lines:
            click.echo(line)


@report.command("sahara")
@DB_OPTION
@click.option("--model", default=None)
@click.option("--dataset", default=None)
@click.option("--ablation", default=None)
@click.option("--judge", default=None, help="judge id, e.g. keyword-paper")
@click.option("--what", type=click.Choice(["change", "heads"]), default="change", show_default=True,
              help="csv only: the ASR-change table or the chosen heads")
@format_option()
@OUT_OPTION
@friendly
def report_sahara(db, model, dataset, ablation, judge, what, fmt, out):
    """ASR change against the number of ablated heads (paper Tables 3, 5) and Sahara's chosen heads."""
    from shb.errors import UsageError
    from shb.reports import sahara
    from shb.reports.baseline import unit_specs
    from shb.store import Store

    found, missing, specs = {}, [], {}
    with Store(db, read_only=True) as store:
        long = None
        try:
            long = sahara.asr_by_k(store, model, dataset, ablation, judge)
            specs = unit_specs(store, long["unit_id"].to_list())
            found["change"] = ("ASR(k) - ASR(0) by heads ablated (rows: head source x ablation x dataset)",
                               sahara.change_table(long))
        except UsageError as exc:
            missing.append(exc)
        try:
            found["heads"] = ("heads chosen by Sahara, step by step",
                              sahara.chosen_heads(store, model, dataset, ablation))
        except UsageError as exc:
            missing.append(exc)
        screened = sahara.screening(store, model, dataset, ablation)
    warned = []
    if not screened.is_empty() and "heads" in found:
        from shb.reports import screen_recall

        found["screening"] = ("screened Sahara: candidates verified exactly per step, top M and sampled; steps whose"
                              " best verified candidate came from the sample (chosen_from_sample); recall measured on"
                              " the sample: sampled candidates above their step's 10th-best verified one (above_kth),"
                              " top-10 candidates missed per step (missed_per, 95% bound missed_95), the recall@10 it"
                              " implies (recall_est)", screened)
        warned = screen_recall.warnings(screened, "step")
    if not found:  # one problem per line: the ASR table's and the chosen heads' (often the same fix)
        messages = list(dict.fromkeys(str(exc) for exc in missing))
        raise UsageError("\n  ".join(messages))
    if fmt == "csv":
        if what not in found:
            raise missing[0]
        emit(fmt, "", [found[what]])
        return
    emit(fmt, "Sahara: ASR against heads ablated", list(found.values()) + _warning_section(fmt, warned),
         (lambda: sahara.figures(long, specs)) if long is not None else None, out)
    _print_warnings(fmt, warned)


@report.command("asr")
@DB_OPTION
@click.option("--model", default=None)
@click.option("--dataset", default=None)
@click.option("--ablation", default=None)
@click.option("--judge", default=None)
@format_option()
@OUT_OPTION
@click.option("--across", type=click.Choice(["settings", "models"]), default="settings", show_default=True,
              help="png/html: one figure per model with a line per setting, or one per setting with a line per "
                   "model (each model ablating its own heads of that source)")
@friendly
def report_asr(db, model, dataset, ablation, judge, fmt, out, across):
    """Baseline against ablated ASR by model, dataset, prompt format, ablation, decoding and judge.
    png/html: ASR against k with 95% Wilson intervals, and refused / complied / broken / undetermined as
    stacked shares. ASR is over the determined answers; the undetermined are counted beside it."""
    from shb.reports import asr
    from shb.reports.baseline import unit_specs
    from shb.store import Store

    with Store(db, read_only=True) as store:
        frame = asr.summary(store, model, dataset, ablation, judge)
        specs = unit_specs(store, frame["unit_id"].to_list())
    tables = [("ASR, baseline against ablated (95% Wilson intervals)", asr.for_table(frame) if fmt == "table" else frame)]
    outcomes = asr.outcome_table(frame, short=fmt == "table")
    if not outcomes.is_empty() and fmt in ("table", "html"):   # json and csv: the same columns are in the first table
        tables.append(("answers refused / complied / broken / undetermined beside ASR (the paper's ASR counts broken"
                       " answers as refusals; undetermined ones it leaves out)", outcomes))
    emit(fmt, "ASR: baseline (k = 0) against ablated", tables,
         lambda: asr.figures(frame, across, specs) + (asr.figure(frame) if not outcomes.is_empty() else []), out)


@report.command("utility")
@DB_OPTION
@click.option("--model", default=None)
@click.option("--part", type=click.Choice(["lm_eval", "over_refusal", "benign_loss"]), default=None)
@click.option("--task", default=None, help="lm-eval task, or the dataset id of benign prompts/texts")
@click.option("--ablation", default=None)
@format_option()
@OUT_OPTION
@friendly
def report_utility(db, model, part, task, ablation, fmt, out):
    """lm-eval accuracy, over-refusal and benign loss under each intervention, beside the unmodified model.
    png/html: each intervention's change, a panel per task and measure."""
    from shb.reports import utility
    from shb.store import Store

    with Store(db, read_only=True) as store:
        frame = utility.summary(store, model, part, task, ablation)
    table = ((f"utility: value (change against the unmodified model). {utility.caption(frame)}. Intervals, n "
              "and broken shares: --format json or csv", utility.for_table(frame)) if fmt == "table" else
             ("utility (95% Wilson interval for rates, mean +- 1.96 SE otherwise)", frame))
    emit(fmt, "utility: each intervention beside the unmodified model (k = 0)", [table],
         lambda: utility.figures(frame), out)


@report.command("overlap")
@DB_OPTION
@click.option("--metric", type=click.Choice(["ships", "ships_dataset", "sahara", "methods"]), default="ships",
              show_default=True, help="sahara: each Sahara search's ranking (chosen heads first); methods: Ships, "
                                      "generalized Ships, Sahara and RDSHA compared on one model, dataset and ablation")
@top_option(10, "k of the top-k head sets")
@click.option("--model", "models", multiple=True, help="repeatable; default: every model")
@click.option("--dataset", "datasets", multiple=True, help="repeatable; default: every dataset")
@click.option("--ablation", "ablations", multiple=True, help="repeatable; default: every ablation")
@format_option()
@OUT_OPTION
@friendly
def report_overlap(db, metric, top, models, datasets, ablations, fmt, out):
    """Do results share safety heads? Pairwise top-k intersection, Jaccard and Spearman (paper Fig. 5).
    Results are units: one model across datasets (--model M --dataset A --dataset B, e.g. languages),
    models on one dataset, or both. With --metric methods: do Ships, generalized Ships, Sahara and RDSHA
    pick the same heads?"""
    from shb.reports import overlap
    from shb.store import Store

    if metric == "methods":
        return _overlap_methods(db, top, models, datasets, ablations, fmt, out)
    with Store(db, read_only=True) as store:
        scores = overlap.scores(store, metric, models, datasets, ablations)
    pairs = overlap.pairwise(scores, top)
    shared = overlap.shared_heads(scores, top)
    emit(fmt, f"overlap of top-{top} heads ({metric})",
         [(f"pairwise overlap of top-{top} heads ({metric})", pairs),
          (f"heads in the top-{top} of two or more results", shared)],
         lambda: overlap.figure(pairs, metric, top), out)


@report.command("attention")
@DB_OPTION
@click.option("--model", default=None)
@click.option("--dataset", default=None)
@top_option(5, "tokens listed per head and prompt set")
@format_option()
@OUT_OPTION
@friendly
def report_attention(db, model, dataset, top, fmt, out):
    """Where safety heads look: the last position's attention over the prompt, harmful vs benign, beside a median head."""
    from shb.reports import attention
    from shb.store import Store

    with Store(db, read_only=True) as store:
        frame = attention.summary(store, model, dataset, top)
        tokens = attention.token_weights(store, model, dataset) if fmt in ("png", "html") else None
    emit(fmt, "attention of safety heads",
         [(f"top-{top} tokens by mean attention weight from the last position", frame)],
         lambda: attention.figure(tokens), out)


def _overlap_methods(db, top, models, datasets, ablations, fmt, out):
    from shb.reports import method_overlap as mo
    from shb.reports import overlap
    from shb.store import Store

    with Store(db, read_only=True) as store:
        model = mo.single(store, "model_id", models, "model", "--model")
        dataset = mo.single(store, "dataset_id", datasets, "dataset", "--dataset")
        ablation = mo.single(store, "ablation_id", ablations, "ablation", "--ablation",
                             "units WHERE metric_kind IN ('ships', 'ships_dataset', 'sahara')")
        scores = mo.scores(store, model, dataset, ablation)
    cell = f"{model} / {dataset} / {ablation}"
    pairs = overlap.pairwise(scores, top).rename({"result_a": "method_a", "result_b": "method_b"})
    emit(fmt, f"method overlap of top-{top} heads ({cell})",
         [(f"{mo.TITLE}: pairwise overlap of top-{top} heads ({cell})", pairs),
          (f"which layers each method's top-{top} favours", mo.layers(scores, top))],
         lambda: overlap.figure(pairs.rename({"method_a": "result_a", "method_b": "result_b"}), "methods", top,
                                label=f"{mo.TITLE}, {cell}"), out)


@report.command("efficiency")
@DB_OPTION
@click.option("--model", default=None)
@click.option("--dataset", default=None)
@click.option("--no-published", is_flag=True, help="leave out the paper's published rows")
@click.option("--one-axis", is_flag=True, help="png/html: draw published rows on the measured rows' axes "
              "(default: a panel of their own; they are another model)")
@format_option()
@OUT_OPTION
@friendly
def report_efficiency(db, model, dataset, no_published, one_axis, fmt, out):
    """Parameters modified (count, share) against ASR, measured here and as published."""
    from shb.reports import efficiency
    from shb.store import Store

    with Store(db, read_only=True) as store:
        frame = efficiency.report(store, model, dataset, include_published=not no_published)
    if fmt in ("json", "csv"):  # one frame for machines: `source` says measured or published
        emit(fmt, "efficiency: cost against ASR", [("cost against ASR", frame)], None, out)
        return
    # Published rows (another model, their own judge) stand in a table of their own, never ranked
    # among the measured ones.
    measured = frame.filter(frame["source"] == "measured")
    tables = [("cost against ASR, measured here (entries changed, values chosen, extra model runs)",
               efficiency.for_table(measured) if fmt == "table" and not measured.is_empty()
               else measured.drop([c for c in ("asr_pm",) if c in measured.columns]))]
    published = frame.filter(frame["source"] != "measured")
    if not published.is_empty():
        tables.append(("as published (Zhou et al. Table 1: Llama-2-7b-chat, their judge; not measured here)",
                       published.select([c for c in ("source", "model_id", "judge_id", "method", "share_pct",
                                                     "asr", "asr_pm") if c in published.columns])))
    emit(fmt, "efficiency: cost against ASR", tables, lambda: efficiency.figure(frame, one_axis=one_axis), out)


@report.command("runs")
@DB_OPTION
@click.option("--suite", default=None)
@click.option("--run", "run_id", default=None)
@format_option()
@OUT_OPTION
@friendly
def report_runs(db, suite, run_id, fmt, out):
    """Provenance of each run: units by status, chunks, seconds, versions, git commit, device."""
    from shb.reports import runs
    from shb.runlock import reap_dead_runs
    from shb.store import Store

    if fmt == "png":
        raise click.UsageError("report runs has no figure: it lists provenance (versions, commits, devices, "
                               "seconds), which reads as a table; use --format table, json, csv or html")
    reap_dead_runs(db)  # a run left 'running' by a killed process is shown (and stored) as 'killed'
    with Store(db, read_only=True) as store:
        frame = runs.runs(store, suite, run_id)
    emit(fmt, "runs", [("runs", frame)], None, out)


@report.command("html")
@DB_OPTION
@click.option("--out", "out", default=None, metavar="FILE", help="the page (default: stdout)")
@friendly
def report_html(db, out):
    """Every report of the database in one self-contained HTML page (tables sortable by a header
    click, figures inline, run provenance at the end); reports without data are listed as skipped."""
    global _COLLECTED
    from shb.errors import ShbError
    from shb.reports import html
    from shb.store import db_path

    ctx = click.get_current_context()
    names = [n for n in report.commands if n not in ("html", "runs")] + (["runs"] if "runs" in report.commands else [])
    invocations = []
    for name in names:
        invocations.append((name, []))
        if name == "overlap":  # and the methods compared in every cell that holds two or more of them
            invocations += [("overlap", ["--metric", "methods", "--model", m, "--dataset", d, "--ablation", a])
                            for m, d, a in _method_cells(db)]
    gathered = []
    for name, args in invocations:
        command = report.commands[name]
        formats = next((p.type.choices for p in command.params if p.name == "fmt"), ())
        if "html" not in formats:
            continue
        entry = {"name": name if not args else f"{name} {' '.join(args)}",
                 "title": (command.help or "").split("\n")[0].strip()}
        _COLLECTED = []
        try:
            sub = command.make_context(name, args + ["--format", "html"] + (["--db", db] if db else []), parent=ctx)
            with sub:
                sub.invoke(getattr(command.callback, "__wrapped__", command.callback), **sub.params)
            for part in _COLLECTED:
                entry.update(title=part["title"], note=part["note"])
                entry.setdefault("sections", []).extend(part["sections"])
            if not _COLLECTED:
                entry["skipped"] = "the report printed nothing"
        except (ShbError, click.ClickException) as exc:
            entry["skipped"] = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        finally:
            _COLLECTED = None
        gathered.append(entry)
    page = html.book(f"shb results: {db_path(db)}", gathered)
    if out:
        from shb.paths import write_out_file

        write_out_file(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        click.echo(out)
    else:
        click.echo(page, nl=False)


def _method_cells(db) -> list[tuple[str, str, str]]:
    """(model, dataset, ablation) cells where two or more head finders (Ships, generalized Ships, Sahara,
    RDSHA) ran: what `shb report overlap --metric methods` compares."""
    from shb.store import Store

    try:
        with Store(db, read_only=True) as store:
            return store.con.execute("""
                SELECT model_id, dataset_id, ablation_id FROM units
                WHERE metric_kind IN ('ships', 'ships_dataset', 'sahara', 'rdsha') AND status = 'done'
                GROUP BY ALL HAVING count(DISTINCT metric_kind) >= 2 ORDER BY ALL""").fetchall()
    except Exception:  # noqa: BLE001 - no database or no units table: the overlap entry says what is missing
        return []


def _add_wide(group: click.Group) -> None:
    """Give every report command ``--wide`` (read by emit through the click context, so a report
    function needs no parameter for it)."""
    def remember(ctx, _param, value):
        ctx.meta["shb_wide"] = value
        return value

    for command in group.commands.values():
        if command.name != "html" and not any(p.name == "wide" for p in command.params):
            command.params.append(click.Option(["--wide"], is_flag=True, expose_value=False, callback=remember,
                                               help="table: every column at full width, however wide"))


_add_wide(report)
