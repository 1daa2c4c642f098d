"""``utility``: what an intervention costs the model's ordinary ability, beside the unmodified model.

Zhou et al. 2025 (Sec. 4.3, Fig. 6b) check that ablating safety heads keeps zero-shot accuracy on
BoolQ, RTE, WinoGrande, ARC-Challenge and OpenBookQA (lm-evaluation-harness). For every head-set
size k of the unit (``heads``/``k`` as for ``asr``; k = 0, the unmodified model, always) the
intervention that ``shb.utility.intervention.intervention_for`` returns is applied and any of three
parts runs under it:

- ``lm_eval``: lm-evaluation-harness tasks (``shb.utility.lmeval``), one row per document and metric;
- ``over_refusal``: answers to benign prompts (a dataset of the suite) generated with
  ``shb.generate`` and judged with ASR's keyword judges; a row per answer, value 1 = refused;
- ``benign_loss``: mean next-token NLL of each text of a suite dataset (``shb.utility.loss``).

Rows go to ``utility_docs``; the ``utility`` view aggregates them. Chunks: ``k000-lm-00`` (one
lm-eval task), ``k000-refusal-p0000-0031`` (a range of benign prompts), ``k000-loss``; a fitted
intervention adds ``fit`` first, which every other chunk waits for.
"""

from __future__ import annotations

import json

from shb import datasets as ds
from shb.baselines.base import answers_work
from shb.baselines.fits import fit_chunk
from shb.errors import ShbError, UsageError
from shb.generate import generate, normalize_decoding
from shb.judges import get as get_judge
from shb.metrics import heads as heads_module
from shb.metrics.asr import AppliesHeadsOrFit
from shb.metrics.base import chunk_range, range_chunks
from shb.utility import lmeval
from shb.utility import spec as uspec
from shb.utility.intervention import NoIntervention, intervention_for
from shb.utility.loss import text_losses

CHUNK_PROMPTS = 32
NOMINAL_TASK_DOCS = 1000       # plan-time guess of an lm-eval task's size (unknown without lm-eval)
NOMINAL_CHOICES = 4


def _over_refusal_work(unit, cfg: dict) -> int:
    """Forward-pass equivalents of one k's over-refusal answers (the cell's size stands in for the
    benign set's, which the plan does not read)."""
    return int(answers_work(unit.n_prompts, cfg.get("max_new_tokens", uspec.DEFAULT_MAX_NEW_TOKENS)))


class UtilityMetric(AppliesHeadsOrFit):
    kind = "utility"
    schema = uspec.SCHEMA

    def dataset_reads(self, params: dict) -> list[str]:
        return uspec.dataset_refs(params)

    def anchor_paths(self, metric: dict, anchored) -> None:
        tasks = metric["lm_eval"].get("tasks") if isinstance(metric.get("lm_eval"), dict) else None
        if isinstance(tasks, list):  # a task given as a .yaml file; registry names stay as they are
            metric["lm_eval"]["tasks"] = [anchored(t) if isinstance(t, str) and t.endswith((".yaml", ".yml")) else t
                                          for t in tasks]

    def problems(self, i: int, metric: dict, data: dict, ids: dict) -> list[str]:
        problems = heads_module.source_problems(i, metric, data) + uspec.problems(i, metric, ids.get("datasets"))
        target = metric.get("intervention")
        if isinstance(target, str) and target not in (ids.get("interventions") or {}):
            problems.append(f"/metrics/{i}/intervention: no intervention with id '{target}' in this suite")
        return problems

    def estimate(self, unit, geometry: dict) -> int:
        params = unit.spec["metric"]
        per_k = 0
        if params.get("lm_eval"):
            lm_eval = params["lm_eval"]
            docs = lm_eval.get("limit") or NOMINAL_TASK_DOCS
            per_k += len(lm_eval.get("tasks", [])) * docs * NOMINAL_CHOICES
        if params.get("over_refusal"):
            per_k += _over_refusal_work(unit, params["over_refusal"])
        if params.get("benign_loss"):
            per_k += unit.n_prompts
        return per_k * len(uspec.ks(params))

    def unmodified_work(self, unit) -> tuple[str, int] | None:
        """The k = 0 over-refusal answers (benign loss and lm-eval are not shared: cheap, or lm-eval's)."""
        params = unit.spec["metric"]
        cfg = params.get("over_refusal")
        if not cfg:
            return None
        key = {"model": unit.spec["model"], "over_refusal": (unit.spec.get("reads") or {}).get(cfg.get("dataset")),
               "decoding": cfg.get("decoding"),
               "max_new_tokens": cfg.get("max_new_tokens", uspec.DEFAULT_MAX_NEW_TOKENS)}
        return json.dumps(key, sort_keys=True, default=str), _over_refusal_work(unit, cfg)

    # -- chunks ------------------------------------------------------------------------------------
    def chunks(self, unit, ctx) -> list[str]:
        params = ctx.metric
        if heads_module.per_prompt(params.get("heads")):
            raise UsageError(f"metric '{unit.metric.id}': utility needs one head set, not ships_per_prompt")
        if params.get("lm_eval"):
            lmeval.require()  # before any work: a missing extra is the error to see first
        fitted = "fit_id" in (unit.spec.get("intervention") or {})
        out = ["fit"] if fitted else []  # the baseline's fit first (a no-op when another unit stored it)
        for k in uspec.ks(params):
            for i, _ in enumerate((params.get("lm_eval") or {}).get("tasks", [])):
                out.append(f"k{k:03d}-lm-{i:02d}")
            if params.get("over_refusal"):
                n = len(self._dataset(unit, ctx, params["over_refusal"]["dataset"])[0])
                out += range_chunks(f"k{k:03d}-refusal", n, CHUNK_PROMPTS)
            if params.get("benign_loss"):
                out.append(f"k{k:03d}-loss")
        return out


    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        if chunk == "fit":
            return fit_chunk(unit, ctx)
        k = int(chunk[1:4])
        part = chunk.split("-")[1]
        intervention = intervention_for(unit, ctx, k)
        base = {**ctx.base_row(), "metric_id": ctx.ids["metric_id"], "k": k,
                "head_source": _head_source(unit.metric.params),
                "heads": list(intervention.identity().get("heads", [])), "intervention": intervention.identity(),
                "intervention_kind": intervention.kind, "judge_id": "", "judge_hash": None, "sample_index": 0,
                "lm_eval_version": None, "task_hash": None, "num_fewshot": None, "weight": 1.0}
        if part == "lm":
            rows = self._lm_eval(unit, ctx, int(chunk.rsplit("-", 1)[1]), intervention, base)
        elif part == "refusal":
            rows = self._over_refusal(unit, ctx, *chunk_range(chunk), intervention, base)
        elif part == "loss":
            rows = self._benign_loss(unit, ctx, intervention, base)
        else:
            raise ShbError(f"unit {unit.unit_id}: unknown utility chunk '{chunk}'")
        return {"utility_docs": rows}

    # -- parts -------------------------------------------------------------------------------------
    def _lm_eval(self, unit, ctx, index, intervention, base):
        cfg = ctx.metric["lm_eval"]
        tasks = list(cfg["tasks"])
        docs, seed = cfg.get("docs", 48), ctx.seed
        names, include, registry = ctx.cached(("utility-tasks", tuple(tasks), docs, seed),
                                              lambda: lmeval.resolve_tasks(tasks, docs=docs, seed=seed))
        manager = ctx.cached(("lm-eval-tasks", tuple(include), registry), lambda: lmeval.task_manager(include, registry))
        batch = ctx.batch_size if isinstance(ctx.batch_size, int) else (32 if ctx.device.startswith("cuda") else 16)
        wrapper = ctx.cached(("lm-eval-model", ctx.ids["model_id"], batch), lambda: lmeval.hflm(ctx.lm, batch))
        run = lmeval.run_task(ctx.lm, wrapper, manager, tasks[index], names[index], intervention,
                              num_fewshot=cfg.get("num_fewshot", 0), limit=cfg.get("limit"),
                              apply_chat_template=cfg.get("apply_chat_template", False))
        return [{**base, "part": "lm_eval", "task": d.task, "measure": d.measure, "doc_id": d.doc_id,
                 "value": d.value, "lm_eval_version": run.lm_eval_version, "task_hash": run.task_hash[d.task],
                 "num_fewshot": run.num_fewshot.get(d.task), "detail": {**d.detail, "requested": run.requested}}
                for d in run.docs]

    def _over_refusal(self, unit, ctx, lo, hi, intervention, base):
        cfg = ctx.metric["over_refusal"]
        prompts, formatted = self._dataset(unit, ctx, cfg["dataset"])
        decoding = normalize_decoding(cfg.get("decoding"))
        size = ctx.batch_size if isinstance(ctx.batch_size, int) else (64 if ctx.device.startswith("cuda") else 16)
        config = {"decoding": decoding, "max_new_tokens": cfg.get("max_new_tokens", uspec.DEFAULT_MAX_NEW_TOKENS),
                  "batch_size": size, "answer_prefix": None, "first_index": lo}
        progress = ctx.advance_fn(f"  benign answers k={base['k']}", total=(hi - lo) * decoding["n"])

        def generate_answers():
            with intervention.applied(ctx.lm):
                return generate(ctx.lm, formatted[lo:hi], **config, progress=progress)

        if isinstance(intervention, NoIntervention):  # k = 0: the same answers in every utility unit
            generations = ctx.unmodified_answers(formatted[lo:hi], config, generate_answers, progress)
        else:
            generations = generate_answers()
        rows = []
        for judge_id in uspec.judges(ctx.metric):
            judge = ctx.cached(("judge", judge_id), lambda j=judge_id: get_judge(j))
            verdicts = judge.judge([prompts[g.prompt_index].text for g in generations], [g.text for g in generations],
                                   [formatted[g.prompt_index] for g in generations])
            for g, verdict in zip(generations, verdicts):
                rows.append({**base, "part": "over_refusal", "task": cfg["dataset"], "measure": "refusal",
                             "judge_id": judge.id, "judge_hash": judge.config_hash,
                             "doc_id": prompts[g.prompt_index].prompt_id, "sample_index": g.sample_index,
                             "value": 0.0 if verdict.harmful else 1.0,   # a keyword judge's "harmful" = it answered
                             "detail": {"text": g.text, "n_tokens": g.n_tokens, "finish_reason": g.finish_reason,
                                        "raw": verdict.raw, "decoding": decoding, "outcome": verdict.outcome,
                                        "outcome_rule": verdict.outcome_rule}})
        return rows

    def _benign_loss(self, unit, ctx, intervention, base):
        ref = ctx.metric["benign_loss"]["dataset"]
        prompts, formatted = self._dataset(unit, ctx, ref)
        size = ctx.batch_size if isinstance(ctx.batch_size, int) else 8
        with intervention.applied(ctx.lm):
            losses = text_losses(ctx.lm, formatted, batch_size=size,
                                 progress=ctx.advance_fn(f"  benign loss k={base['k']}", total=len(formatted)))
        return [{**base, "part": "benign_loss", "task": ref, "measure": "nll", "doc_id": prompts[t.index].prompt_id,
                 "value": t.mean_nll if t.n_predicted else None, "weight": float(t.n_predicted),
                 "detail": {"sum_nll": t.sum_nll, "n_predicted": t.n_predicted}} for t in losses]

    # -- the second dataset --------------------------------------------------------------------------
    def _dataset(self, unit, ctx, ref: str):
        """(prompts, formatted texts) of suite dataset ``ref``, checked against the content the unit id hashed."""
        def load():
            entries = {d.id: d for d in (ctx.suite.datasets if ctx.suite is not None else ())}
            if ref not in entries:
                raise UsageError(f"metric '{unit.metric.id}' reads dataset '{ref}', which is not in the suite")
            entry = entries[ref]
            prompts = ds.load(entry.spec())
            expected = (unit.spec.get("reads") or {}).get(ref, {}).get("content")
            if expected is not None and ds.identity(entry.spec(), prompts)[0] != expected:
                raise ShbError(f"dataset '{ref}' changed since unit {unit.unit_id} was planned; run again")
            formatted = [ds.format_prompt(p.text, entry.get("format", "direct"), ctx.lm.tokenizer, entry.get("system"))
                         for p in prompts]
            return prompts, formatted

        return ctx.cached(("utility-dataset", ref, ctx.ids["model_id"]), load)


def _head_source(params: dict) -> str | None:
    """How the head set was chosen, as generations.head_source says it (``intervention:<id>`` for a baseline)."""
    if params.get("intervention") is not None:
        return f"intervention:{params['intervention']}"
    return heads_module.source_name(params["heads"]) if "heads" in params else None
