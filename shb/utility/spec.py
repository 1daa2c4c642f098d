"""The ``utility`` metric's parameters: which parts run, which datasets they read, which head-set
sizes are measured, and the checks JSON Schema cannot express. No torch here.

Parameters (the suite schema's ``utility`` branch):
  heads, k, seed       the head set, as for ``asr`` (``sahara:<id>``, ``random``, an explicit list);
                       ``ships_per_prompt`` is refused: lm-eval documents share one model;
  intervention         instead of heads: an id of the suite's interventions section (a fitted baseline);
  lm_eval              {tasks: [registry name | path/to/task.yaml | shb_toy_*], num_fewshot (0),
                        limit, apply_chat_template (false), docs (size of generated toy tasks)};
  over_refusal         {dataset: <suite dataset id>, judge, decoding, max_new_tokens};
  benign_loss          {dataset: <suite dataset id>}.
At least one of the three parts is required. k = 0 (the unmodified model) is always measured.
"""

from __future__ import annotations

from shb.metrics import heads as heads_module

PARTS = ("lm_eval", "over_refusal", "benign_loss")
READ_PARTS = ("over_refusal", "benign_loss")   # parts that read a second dataset of the suite
REFUSAL_JUDGES = ("keyword-paper", "keyword-gcg")
DEFAULT_MAX_NEW_TOKENS = 64


SCHEMA = {"properties": {
    "heads": heads_module.HEADS_SCHEMA,
    "k": heads_module.K_SCHEMA,
    "seed": heads_module.SEED_SCHEMA,
    "lm_eval": {
        "type": "object", "description": "lm-evaluation-harness tasks (needs shb[utility])",
        "properties": {
            "tasks": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": True,
                      "description": "registry names (boolq, rte, ...), paths to local task YAML files, or shb_toy_* "
                                     "tasks generated for the toy model"},
            "num_fewshot": {"type": "integer", "minimum": 0, "description": "default 0 (zero-shot)"},
            "limit": {"type": "integer", "minimum": 1, "description": "first N documents of each task"},
            "apply_chat_template": {"type": "boolean",
                                    "description": "format each document with the model's chat template (default false)"},
            "docs": {"type": "integer", "minimum": 1,
                     "description": "documents of each generated shb_toy_* task (default 48)"}},
        "required": ["tasks"], "additionalProperties": False},
    "over_refusal": {
        "type": "object", "description": "refusal rate on benign prompts, judged by a keyword judge",
        "properties": {
            "dataset": {"type": "string", "description": "id of a dataset of this suite (benign prompts)"},
            "judge": {"oneOf": [{"enum": list(REFUSAL_JUDGES)},
                                {"type": "array", "items": {"enum": list(REFUSAL_JUDGES)}, "minItems": 1,
                                 "uniqueItems": True}],
                      "description": "refusal detectors only; a harm classifier does not detect refusals"},
            "decoding": heads_module.DECODING_SCHEMA,
            "max_new_tokens": heads_module.MAX_NEW_TOKENS_SCHEMA},
        "required": ["dataset"], "additionalProperties": False},
    "benign_loss": {
        "type": "object", "description": "mean next-token NLL of each text of a dataset",
        "properties": {"dataset": {"type": "string", "description": "id of a dataset of this suite (benign texts)"}},
        "required": ["dataset"], "additionalProperties": False},
    "intervention": {"type": "string", "description": "instead of heads: the id of an entry of the suite's "
                                                      "interventions section, measured beside the unmodified model"},
    "heads_dataset": heads_module.HEADS_DATASET_SCHEMA,
    "heads_ablation": heads_module.HEADS_ABLATION_SCHEMA},
    "required": []}


def parts(params: dict) -> list[str]:
    return [p for p in PARTS if params.get(p)]


def dataset_refs(params: dict) -> list[str]:
    """Ids of the suite datasets this metric reads besides its own cell's (benign prompts, texts)."""
    refs = []
    for part in READ_PARTS:
        ref = (params.get(part) or {}).get("dataset") if isinstance(params.get(part), dict) else None
        if isinstance(ref, str) and ref not in refs:
            refs.append(ref)
    return refs


def ks(params: dict) -> list[int]:
    """Head-set sizes measured; 0 (the unmodified model) always comes first. An intervention (a fitted
    baseline) is measured at k = 1 beside k = 0, as the asr metric records it."""
    if params.get("intervention") is not None or "heads" not in params:  # (a unit's spec drops the id)
        return [0, 1]
    heads = params.get("heads")
    if isinstance(heads, list) and "k" not in params:
        sizes = [len(heads)]  # with k: the list's first k heads, as for asr
    else:
        k = params.get("k", 1)
        sizes = k if isinstance(k, list) else [k]
    return sorted({0, *sizes})


def judges(params: dict) -> list[str]:
    judge = (params.get("over_refusal") or {}).get("judge", "keyword-paper")
    return judge if isinstance(judge, list) else [judge]


def problems(i: int, metric: dict, dataset_ids) -> list[str]:
    """Problems of the utility metric at /metrics/i (called by shb.suite for kind 'utility')."""
    found = []
    where = f"/metrics/{i}"
    if heads_module.per_prompt(metric.get("heads")):
        found.append(f"{where}/heads: 'ships_per_prompt' gives every prompt its own heads, but utility measures one "
                     "model on shared documents (lm-eval tasks, benign prompts); use 'sahara:<metric id>', 'random' "
                     "or an explicit list such as [\"2-6\"]")
    if "heads" in metric and "intervention" in metric:
        found.append(f"{where}: utility takes heads or intervention, not both")
    elif "heads" not in metric and "intervention" not in metric:
        found.append(f"{where}: utility needs heads (sahara:<metric id>, random, or a list; [] measures only the "
                     "unmodified model) or intervention (an id of the interventions section)")
    if not parts(metric):
        found.append(f"{where}: utility needs at least one of lm_eval, over_refusal, benign_loss")
    for part in READ_PARTS:
        ref = (metric.get(part) or {}).get("dataset") if isinstance(metric.get(part), dict) else None
        if isinstance(ref, str) and dataset_ids is not None and ref not in dataset_ids:
            found.append(f"{where}/{part}/dataset: no dataset with id '{ref}' in this suite; add it to datasets "
                         "(e.g. {\"id\": \"benign\", \"kind\": \"toy-benign\", \"format\": \"chat\"})")
    lm_eval = metric.get("lm_eval")
    if isinstance(lm_eval, dict):
        from shb.utility import toytasks

        for j, task in enumerate(lm_eval.get("tasks") or []):
            if toytasks.is_toy_task(task) and task not in toytasks.TASKS:
                found.append(f"{where}/lm_eval/tasks/{j}: unknown generated task '{task}'; shb generates: "
                             f"{', '.join(sorted(toytasks.TASKS))}")
    return found
