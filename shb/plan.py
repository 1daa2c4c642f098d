"""Expand a suite into resolved work units, give each a stable id, mark what the store holds, estimate cost.

A unit is one cell of models x datasets x ablations x metrics. ``resolve`` works out, once per suite,
what every entry *is* (its content); ``expand`` puts each cell's parts together into one frozen
``WorkUnit`` whose ``spec`` is the whole content and whose id is its hash. Everything downstream reads
the unit: the runner loads its models from ``WorkUnit.loads``, fits are keyed by the same model keys,
stored labels come from the same resolution, resume compares ids, and reports read the stored spec
(``units.spec``). The id hashes everything that changes results and nothing that does not (device,
batch size, strategy, the suite's labels), so rerunning a suite, or another suite with the same cell,
finds the finished work. No torch here.

What the id hashes (docs/design.md, "One resolved unit"):
- the model: a weights fingerprint, tokenizer and chat template (shb.models.fingerprint), the
  dtype *resolved* for the device ("auto" is bfloat16 on cuda, float32 elsewhere, exactly as
  shb.models.resolve_dtype loads it) and the attention implementation;
- the formatted prompts, as their inputs: prompt content (which covers a split, a language, a seeded
  subset), format, system prompt, the paper's template text (format "template") and the model's chat
  template hash (format "chat"). The formatted text is a function of these, so no tokenizer is needed at
  plan time; ``shb run`` stores the text it fed in ``formatted_prompts``;
- the ablation; the metric's parameters after its kind's defaults, with the seed where the kind uses one
  (``Metric.identity``); the datasets it reads besides its own; the unit whose results it reads
  (``upstream``: Sahara's heads, per-prompt Ships, from the cell's dataset or ``heads_dataset``); an
  intervention's content (a fitted one by its fit id, which hashes the same model keys); UNIT_ID_VERSION.
A fingerprint that cannot be known here (a hub id neither cached nor reachable) is hashed as
unknown and reported by ``notes``; ``shb run`` refuses such a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from shb import datasets as ds
from shb.baselines.base import ASSUMED_PROMPT_TOKENS
from shb.baselines.fits import FIT_VERSION, HEAD_DEFAULTS, method_params
from shb.errors import UsageError
from shb.registry import metric as metric_kind
from shb.suite import Entry, Suite

UNIT_ID_VERSION = 2  # 2: weights fingerprint, tokenizer, chat template, resolved dtype, attention
ABLATION_DEFAULTS = {"undifferentiated": {"epsilon": 1e-5, "site": "q"}, "scaling": {"epsilon": 1e-5},
                     "mean": {"site": "q"}, "zero": {}}
# Dataset keys that choose which part of a source is read: recorded in the dataset's key (its content
# hash covers them too), so a label says which split or language a result was measured on.
DATASET_SELECTORS = ("holdout", "language")
# Sustained FLOP/s assumed for FLOP-based estimates, by (device type, dtype the suite runs): a modern
# datacentre GPU (bf16/fp16 tensor cores; float32 without TF32, PyTorch's matmul default) and a few
# CPU cores. Used only where the database has no measured rate for the model and device.
ASSUMED_FLOPS = {("cuda", "bfloat16"): 2.0e14, ("cuda", "float16"): 2.0e14, ("cuda", "float32"): 2.0e13,
                 ("cpu", "float32"): 1.0e11, ("cpu", "bfloat16"): 5.0e10, ("cpu", "float16"): 2.0e10}
ASSUMED_GPU_FLOPS = ASSUMED_FLOPS[("cuda", "bfloat16")]


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class WorkUnit:
    """One resolved unit: its labels (the suite entries, for people and for the rows it writes), its
    content (``spec``, what ``unit_id`` hashes) and how its models load (``loads``)."""

    unit_id: str
    model: Entry
    dataset: Entry
    ablation: Entry
    metric: Entry
    spec: dict = field(hash=False, compare=False)   # the resolved content the id hashes
    n_prompts: int = 0
    status: str = "pending"                          # pending | done | failed | running (from the store)
    cost_forwards: int | None = None                 # forward-pass equivalents of a full prompt (shb's work)
    cost_seconds: float | None = None                # estimated wall time on the plan's device
    cost_basis: str | None = None                    # how cost_seconds was estimated (measured rate or FLOPs)
    labels: frozenset = frozenset()                  # (kind, label) its rows carry besides model and dataset
    # model label -> ModelLoad (revision pinned to the fingerprinted commit, dtype as resolved for the
    # device): the unit's model and a fit's reference model
    loads: dict = field(default_factory=dict, hash=False, compare=False)
    # (harmful, harmless) prompts of the fit the unit's intervention needs, if any: what pricing it needs
    fit_prompts: tuple | None = field(default=None, hash=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.model.id} / {self.dataset.id} / {self.ablation.id} / {self.metric.id}"

    @property
    def upstream(self) -> str | None:
        """The id of the unit whose results this one reads (Sahara's heads, per-prompt Ships), if any."""
        return self.spec.get("upstream")


# Model keys that name where the weights are, or how they may be read, not what they are.
_MODEL_LOCATORS = {"description", "geometry", "dtype", "path", "revision", "allow_pickle", "attn_implementation",
                   "gguf_file", "fetch"}


def model_key(model: Entry, defaults: dict, device: str | None = None, fp: dict | None = None) -> dict:
    """What the model contributes to a unit id: content (fingerprint), resolved dtype, attention."""
    from shb.models import guess_device, resolve_dtype_name
    from shb.models.fingerprint import fingerprint, is_known

    fp = fp if fp is not None else fingerprint(model.spec())
    dtype = resolve_dtype_name(model.get("dtype", defaults.get("dtype", "float32")),
                               guess_device(device or defaults.get("device")))
    key = {"kind": model.kind, "dtype": dtype, "attn_implementation": model.get("attn_implementation", "default"),
           **{k: fp[k] for k in ("weights", "tokenizer", "chat_template")},
           **{k: v for k, v in model.params.items() if k not in _MODEL_LOCATORS and model.kind != "toy"}}
    if not is_known(fp):  # hashed by name until the content can be known (see notes)
        key.update(source=model.get("path"), revision=model.get("revision"))
    return key


@dataclass(frozen=True)
class ModelLoad:
    """How the runner loads a model so that it is the content its key names: a hub model at the very
    commit its fingerprint read (even if the branch moves meanwhile), in the dtype resolved for the
    device. ``fingerprint`` goes into the ``models`` row."""

    spec: dict = field(hash=False)
    fingerprint: dict = field(hash=False)


def load_spec(model: Entry, key: dict, fp: dict) -> ModelLoad:
    spec = {**model.spec(), "dtype": key["dtype"]}
    if fp.get("commit"):
        spec["revision"] = fp["commit"]
    return ModelLoad(spec, fp)


def fingerprints(suite: Suite) -> dict[str, dict]:
    from shb.models.fingerprint import fingerprint

    return {m.id: fingerprint(m.spec()) for m in suite.models}


def dataset_key(dataset: Entry, content: str) -> dict:
    fmt = dataset.get("format", "direct")
    key = {"kind": dataset.kind, "content": content, "format": fmt, "system": dataset.get("system")}
    for selector in DATASET_SELECTORS:  # which part of which split, which language: with the label
        if dataset.get(selector):
            key[selector] = {**ds.HOLDOUT_DEFAULTS, **dataset.get(selector)} if selector == "holdout" \
                else dataset.get(selector)
    if fmt == "template":  # the template's text is part of every formatted prompt
        key["template"] = hashlib.sha256(ds.PAPER_TEMPLATE.encode()).hexdigest()[:16]
    return key


def ablation_key(ablation: Entry) -> dict:
    return {"kind": ablation.kind, **ABLATION_DEFAULTS[ablation.kind],
            **{k: v for k, v in ablation.params.items() if k != "description"}}


def metric_key(metric: Entry, defaults: dict) -> dict:
    """The metric's part of a unit id: its kind's ``Metric.identity`` (defaults, seed where it matters)."""
    return metric_kind(metric.kind).identity(metric.params, defaults)


@dataclass(frozen=True)
class Resolution:
    """What every entry of a suite is, worked out once (for one device): model keys and how to load each
    model, dataset keys and sizes, ablation and metric keys. Units, fits and stored labels all read it."""

    suite: Suite
    models: dict        # model label -> model key
    loads: dict         # model label -> ModelLoad
    fingerprints: dict  # model label -> fingerprint
    datasets: dict      # dataset label -> dataset key
    sizes: dict         # dataset label -> number of prompts
    ablations: dict     # ablation label -> ablation key
    metrics: dict       # metric label -> metric key

    def fit_spec(self, entry: Entry, model_id: str) -> dict:
        """What a fit's id hashes (shb.baselines.fits): the model's key and the reference model's key as
        the units have them (dtype resolved for the same device), the fit datasets' keys, the method."""
        fit = entry.get("fit") or {}
        spec = {"version": FIT_VERSION, "kind": entry.kind, "model": self.models[model_id],
                "params": method_params(entry), "max_new_tokens": fit.get("max_new_tokens", 32)}
        for key in ("harmful", "harmless"):
            spec[key] = self.datasets[fit[key]] if fit.get(key) else None
        spec["reference"] = self.models[fit["reference"]] if fit.get("reference") else None
        return spec

    def intervention_key(self, entry: Entry, model_id: str) -> dict:
        """The part of a unit's spec that says which intervention it applies (content, not labels)."""
        if entry.kind == "heads":
            return {"kind": "heads", **HEAD_DEFAULTS, **method_params(entry)}
        if entry.kind == "points":  # declared edits, no fit: their content is the identity
            return {"kind": "points", **method_params(entry)}
        spec = self.fit_spec(entry, model_id)
        return {"kind": entry.kind, "fit_id": "f" + _hash(spec)[:15], "fit": spec}


def resolve(suite: Suite, prompts: dict[str, list] | None = None, device: str | None = None,
            fps: dict | None = None) -> Resolution:
    """The suite's content for ``device`` (default: the suite's; guessed without torch when "auto")."""
    fps = fps if fps is not None else fingerprints(suite)
    models = {m.id: model_key(m, suite.defaults, device, fps[m.id]) for m in suite.models}
    identity = identities(suite, prompts)
    return Resolution(
        suite=suite, models=models, fingerprints=fps,
        loads={m.id: load_spec(m, models[m.id], fps[m.id]) for m in suite.models},
        datasets={d.id: dataset_key(d, identity[d.id][0]) for d in suite.datasets},
        sizes={d.id: identity[d.id][1] for d in suite.datasets},
        ablations={a.id: ablation_key(a) for a in suite.ablations},
        metrics={m.id: metric_key(m, suite.defaults) for m in suite.metrics})


def notes(suite: Suite, device: str | None = None, fps: dict | None = None) -> list[str]:
    """What the plan could not pin down or had to assume, one line each (``shb plan`` prints them)."""
    from shb.models import guess_device
    from shb.models.fingerprint import is_known

    fps = fps if fps is not None else fingerprints(suite)
    out = []
    for model in suite.models:
        if not is_known(fps[model.id]):
            out.append(f"model '{model.id}': weights fingerprint unknown at plan time, its unit ids are provisional"
                       f" and `shb run` refuses it until it is known: {fps[model.id]['why']}")
        if model.get("dtype", suite.defaults.get("dtype", "float32")) == "auto" and device in (None, "auto") \
                and suite.defaults.get("device", "auto") == "auto":
            guess = guess_device(None)
            dtype = model_key(model, suite.defaults, None, fps[model.id])["dtype"]
            out.append(f"model '{model.id}': dtype 'auto' taken as {dtype} for device {guess} (guessed without torch;"
                       " `shb run` resolves the device with torch, `shb plan --device` overrides)")
    return out


def _applies(metric: Entry, section: str, entry: Entry) -> bool:
    wanted = metric.get(section)
    return wanted is None or entry.id in wanted


def load_prompts(suite: Suite) -> dict[str, list]:
    """Prompts of every dataset of the suite."""
    return {d.id: ds.load(d.spec()) for d in suite.datasets}


def identities(suite: Suite, prompts: dict[str, list] | None = None) -> dict[str, tuple[str, int]]:
    """(content hash, size) of every dataset; upstream benchmarks need no download (see datasets.identity)."""
    prompts = prompts or {}
    return {d.id: ds.identity(d.spec(), prompts.get(d.id)) for d in suite.datasets}


def label_contents(suite: Suite, prompts: dict[str, list] | None = None, device: str | None = None,
                   fps: dict | None = None, resolved: Resolution | None = None) -> dict[tuple[str, str], dict]:
    """{(kind, label): content} for every label a suite names: models, datasets, ablations, metrics,
    interventions and judges, from the resolution the units are built from. One database holds one
    content per label (shb.run refuses a second), so reports never merge two contents under one name (an
    ablation "ua" at epsilon 1e-5 and one at 0.5, a metric "harm" that screens and one that does not)."""
    r = resolved or resolve(suite, prompts, device, fps)
    out = {("model", m): key for m, key in r.models.items()}
    out.update({("dataset", d): key for d, key in r.datasets.items()})
    out.update({("ablation", a): key for a, key in r.ablations.items()})
    out.update({("metric", m): key for m, key in r.metrics.items()})
    out.update({("intervention", i.id): {"kind": i.kind, **{k: v for k, v in i.params.items() if k != "description"}}
                for i in suite.interventions})
    out.update(judge_contents(suite))
    return out


def judge_contents(suite: Suite) -> dict[tuple[str, str], dict]:
    """{("judge", id): its configuration} over every metric (``Metric.judge_labels``); one id configured two ways
    in one suite (two classifier models under "classifier") is refused, naming both."""
    out: dict[tuple[str, str], dict] = {}
    where: dict[str, int] = {}
    for i, metric in enumerate(suite.metrics):
        for judge, content in metric_kind(metric.kind).judge_labels(metric.params).items():
            previous = out.get(("judge", judge))
            if previous is not None and previous != content:
                raise UsageError(f"/metrics/{i}/judge: judge '{judge}' is configured as {content} here and as "
                                 f"{previous} in /metrics/{where[judge]}; one label names one judge: give the "
                                 "metrics one judge configuration, or split them into two suites and databases")
            out[("judge", judge)] = content
            where[judge] = i
    return out


def expand(suite: Suite, prompts: dict[str, list] | None = None, device: str | None = None,
           fps: dict | None = None, resolved: Resolution | None = None) -> list[WorkUnit]:
    """All units of the suite in execution order: suite order, except that a metric whose heads come
    from another metric's result (asr on sahara or ships) runs after it.

    ``device`` resolves dtype "auto" (default: the suite's, guessed without torch when "auto")."""
    r = resolved or resolve(suite, prompts, device, fps)
    kinds = {m.id: metric_kind(m.kind) for m in suite.metrics}
    upstreams = {m.id: kinds[m.id].upstream(m.params, suite.metrics) for m in suite.metrics}
    metrics = sorted(suite.metrics, key=lambda m: upstreams[m.id] is not None)  # stable
    units = []
    by_cell: dict[tuple, str] = {}
    for metric in metrics:
        kind, upstream = kinds[metric.id], upstreams[metric.id]
        applied = metric.get("intervention")
        reads = {ref: r.datasets[ref] for ref in kind.dataset_reads(metric.params) if ref in r.datasets}
        labels = {("metric", metric.id), *(("judge", j) for j in kind.judge_labels(metric.params))}
        if applied:
            labels.add(("intervention", applied))
        for model in suite.models:
            if not _applies(metric, "models", model):
                continue
            loads = {model.id: r.loads[model.id]}
            intervention, fit_prompts = None, None
            if applied:
                entry = suite.intervention(applied)
                # What is applied is the intervention's content (its fit id), not its label.
                intervention = r.intervention_key(entry, model.id)
                fit = entry.get("fit") or {}
                fit_prompts = ((r.sizes.get(fit.get("harmful"), 0), r.sizes.get(fit.get("harmless"), 0))
                               if "fit_id" in intervention else None)
                reference = (entry.get("fit") or {}).get("reference")
                if reference:
                    loads[reference] = r.loads[reference]
            for dataset in suite.datasets:
                if not _applies(metric, "datasets", dataset):
                    continue
                for ablation in suite.ablations:
                    if not _applies(metric, "ablations", ablation):
                        continue
                    if applied and (metric.id, model.id, dataset.id) in by_cell:
                        continue  # an intervention does not depend on the head-ablation kind: one unit
                    spec = {"version": UNIT_ID_VERSION, "model": r.models[model.id],
                            "dataset": r.datasets[dataset.id], "ablation": r.ablations[ablation.id],
                            "metric": dict(r.metrics[metric.id])}
                    if reads:
                        spec["reads"] = reads
                    if intervention is not None:
                        spec["ablation"] = {"kind": "none"}
                        spec["metric"].pop("intervention", None)
                        spec["intervention"] = intervention
                        by_cell[(metric.id, model.id, dataset.id)] = True
                    if upstream:
                        # The heads come from another unit's result: its id is part of this one's.
                        source_dataset = kind.upstream_dataset(metric.params, dataset.id)
                        source_ablation = kind.upstream_ablation(metric.params, ablation.id)
                        source = by_cell.get((model.id, source_dataset, source_ablation, upstream))
                        if source is None:
                            raise UsageError(
                                f"metric '{metric.id}' takes its heads from metric '{upstream}', which does not run on "
                                f"model '{model.id}', dataset '{source_dataset}', ablation '{source_ablation}': "
                                f"add that combination to '{upstream}' or restrict '{metric.id}' with its "
                                "models/datasets/ablations lists (or take its heads from another ablation with heads_ablation)")
                        spec["upstream"] = source
                        if source_ablation == ablation.id:
                            # heads from the cell's own ablation: the same unit as without the key
                            spec["metric"].pop("heads_ablation", None)
                    unit_id = "u" + _hash(spec)[:15]
                    by_cell[(model.id, dataset.id, ablation.id, metric.id)] = unit_id
                    units.append(WorkUnit(unit_id, model, dataset, ablation, metric, spec, r.sizes[dataset.id],
                                          labels=frozenset(labels | {("ablation", ablation.id)}), loads=dict(loads),
                                          fit_prompts=fit_prompts))
    return units


def geometry(model: Entry) -> dict | None:
    """Layers, heads and parameter count from config.json on disk, or the suite's ``geometry`` hint."""
    from shb import models

    if model.kind == "toy":
        config = _toy_config()
    elif model.get("gguf_file") or model.get("fetch"):
        from shb.models import gguf

        found = gguf.geometry(model.spec())
        if found:
            return found
        config = None
    else:
        config = models.config_dict(model.get("path"), model.get("revision"))
    if config:
        return models.geometry_from_config(config)
    hint = model.get("geometry")
    if hint:
        return {"layers": hint["layers"], "heads": hint["heads"], "hidden": None, "n_params": hint.get("params")}
    return None


def _toy_config() -> dict | None:
    try:
        from shb.models import toy

        return toy.config_dict() if hasattr(toy, "config_dict") else None
    except ImportError:
        return None


def forwards_of(unit: WorkUnit, geom: dict | None) -> int | None:
    """Forward-pass equivalents of a full prompt the unit costs as shb runs it (a pass that starts at layer l
    of L counts (L - l) / L); None without geometry."""
    if not geom or not geom.get("layers"):
        return None
    return metric_kind(unit.metric.kind).estimate(unit, geom)


def estimate(unit: WorkUnit, geom: dict | None, device: str = "cuda",
             measured: dict | None = None) -> tuple[int | None, float | None, str | None]:
    """(forward-pass equivalents of a full prompt, seconds, basis) for the unit on ``device``.

    The seconds come from a measured rate where ``measured`` (``measured_rates``) has one for the
    unit's model content, device type and metric kind, else for the kinds of its cost class, otherwise
    from FLOPs (2 x parameters x ASSUMED_PROMPT_TOKENS per forward) at ASSUMED_FLOPS for the device and
    the dtype the unit runs."""
    forwards = forwards_of(unit, geom)
    if forwards is None:
        return None, None, None
    per_forward, basis = _rate(unit, geom, device, measured, unit.metric.kind,
                               metric_kind(unit.metric.kind).cost_class)
    return forwards, (None if per_forward is None else forwards * per_forward), basis


def estimate_fit(unit: WorkUnit, geom: dict | None, device: str = "cuda",
                 measured: dict | None = None) -> tuple[float | None, float | None, str | None]:
    """(forward-pass equivalents, seconds, basis) of the fit the unit's intervention needs (the method's
    ``fit_work``, shb.baselines.fits), each cost class's work (passes over given text: ``forward``;
    greedy answers: ``generate``) priced at that class's rate on the model, as units are. (None, None,
    None) for a unit without a fit."""
    from shb.baselines.fits import fit_work

    key = unit.spec.get("intervention") or {}
    if "fit_id" not in key or not unit.fit_prompts or not geom or not geom.get("layers"):
        return None, None, None
    fit = key["fit"]
    work = fit_work(key["kind"], fit.get("params") or {}, *unit.fit_prompts, geom["layers"],
                    fit.get("max_new_tokens", 32))
    seconds, bases = 0.0, []
    for cost_class, forwards in work.items():
        if not forwards:
            continue
        per_forward, basis = _rate(unit, geom, device, measured, None, cost_class)
        seconds = None if seconds is None or per_forward is None else seconds + forwards * per_forward
        bases.append(f"{forwards:.0f} {cost_class} at {basis}")
    return sum(work.values()), seconds, "; ".join(bases)


def _rate(unit: WorkUnit, geom: dict, device: str | None, measured: dict | None, kind: str | None,
          cost_class: str) -> tuple[float | None, str | None]:
    """(seconds per forward-pass equivalent, basis): measured for ``kind`` on the unit's model content and
    device type, else over the measured kinds of ``cost_class``, else from assumed FLOP/s."""
    device_kind = device_type(device)
    model = _hash(unit.spec["model"])
    rate = (measured or {}).get((model, device_kind, kind)) if kind else None
    if rate is not None:
        per_forward, n_units = rate
        return per_forward, (f"measured: {per_forward * 1e3:.3g} ms/forward over {n_units} done {kind} unit(s) on "
                             f"{device_kind}")
    alike = [(k[2], r) for k, r in (measured or {}).items()
             if k[:2] == (model, device_kind) and metric_kind(k[2]).cost_class == cost_class]
    if alike:
        units_seen = sum(n for _, (_, n) in alike)
        per_forward = sum(r * n for _, (r, n) in alike) / units_seen
        kinds = "/".join(sorted(k for k, _ in alike))
        return per_forward, (f"measured: {per_forward * 1e3:.3g} ms/forward over {units_seen} done {kinds} unit(s) "
                             f"on {device_kind} ({cost_class} class)")
    dtype = unit.spec["model"].get("dtype", "float32")
    flops = ASSUMED_FLOPS.get((device_kind, dtype))
    if flops is None or not geom.get("n_params"):
        return None, None
    return (2.0 * geom["n_params"] * ASSUMED_PROMPT_TOKENS / flops,
            f"FLOPs: {dtype} on {device_kind} at {flops:.0e} FLOP/s (assumed)")


def device_type(device: str | None) -> str:
    """"cuda:1" -> "cuda"; None/"auto" guessed without torch (shb.models.guess_device)."""
    from shb.models import guess_device

    return guess_device(device).split(":", 1)[0]


def rate_key(unit: WorkUnit, kind: str) -> tuple[str, str, str]:
    """What a measured rate is specific to: the model's content (weights, dtype, attention), device type, metric kind."""
    return _hash(unit.spec["model"]), kind, unit.metric.kind


def measured_rates(store, units: list[WorkUnit], geoms: dict) -> dict[tuple, tuple[float, int]]:
    """{rate_key: (seconds per forward, units measured)} from the database's done units: the seconds of
    their committed chunks (every run that worked on them) over their forward-pass equivalents, on the
    device of the run that finished them (a ``fit`` chunk left out: a fit is priced on its own, by
    ``estimate_fit``, and only the first unit that needs it pays). Every done unit of the same model content counts, whatever
    suite ran it: its work is rebuilt from what the database stores (its spec, its dataset's prompt
    count, its model's geometry), as this plan's units are priced."""
    if store is None or not store.version():
        return {}
    rows = store.con.execute("""
        SELECT u.unit_id, u.run_id, r.device, u.spec, u.metric_kind, m.n_layers, m.n_heads, m.n_params,
               (SELECT count(*) FROM prompts p WHERE p.dataset_id = u.dataset_id),
               (SELECT sum(c.seconds) FROM chunks c WHERE c.unit_id = u.unit_id AND c.chunk <> 'fit')
        FROM units u LEFT JOIN runs r USING (run_id) LEFT JOIN models m USING (model_id)
        WHERE u.status = 'done' ORDER BY u.updated_at, u.unit_id""").fetchall()
    planned = {u.unit_id: u for u in units}
    totals: dict[tuple, list] = {}
    answered = set()  # (run, key): the unmodified answers a run computed once, for its first unit that asked
    for unit_id, run_id, device, spec, kind, layers, heads, n_params, n_prompts, seconds in rows:
        if not device or not seconds:
            continue
        device = device.removeprefix("ray:")  # a Ray run records the device it asked its workers for
        if device == "auto":  # each worker resolved it: the device is not known here
            continue
        unit = planned.get(unit_id)
        if unit is not None:
            work = forwards_of(unit, geoms.get(unit.model.id))
        else:
            unit, work = _stored_unit(unit_id, spec, kind, n_prompts), None
            if unit is not None and layers and heads:
                try:
                    work = forwards_of(unit, {"layers": layers, "heads": heads, "n_params": n_params})
                except Exception:  # noqa: BLE001 - a unit an older shb wrote, in a shape this one cannot price
                    work = None
        try:
            shared = metric_kind(unit.metric.kind).unmodified_work(unit) if work else None
        except Exception:  # noqa: BLE001 - a spec an older shb wrote: priced as it ran then, without reuse
            shared = None
        if shared is not None:
            if (run_id, shared[0]) in answered:  # this unit's took no time: its work without them
                work -= shared[1]
            answered.add((run_id, shared[0]))
        if work is None or work <= 0:
            continue
        total = totals.setdefault(rate_key(unit, device.split(":", 1)[0]), [0.0, 0, 0])
        total[0] += seconds
        total[1] += work
        total[2] += 1
    return {key: (seconds / work, n) for key, (seconds, work, n) in totals.items()}


def _stored_unit(unit_id: str, spec, kind: str, n_prompts: int) -> WorkUnit | None:
    """A done unit of another suite, rebuilt from its stored spec: enough to price it (``forwards_of``)."""
    try:
        spec = json.loads(spec) if isinstance(spec, str) else spec
        metric = {k: v for k, v in spec["metric"].items() if k != "kind"}
        spec["model"]  # noqa: B018 - the rate key needs it
    except (TypeError, KeyError, ValueError):
        return None
    if not n_prompts:
        return None
    blank = Entry("model", "", "", {})
    return WorkUnit(unit_id=unit_id, model=blank, dataset=blank, ablation=blank,
                    metric=Entry("metric", "", kind, metric), spec=spec, n_prompts=n_prompts)


def plan(suite: Suite, store=None, prompts=None, device: str | None = None, fps: dict | None = None) -> list[WorkUnit]:
    """Units with their status in ``store`` (if given) and cost estimates on ``device`` (default the suite's)."""
    from dataclasses import replace

    units = expand(suite, prompts, device, fps)
    status = store.unit_status() if store is not None else {}
    geoms = {m.id: geometry(m) for m in suite.models}
    measured = measured_rates(store, units, geoms)
    target = device or suite.defaults.get("device")
    fits_done, fits_priced = _stored_fits(store), set()
    answered: dict[str, str] = {}   # unmodified answers a pending unit computes: key -> that unit's label
    out = []
    for unit in units:
        forwards, seconds, basis = estimate(unit, geoms[unit.model.id], target, measured)
        unit_status = status.get(unit.unit_id, "pending")
        shared = metric_kind(unit.metric.kind).unmodified_work(unit) if unit_status != "done" else None
        if shared is not None and forwards is not None:
            key, work = shared
            if key in answered:  # a run computes them once (UnitContext.unmodified_answers)
                if seconds is not None and forwards:
                    seconds = seconds * max(forwards - work, 0) / forwards
                forwards = max(forwards - work, 0)
                basis = f"{basis}; its k = 0 answers are {answered[key]}'s"
            else:
                answered[key] = unit.metric.id
        fit_id = (unit.spec.get("intervention") or {}).get("fit_id")
        if unit_status != "done" and fit_id and fit_id not in fits_done | fits_priced:
            # the first unit that needs a fit not yet stored runs it (the others read it)
            fit_forwards, fit_seconds, fit_basis = estimate_fit(unit, geoms[unit.model.id], target, measured)
            if fit_forwards is not None and forwards is not None:
                fits_priced.add(fit_id)
                forwards = int(round(forwards + fit_forwards))
                seconds = None if seconds is None or fit_seconds is None else seconds + fit_seconds
                basis = f"{basis}; its fit {fit_id}: {fit_basis}"
        out.append(replace(unit, status=unit_status, cost_forwards=forwards, cost_seconds=seconds, cost_basis=basis))
    return out


def _stored_fits(store) -> set[str]:
    """The fit ids the database holds (their units only read them)."""
    if store is None or not store.version():
        return set()
    try:
        return {row[0] for row in store.con.execute("SELECT fit_id FROM fits").fetchall()}
    except Exception:  # noqa: BLE001 - a database from before fits: none stored
        return set()
