"""Expand a suite into work units, give each a stable id, mark what the store holds, estimate cost.

A unit is one cell of models x datasets x ablations x metrics. Its id hashes everything that
changes its results and nothing that does not (device, batch size, strategy, the suite's labels),
so rerunning a suite, or another suite with the same cell, finds the finished work. No torch here.

What the id hashes (DESIGN.md section 9):
- the model: a weights fingerprint, tokenizer and chat template (shb.models.fingerprint), the
  dtype *resolved* for the device ("auto" is bfloat16 on cuda, float32 elsewhere, exactly as
  shb.models.resolve_dtype loads it) and the attention implementation;
- the formatted prompts, as their inputs: prompt content, format, system prompt, the paper's
  template text (format "template") and the model's chat template hash (format "chat"). The
  formatted text is a function of these, so no tokenizer is needed at plan time; ``shb run``
  stores the text it fed in ``formatted_prompts``;
- the ablation, the metric's parameters, the upstream unit (heads from another metric), and
  UNIT_ID_VERSION.
A fingerprint that cannot be known here (a hub id neither cached nor reachable) is hashed as
unknown and reported by ``notes``; ``shb run`` refuses such a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from shb import datasets as ds
from shb.baselines.fits import FIT_VERSION, HEAD_DEFAULTS, method_params
from shb.errors import UsageError
from shb.suite import Entry, Suite

UNIT_ID_VERSION = 2  # 2: weights fingerprint, tokenizer, chat template, resolved dtype, attention
# Metric keys that do not change results (the engine and the naive loop agree to 1e-5).
NON_RESULT_KEYS = {"id", "description", "models", "datasets", "ablations", "strategy", "batch_size"}
ABLATION_DEFAULTS = {"undifferentiated": {"epsilon": 1e-5, "site": "q"}, "scaling": {"epsilon": 1e-5},
                     "mean": {"site": "q"}, "zero": {}}
METRIC_DEFAULTS = {
    "ships": {},
    "ships_dataset": {"r": 1},
    "sahara": {"steps": 5, "score": "ships_dataset", "r": 1},
    "asr": {"judge": "keyword-paper", "decoding": {"mode": "greedy"}, "max_new_tokens": 128},
}
ASSUMED_PROMPT_TOKENS = 48      # for cost estimates when prompts are not tokenized at plan time
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
    unit_id: str
    model: Entry
    dataset: Entry
    ablation: Entry
    metric: Entry
    spec: dict = field(hash=False, compare=False)   # the resolved spec the id hashes
    n_prompts: int = 0
    status: str = "pending"                          # pending | done | failed | running (from the store)
    cost_forwards: int | None = None                 # forward passes of a full prompt
    cost_seconds: float | None = None                # estimated wall time on the plan's device
    cost_basis: str | None = None                    # how cost_seconds was estimated (measured rate or FLOPs)

    @property
    def label(self) -> str:
        return f"{self.model.id} / {self.dataset.id} / {self.ablation.id} / {self.metric.id}"


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


def fingerprints(suite: Suite) -> dict[str, dict]:
    from shb.models.fingerprint import fingerprint

    return {m.id: fingerprint(m.spec()) for m in suite.models}


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


def dataset_key(dataset: Entry, content: str) -> dict:
    fmt = dataset.get("format", "direct")
    key = {"kind": dataset.kind, "content": content, "format": fmt, "system": dataset.get("system")}
    if dataset.get("holdout"):  # which part of which split: recorded with the label (the content hash covers it)
        key["holdout"] = {**ds.HOLDOUT_DEFAULTS, **dataset.get("holdout")}
    if fmt == "template":  # the template's text is part of every formatted prompt
        key["template"] = hashlib.sha256(ds.PAPER_TEMPLATE.encode()).hexdigest()[:16]
    return key


def ablation_key(ablation: Entry) -> dict:
    return {"kind": ablation.kind, **ABLATION_DEFAULTS[ablation.kind],
            **{k: v for k, v in ablation.params.items() if k != "description"}}


def metric_key(metric: Entry, defaults: dict) -> dict:
    params = {k: v for k, v in metric.params.items() if k not in NON_RESULT_KEYS}
    key = {"kind": metric.kind, **METRIC_DEFAULTS.get(metric.kind, {}), **params}
    if metric.kind in ("asr", "utility"):  # random head sets are drawn with it
        key.setdefault("seed", defaults.get("seed", 0))
    return key


def fit_spec(suite, entry, model_entry, datasets: dict) -> dict:
    """What a fit's id hashes (shb.baselines.fits). ``datasets``: dataset id -> (content hash, size)."""
    fit = entry.get("fit") or {}
    by_id = {d.id: d for d in suite.datasets}
    models = {m.id: m for m in suite.models}
    spec = {"version": FIT_VERSION, "kind": entry.kind, "model": model_key(model_entry, suite.defaults),
            "params": method_params(entry), "max_new_tokens": fit.get("max_new_tokens", 32)}
    for key in ("harmful", "harmless"):
        ref = fit.get(key)
        spec[key] = dataset_key(by_id[ref], datasets[ref][0]) if ref else None
    ref = fit.get("reference")
    spec["reference"] = model_key(models[ref], suite.defaults) if ref else None
    return spec


def intervention_key(suite, entry, model_entry, datasets: dict) -> dict:
    """The part of a unit's spec that says which intervention it applies (content, not labels)."""
    if entry.kind == "heads":
        return {"kind": "heads", **HEAD_DEFAULTS, **method_params(entry)}
    if entry.kind == "points":  # declared edits, no fit: their content is the identity
        return {"kind": "points", **method_params(entry)}
    spec = fit_spec(suite, entry, model_entry, datasets)
    return {"kind": entry.kind, "fit_id": "f" + _hash(spec)[:15], "fit": spec}


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
                   fps: dict | None = None) -> dict[tuple[str, str], dict]:
    """{(kind, label): content} for every label a suite names: models, datasets, ablations, metrics,
    interventions and judges. One database holds one content per label (shb.run refuses a second),
    so reports never merge two contents under one name (an ablation "ua" at epsilon 1e-5 and one at
    0.5, a metric "harm" that screens and one that does not)."""
    fps = fps if fps is not None else fingerprints(suite)
    datasets = identities(suite, prompts)
    out = {("model", m.id): model_key(m, suite.defaults, device, fps[m.id]) for m in suite.models}
    out.update({("dataset", d.id): dataset_key(d, datasets[d.id][0]) for d in suite.datasets})
    out.update({("ablation", a.id): ablation_key(a) for a in suite.ablations})
    out.update({("metric", m.id): metric_key(m, suite.defaults) for m in suite.metrics})
    out.update({("intervention", i.id): {"kind": i.kind, **{k: v for k, v in i.params.items() if k != "description"}}
                for i in suite.interventions})
    out.update(judge_contents(suite))
    return out


def judge_contents(suite: Suite) -> dict[tuple[str, str], dict]:
    """{("judge", id): its configuration} over every metric; one id configured two ways in one suite
    (two classifier models under "classifier") is refused, naming both."""
    from shb.metrics.asr import judges_of

    out: dict[tuple[str, str], dict] = {}
    where: dict[str, int] = {}
    for i, metric in enumerate(suite.metrics):
        if metric.kind != "asr":   # utility's judges are part of its own metric content
            continue
        for judge in judges_of(metric.params):
            content = {"judge": judge}
            if judge == "classifier":
                content.update(model=metric.get("judge_model"), prompt=metric.get("judge_prompt", "harmbench"))
            previous = out.get(("judge", judge))
            if previous is not None and previous != content:
                raise UsageError(f"/metrics/{i}/judge: judge '{judge}' is configured as {content} here and as "
                                 f"{previous} in /metrics/{where[judge]}; one label names one judge: give the "
                                 "metrics one judge configuration, or split them into two suites and databases")
            out[("judge", judge)] = content
            where[judge] = i
    return out


def expand(suite: Suite, prompts: dict[str, list] | None = None, device: str | None = None,
           fps: dict | None = None) -> list[WorkUnit]:
    """All units of the suite in execution order: suite order, except that a metric whose heads come
    from another metric's result (asr on sahara or ships) runs after it.

    ``device`` resolves dtype "auto" (default: the suite's, guessed without torch when "auto")."""
    datasets = identities(suite, prompts)
    fps = fps if fps is not None else fingerprints(suite)
    model_keys = {m.id: model_key(m, suite.defaults, device, fps[m.id]) for m in suite.models}
    metrics = sorted(suite.metrics, key=lambda m: _upstream_metric(m, suite) is not None)  # stable
    units = []
    by_cell: dict[tuple, str] = {}
    for metric in metrics:
        upstream = _upstream_metric(metric, suite)
        for model in suite.models:
            if not _applies(metric, "models", model):
                continue
            for dataset in suite.datasets:
                if not _applies(metric, "datasets", dataset):
                    continue
                applied = metric.get("intervention")
                for ablation in suite.ablations:
                    if not _applies(metric, "ablations", ablation):
                        continue
                    if applied and (metric.id, model.id, dataset.id) in by_cell:
                        continue  # an intervention does not depend on the head-ablation kind: one unit
                    spec = {
                        "version": UNIT_ID_VERSION,
                        "model": model_keys[model.id],
                        "dataset": dataset_key(dataset, datasets[dataset.id][0]),
                        "ablation": ablation_key(ablation),
                        "metric": metric_key(metric, suite.defaults),
                    }
                    reads = _reads(metric, suite, datasets)
                    if reads:
                        spec["reads"] = reads
                    if applied:
                        # What is applied is the intervention's content (its fit id), not its label.
                        spec["ablation"] = {"kind": "none"}
                        spec["metric"].pop("intervention", None)
                        spec["intervention"] = intervention_key(suite, suite.intervention(applied), model, datasets)
                        by_cell[(metric.id, model.id, dataset.id)] = True
                    if upstream:
                        # The heads come from another unit's result: its id is part of this one's.
                        # heads_dataset: the heads chosen on another dataset (a holdout's select part)
                        source = by_cell.get((model.id, metric.get("heads_dataset", dataset.id), ablation.id, upstream))
                        if source is None:
                            raise UsageError(
                                f"metric '{metric.id}' takes its heads from metric '{upstream}', which does not run on "
                                f"model '{model.id}', dataset '{metric.get('heads_dataset', dataset.id)}', "
                                f"ablation '{ablation.id}': "
                                f"add that combination to '{upstream}' or restrict '{metric.id}' with its "
                                "models/datasets/ablations lists")
                        spec["upstream"] = source
                    unit_id = "u" + _hash(spec)[:15]
                    by_cell[(model.id, dataset.id, ablation.id, metric.id)] = unit_id
                    units.append(WorkUnit(unit_id, model, dataset, ablation, metric, spec, datasets[dataset.id][1]))
    return units


def _reads(metric: Entry, suite: Suite, datasets: dict) -> dict:
    """Datasets a metric reads besides its cell's (utility's and attention's benign prompts): their
    content keys its id."""
    if metric.kind == "attention":
        entries = {d.id: d for d in suite.datasets}
        ref = metric.get("benign")
        return {ref: dataset_key(entries[ref], datasets[ref][0])} if ref in entries else {}
    if metric.kind != "utility":
        return {}
    from shb.utility.spec import dataset_refs

    entries = {d.id: d for d in suite.datasets}
    return {ref: dataset_key(entries[ref], datasets[ref][0]) for ref in dataset_refs(metric.params) if ref in entries}


def _upstream_metric(metric: Entry, suite: Suite) -> str | None:
    """The id of the metric whose results choose this metric's heads, if any."""
    heads = metric.get("heads")
    if isinstance(heads, str) and heads.startswith("sahara:"):
        return heads.split(":", 1)[1]
    if heads == "ships_per_prompt":
        return next(m.id for m in suite.metrics if m.kind == "ships")
    return None


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
    """Forward passes of a full prompt the unit costs (as the paper's loop counts); None without geometry."""
    from shb.registry import METRICS, resolve

    if not geom or not geom.get("layers"):
        return None
    return resolve(METRICS, unit.metric.kind, "metric")().estimate(unit, geom)


def estimate(unit: WorkUnit, geom: dict | None, device: str = "cuda",
             measured: dict | None = None) -> tuple[int | None, float | None, str | None]:
    """(forward passes of a full prompt, seconds, basis) for the unit on ``device``.

    The seconds come from a measured rate where ``measured`` (``measured_rates``) has one for the
    unit's model content, device type and metric kind, otherwise from FLOPs (2 x parameters x
    ASSUMED_PROMPT_TOKENS per forward) at ASSUMED_FLOPS for the device and the dtype the unit runs."""
    forwards = forwards_of(unit, geom)
    if forwards is None:
        return None, None, None
    kind = device_type(device)
    rate = (measured or {}).get(rate_key(unit, kind))
    if rate is not None:
        per_forward, n_units = rate
        return forwards, forwards * per_forward, (f"measured: {per_forward * 1e3:.3g} ms/forward over {n_units} "
                                                  f"done {unit.metric.kind} unit(s) on {kind}")
    dtype = unit.spec["model"].get("dtype", "float32")
    flops = ASSUMED_FLOPS.get((kind, dtype))
    if flops is None or not geom.get("n_params"):
        return forwards, None, None
    seconds = 2.0 * geom["n_params"] * ASSUMED_PROMPT_TOKENS * forwards / flops
    return forwards, seconds, f"FLOPs: {dtype} on {kind} at {flops:.0e} FLOP/s (assumed)"


def device_type(device: str | None) -> str:
    """"cuda:1" -> "cuda"; None/"auto" guessed without torch (shb.models.guess_device)."""
    from shb.models import guess_device

    return guess_device(device).split(":", 1)[0]


def rate_key(unit: WorkUnit, kind: str) -> tuple[str, str, str]:
    """What a measured rate is specific to: the model's content (weights, dtype, attention), device type, metric kind."""
    return _hash(unit.spec["model"]), kind, unit.metric.kind


def measured_rates(store, units: list[WorkUnit], geoms: dict) -> dict[tuple, tuple[float, int]]:
    """{rate_key: (seconds per forward, units measured)} from this plan's done units: the seconds of
    their committed chunks (every run that worked on them) over their forward count, on the device
    of the run that finished them."""
    if store is None or not store.version():
        return {}
    rows = store.con.execute("""
        SELECT u.unit_id, r.device, (SELECT sum(c.seconds) FROM chunks c WHERE c.unit_id = u.unit_id)
        FROM units u LEFT JOIN runs r USING (run_id) WHERE u.status = 'done'""").fetchall()
    done = {unit_id: (device, seconds) for unit_id, device, seconds in rows if device and seconds}
    totals: dict[tuple, list] = {}
    for unit in units:
        if unit.unit_id not in done:
            continue
        forwards = forwards_of(unit, geoms.get(unit.model.id))
        if not forwards:
            continue
        device, seconds = done[unit.unit_id]
        device = device.removeprefix("ray:")  # a Ray run records the device it asked its workers for
        if device == "auto":  # each worker resolved it: the device is not known here
            continue
        total = totals.setdefault(rate_key(unit, device.split(":", 1)[0]), [0.0, 0, 0])
        total[0] += seconds
        total[1] += forwards
        total[2] += 1
    return {key: (seconds / forwards, n) for key, (seconds, forwards, n) in totals.items()}


def plan(suite: Suite, store=None, prompts=None, device: str | None = None, fps: dict | None = None) -> list[WorkUnit]:
    """Units with their status in ``store`` (if given) and cost estimates on ``device`` (default the suite's)."""
    from dataclasses import replace

    units = expand(suite, prompts, device, fps)
    status = store.unit_status() if store is not None else {}
    geoms = {m.id: geometry(m) for m in suite.models}
    measured = measured_rates(store, units, geoms)
    target = device or suite.defaults.get("device")
    out = []
    for unit in units:
        forwards, seconds, basis = estimate(unit, geoms[unit.model.id], target, measured)
        out.append(replace(unit, status=status.get(unit.unit_id, "pending"),
                           cost_forwards=forwards, cost_seconds=seconds, cost_basis=basis))
    return out
