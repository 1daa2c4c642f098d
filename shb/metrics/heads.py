"""Head sets named by a metric's ``heads`` key, shared by the kinds that ablate or inspect them (asr,
utility, attention): the suite keys, which metric's results a head source reads, and the checks of
both. No torch here.

Sources: ``sahara:<metric id>`` (the heads that Sahara unit chose, in order), ``ships_per_prompt:<metric
id>`` (each prompt's own top Ships heads; a bare ``ships_per_prompt`` names the suite's only ships
metric, and is refused where there are several), ``ships_mean:<metric id>`` (the heads of that Ships unit
ranked by their mean score over its prompts, a head a screened sweep did not verify on a prompt counting
0 there, as `shb report ships` ranks them), ``random`` (drawn with the unit's seed) or an explicit list
such as ``["2-26"]``. ``heads_dataset`` takes a Sahara or mean-Ships result from another dataset of the
suite (a holdout's select part, another language) instead of the measured one; ``heads_ablation`` takes
an upstream result found under another ablation of the suite (heads found with UA, applied with SC: does
scaling the same heads do what ablating them does?).
"""

from __future__ import annotations

SAHARA = "sahara:"
SHIPS_PER_PROMPT = "ships_per_prompt"
SHIPS_MEAN = "ships_mean:"

HEAD_NAME = {"type": "string", "pattern": "^[0-9]+-[0-9]+$"}
HEADS_SCHEMA = {
    "oneOf": [{"type": "string", "pattern": "^(sahara:.+|ships_per_prompt(:.+)?|ships_mean:.+|random)$"},
              {"type": "array", "items": HEAD_NAME, "uniqueItems": True}],
    "description": "sahara:<metric id> | ships_per_prompt:<metric id> | ships_mean:<metric id> | random | explicit "
                   "list such as [\"2-26\"]"}
K_SCHEMA = {"oneOf": [{"type": "integer", "minimum": 0},
                      {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
                       "uniqueItems": True}]}
SEED_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 4294967295}
DECODING_SCHEMA = {
    "type": "object",
    "properties": {"mode": {"enum": ["greedy", "sample"]}, "top_k": {"type": "integer", "minimum": 0},
                   "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                   "temperature": {"type": "number", "minimum": 0.01}, "seed": SEED_SCHEMA,
                   "n": {"type": "integer", "minimum": 1}},
    "required": ["mode"], "additionalProperties": False}
MAX_NEW_TOKENS_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 1048576}
HEADS_DATASET_SCHEMA = {"type": "string", "description": "heads sahara:<id> or ships_mean:<id>: take the heads found on "
                        "this dataset (a holdout 'select' part, another language) instead of on the measured one"}

HEADS_ABLATION_SCHEMA = {"type": "string", "description": "heads from an upstream metric (sahara:, ships_mean:, "
                         "ships_per_prompt): take the heads found under this ablation of the suite instead of the "
                         "cell's own (heads found with 'ua', applied with 'sc')"}


def upstream_id(heads, kinds: dict[str, str]) -> str | None:
    """The metric whose results a head source reads. ``kinds``: {metric id: kind} of the suite."""
    if not isinstance(heads, str):
        return None
    if heads.startswith(SAHARA):
        return heads[len(SAHARA):]
    if heads.startswith(SHIPS_MEAN):
        return heads[len(SHIPS_MEAN):]
    if heads == SHIPS_PER_PROMPT:
        candidates = [m for m, kind in kinds.items() if kind == "ships"]
        return candidates[0] if len(candidates) == 1 else None   # several: refused by source_problems
    if heads.startswith(SHIPS_PER_PROMPT + ":"):
        return heads.split(":", 1)[1]
    return None


def source_name(heads) -> str:
    """The head source as stored with each row (``head_source``): ``explicit`` for a list; a source that
    names a metric without the id (``sahara:<id>`` stays as written, as stored before)."""
    if isinstance(heads, list):
        return "explicit"
    return SHIPS_PER_PROMPT if str(heads).startswith(SHIPS_PER_PROMPT) else heads


def per_prompt(heads) -> bool:
    return isinstance(heads, str) and heads.startswith(SHIPS_PER_PROMPT)


def ranked_source(heads) -> bool:
    """A source that reads one ranked head list from an upstream unit (its first k heads are ablated)."""
    return isinstance(heads, str) and heads.startswith((SAHARA, SHIPS_MEAN))


def source_problems(i: int, metric: dict, data: dict) -> list[str]:
    """The head source of /metrics/i: the metric it names exists and has the right kind, k fits it,
    heads_dataset names a dataset and heads_ablation an ablation, each with an upstream source."""
    problems = []
    metrics = [m for m in data.get("metrics") or [] if isinstance(m, dict)]
    kinds = {m.get("id"): m.get("kind") for m in metrics}
    dataset_ids = {d.get("id") for d in data.get("datasets") or [] if isinstance(d, dict)}
    heads, ks = metric.get("heads"), metric.get("k")
    if "heads_dataset" in metric:
        ref = metric["heads_dataset"]
        if not ranked_source(heads):
            problems.append(f"/metrics/{i}/heads_dataset: only heads 'sahara:<id>' or 'ships_mean:<id>' can come from"
                            f" another dataset")
        elif isinstance(ref, str) and ref not in dataset_ids:
            problems.append(f"/metrics/{i}/heads_dataset: no dataset with id '{ref}' in this suite")
    if "heads_ablation" in metric:
        ref = metric["heads_ablation"]
        ablation_ids = {a.get("id") for a in data.get("ablations") or [] if isinstance(a, dict)}
        if not (ranked_source(heads) or per_prompt(heads)):
            problems.append(f"/metrics/{i}/heads_ablation: only heads found by another metric ('sahara:<id>',"
                            f" 'ships_mean:<id>', 'ships_per_prompt') can come from another ablation")
        elif isinstance(ref, str) and ref not in ablation_ids:
            problems.append(f"/metrics/{i}/heads_ablation: no ablation with id '{ref}' in this suite"
                            + (f" ({', '.join(sorted(map(str, ablation_ids)))})" if ablation_ids else ""))
    if isinstance(heads, str) and heads.startswith(SAHARA):
        ref = heads[len(SAHARA):]
        if kinds.get(ref) != "sahara":
            problems.append(f"/metrics/{i}/heads: '{heads}' must name a metric of kind sahara in this suite")
        else:
            steps = next((m.get("steps", 5) for m in metrics if m.get("id") == ref), 5)
            too_big = [k for k in (ks if isinstance(ks, list) else [ks if ks is not None else 1])
                       if isinstance(k, int) and k > steps]
            if isinstance(steps, int) and too_big:
                problems.append(f"/metrics/{i}/k: {too_big} exceeds the {steps} step(s) of sahara metric '{ref}';"
                                f" lower k or raise that metric's steps")
    if per_prompt(heads):
        problems += _ships_source_problems(i, heads, kinds)
    if isinstance(heads, str) and heads.startswith(SHIPS_MEAN) and kinds.get(heads[len(SHIPS_MEAN):]) != "ships":
        ships = sorted(m for m, kind in kinds.items() if kind == "ships" and isinstance(m, str))
        problems.append(f"/metrics/{i}/heads: '{heads}' must name a metric of kind ships in this suite"
                        + (f" ({', '.join(ships)})" if ships else ""))
    if heads == "random" or ranked_source(heads) or per_prompt(heads):
        if "k" not in metric:
            problems.append(f"/metrics/{i}: heads '{heads}' needs k (how many heads to ablate)")
    if isinstance(heads, list) and ks is not None:
        too_big = [k for k in (ks if isinstance(ks, list) else [ks]) if isinstance(k, int) and k > len(heads)]
        if too_big:
            problems.append(f"/metrics/{i}/k: {too_big} exceeds the {len(heads)} head(s) of the explicit list; with a"
                            f" list, k ablates its first k heads (0: none): lower k or name more heads")
    return problems


def _ships_source_problems(i: int, heads: str, kinds: dict) -> list[str]:
    ships = sorted(m for m, kind in kinds.items() if kind == "ships" and isinstance(m, str))
    if ":" in heads:
        ref = heads.split(":", 1)[1]
        if kinds.get(ref) != "ships":
            return [f"/metrics/{i}/heads: '{heads}' must name a metric of kind ships in this suite"
                    + (f" ({', '.join(ships)})" if ships else "")]
        return []
    if not ships:
        return [f"/metrics/{i}/heads: 'ships_per_prompt' needs a metric of kind ships in this suite"]
    if len(ships) > 1:
        return [f"/metrics/{i}/heads: 'ships_per_prompt' could read any of the ships metrics "
                f"{', '.join(repr(m) for m in ships)}: name one, e.g. 'ships_per_prompt:{ships[0]}'"]
    return []


def geometry_problems(i: int, params: dict, layers: int, heads: int, where: str) -> list[str]:
    """An explicit head list inside the model, and k no larger than its number of heads."""
    from shb.ablation import parse_heads

    problems = []
    head_list = params.get("heads")
    if isinstance(head_list, list):
        for j, name in enumerate(head_list):
            try:
                ((layer, head),) = parse_heads([name])
            except ValueError as exc:
                problems.append(f"/metrics/{i}/heads/{j}: {exc}")
                continue
            if layer >= layers or head >= heads:
                problems.append(f"/metrics/{i}/heads/{j}: head '{name}' out of range: {where}; heads are"
                                f" named 0-{layers - 1} - 0-{heads - 1}")
    elif "k" in params:
        ks = params["k"] if isinstance(params["k"], list) else [params["k"]]
        too_big = [k for k in ks if isinstance(k, int) and k > layers * heads]
        if too_big:
            problems.append(f"/metrics/{i}/k: {too_big} exceeds the {layers * heads} heads: {where};"
                            f" use k <= {layers * heads}")
    return problems
