"""``shb report ...``: one subcommand per report; each calls a pure query and a renderer.

Formats: ``table`` (rich), ``json``, ``csv`` (text on stdout), ``png`` (figures written to --out, a
directory, default ./figures) and ``html`` (one self-contained page: tables and base64 figures; to
--out, a file, or stdout). png and html need matplotlib (``pip install 'shb[figures]'``); html
without it still carries the tables.
"""

from __future__ import annotations

import click

from shb.cli_common import DB_OPTION, friendly

ALL_FORMATS = ["table", "json", "csv", "png", "html"]
TEXT_FORMATS = ["table", "json", "csv"]


def format_option(formats=ALL_FORMATS):
    return click.option("--format", "fmt", type=click.Choice(formats), default="table", show_default=True)


OUT_OPTION = click.option("--out", "out", default=None, metavar="PATH",
                          help="png: directory for the figures (default ./figures); html: file (default stdout)")


def emit(fmt: str, title: str, tables: list[tuple[str, object]], make_figures=None, out=None, csv_table: int = 0):
    """Render ``tables`` ((heading, polars frame) pairs) and, for png/html, ``make_figures()``'s PNGs."""
    import json

    from shb.reports.render import to_text

    if fmt == "table":
        for heading, frame in tables:
            to_text(frame, "table", title=heading)
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
    page = html.page(title, sections, note)
    if out:
        from pathlib import Path

        Path(out).write_text(page, encoding="utf-8")
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
@click.option("--top", default=20, show_default=True, help="heads to list per model/dataset/ablation")
@format_option()
@OUT_OPTION
@friendly
def report_ships(db, model, dataset, ablation, top, fmt, out):
    """Heads ranked by mean Ships, with how often each is a prompt's top-1 / top-10 head.
    png/html: layer x head heatmaps (paper Fig. 4b, 7) and score histograms (Fig. 13)."""
    from shb.reports import ships
    from shb.store import Store

    with Store(db, read_only=True) as store:
        frame = ships.ranking(store, model, dataset, ablation, top)
        grid = ships.heatmap(store, model, dataset, ablation)
        scores = ships.distribution(store, model, dataset, ablation) if fmt in ("png", "html") else None
    emit(fmt, "Ships: heads ranked by mean Ships (KL, nats)",
         [("heads ranked by mean Ships (KL, nats)", frame)], lambda: ships.figures(grid, scores), out)
    if fmt == "table":
        for line in ships.render_heatmap_text(grid):
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
    from shb.store import Store

    found, missing = {}, []
    with Store(db, read_only=True) as store:
        long = None
        try:
            long = sahara.asr_by_k(store, model, dataset, ablation, judge)
            found["change"] = ("ASR(k) - ASR(0) by heads ablated (rows: head source x ablation x dataset)",
                               sahara.change_table(long))
        except UsageError as exc:
            missing.append(exc)
        try:
            found["heads"] = ("heads chosen by Sahara, step by step",
                              sahara.chosen_heads(store, model, dataset, ablation))
        except UsageError as exc:
            missing.append(exc)
    if not found:
        raise UsageError("; and ".join(str(exc) for exc in missing))
    if fmt == "csv":
        if what not in found:
            raise missing[0]
        emit(fmt, "", [found[what]])
        return
    emit(fmt, "Sahara: ASR against heads ablated", list(found.values()),
         (lambda: sahara.figures(long)) if long is not None else None, out)


@report.command("asr")
@DB_OPTION
@click.option("--model", default=None)
@click.option("--dataset", default=None)
@click.option("--ablation", default=None)
@click.option("--judge", default=None)
@format_option(["table", "json", "csv", "html"])
@OUT_OPTION
@friendly
def report_asr(db, model, dataset, ablation, judge, fmt, out):
    """Baseline against ablated ASR by model, dataset, prompt format, ablation, decoding and judge."""
    from shb.reports import asr
    from shb.store import Store

    with Store(db, read_only=True) as store:
        frame = asr.summary(store, model, dataset, ablation, judge)
    if fmt == "table":
        frame = asr.for_table(frame)
    emit(fmt, "ASR: baseline (k = 0) against ablated", [("ASR, baseline against ablated (95% Wilson intervals)", frame)],
         None, out)


@report.command("overlap")
@DB_OPTION
@click.option("--metric", type=click.Choice(["ships", "ships_dataset"]), default="ships", show_default=True)
@click.option("--top", default=10, show_default=True, help="k of the top-k head sets")
@click.option("--model", "models", multiple=True, help="repeatable; default: every model")
@click.option("--dataset", "datasets", multiple=True, help="repeatable; default: every dataset")
@click.option("--ablation", "ablations", multiple=True, help="repeatable; default: every ablation")
@format_option()
@OUT_OPTION
@friendly
def report_overlap(db, metric, top, models, datasets, ablations, fmt, out):
    """Do results share safety heads? Pairwise top-k intersection, Jaccard and Spearman (paper Fig. 5)."""
    from shb.reports import overlap
    from shb.store import Store

    with Store(db, read_only=True) as store:
        scores = overlap.scores(store, metric, models, datasets, ablations)
    pairs = overlap.pairwise(scores, top)
    shared = overlap.shared_heads(scores, top)
    emit(fmt, f"overlap of top-{top} heads ({metric})",
         [(f"pairwise overlap of top-{top} heads ({metric})", pairs),
          (f"heads in the top-{top} of two or more results", shared)],
         lambda: overlap.figure(pairs, metric, top), out)


@report.command("efficiency")
@DB_OPTION
@click.option("--model", default=None)
@click.option("--dataset", default=None)
@click.option("--no-published", is_flag=True, help="leave out the paper's published rows")
@format_option()
@OUT_OPTION
@friendly
def report_efficiency(db, model, dataset, no_published, fmt, out):
    """Parameters modified (count, share) against ASR, measured here and as published."""
    from shb.reports import efficiency
    from shb.store import Store

    with Store(db, read_only=True) as store:
        frame = efficiency.report(store, model, dataset, include_published=not no_published)
    emit(fmt, "efficiency: parameters modified against ASR",
         [("parameters modified against ASR (source says measured or published)", frame)],
         lambda: efficiency.figure(frame), out)


@report.command("runs")
@DB_OPTION
@click.option("--suite", default=None)
@click.option("--run", "run_id", default=None)
@format_option(["table", "json", "csv", "html"])
@OUT_OPTION
@friendly
def report_runs(db, suite, run_id, fmt, out):
    """Provenance of each run: units by status, chunks, seconds, versions, git commit, device."""
    from shb.reports import runs
    from shb.store import Store

    with Store(db, read_only=True) as store:
        frame = runs.runs(store, suite, run_id)
    emit(fmt, "runs", [("runs", frame)], None, out)
