"""Load and validate suites: JSON -> frozen specs, with every problem reported at once.

``schemas/suite.schema.json`` is the single definition of the format; this module adds the
checks JSON Schema cannot express (unique ids, references between entries) and turns the
validator's errors into one line each: ``/ablations/1/epsilon: -1 is less than the minimum of 0``.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from shb.errors import SuiteError
from shb.registry import TABLES, unknown_message

SECTIONS = {"models": "model", "datasets": "dataset", "ablations": "ablation", "metrics": "metric"}
# Optional sections: not crossed into units, referred to by id (asr's "intervention").
OPTIONAL_SECTIONS = {"interventions": "intervention"}
DEFAULTS = {"device": "auto", "dtype": "float32", "batch_size": "auto", "seed": 0}


@lru_cache(maxsize=1)
def schema() -> dict:
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas" / "suite.schema.json", here.parent / "schemas" / "suite.schema.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError("suite.schema.json not found next to the shb package")


@dataclass(frozen=True)
class Entry:
    """One model, dataset, ablation or metric of a suite: its id, kind and kind-specific parameters."""

    section: str
    id: str
    kind: str
    params: dict = field(hash=False, compare=True)

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def spec(self) -> dict:
        return {"id": self.id, "kind": self.kind, **self.params}


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    sha256: str
    models: tuple[Entry, ...]
    datasets: tuple[Entry, ...]
    ablations: tuple[Entry, ...]
    metrics: tuple[Entry, ...]
    defaults: dict = field(hash=False)
    raw: dict = field(hash=False, repr=False)
    interventions: tuple[Entry, ...] = ()

    def intervention(self, intervention_id: str) -> Entry:
        return next(e for e in self.interventions if e.id == intervention_id)

    def section(self, name: str) -> tuple[Entry, ...]:
        return getattr(self, name)


def _pointer(path) -> str:
    return "/" + "/".join(str(p) for p in path) if len(path) else "/"


def _message(error) -> str:
    """A readable message for one jsonschema error (did-you-mean for kinds, the best branch of oneOf)."""
    if error.validator == "enum" and error.path and error.path[-1] == "kind" and len(error.path) >= 2:
        section = SECTIONS.get(str(error.path[0])) or OPTIONAL_SECTIONS.get(str(error.path[0]))
        if section:
            return unknown_message(section, error.instance, TABLES[section])
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Prefer the branch whose type matched: its complaint is the useful one.
        typed = [e for e in error.context if e.validator != "type"]
        best = min(typed or error.context, key=lambda e: len(e.relative_schema_path))
        return best.message
    return error.message


def schema_problems(data: Any) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema())
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        # unevaluatedProperties also flags known keys whose value failed; unknown_key_problems says it better.
        if error.validator != "unevaluatedProperties":
            problems.append(f"{_pointer(error.absolute_path)}: {_message(error)}")
    return list(dict.fromkeys(problems)) + unknown_key_problems(data)


def allowed_keys(section: str, kind: str) -> set[str]:
    """Keys an entry of this section and kind may carry, read from the schema."""
    definition = schema()["$defs"][section]
    keys = set(definition["properties"])
    for branch in definition["allOf"]:
        if branch["if"]["properties"]["kind"]["const"] == kind:
            keys |= set(branch["then"]["properties"])
    return keys


def unknown_key_problems(data: Any) -> list[str]:
    import difflib

    if not isinstance(data, dict):
        return []
    problems = []
    for section, singular in {**SECTIONS, **OPTIONAL_SECTIONS}.items():
        entries = data.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict) or entry.get("kind") not in TABLES[singular]:
                continue
            allowed = allowed_keys(singular, entry["kind"])
            for key in entry:
                if key not in allowed:
                    hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                    extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                    problems.append(f"/{section}/{i}/{key}: unknown key for {singular} kind '{entry['kind']}'{extra};"
                                    f" allowed: {', '.join(sorted(allowed))}")
    return problems


def nonfinite_problems(data: Any, path=()) -> list[str]:
    """JSON allows Infinity and NaN (Python's reader does); no suite value may be either."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{_pointer(path)}: {data} is not a finite number; give a finite value"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in nonfinite_problems(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in nonfinite_problems(v, (*path, i))]
    return []


def semantic_problems(data: dict) -> list[str]:
    """Checks beyond the schema: ids unique per section, metric filters and head sources that resolve."""
    problems = nonfinite_problems(data)
    ids = {}
    for section in {**SECTIONS, **OPTIONAL_SECTIONS}:
        seen: dict[str, int] = {}
        for i, entry in enumerate(data.get(section) or []):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            if entry["id"] in seen:
                problems.append(f"/{section}/{i}/id: duplicate id '{entry['id']}' (first used at /{section}/{seen[entry['id']]})")
            else:
                seen[entry["id"]] = i
        ids[section] = seen
    metric_kinds = {m.get("id"): m.get("kind") for m in data.get("metrics") or [] if isinstance(m, dict)}
    for i, metric in enumerate(data.get("metrics") or []):
        if not isinstance(metric, dict):
            continue
        problems += _empty_list_problems(metric, i)
        problems += _explicit_k_problems(metric, i)
        for section in ("models", "datasets", "ablations"):
            for j, ref in enumerate(metric.get(section) or []):
                if isinstance(ref, str) and ids.get(section) and ref not in ids[section]:
                    problems.append(f"/metrics/{i}/{section}/{j}: no {SECTIONS[section]} with id '{ref}' in this suite")
        heads = metric.get("heads")
        if "heads_dataset" in metric:
            ref = metric["heads_dataset"]
            if not (isinstance(heads, str) and heads.startswith("sahara:")):
                problems.append(f"/metrics/{i}/heads_dataset: only heads 'sahara:<id>' can come from another dataset")
            elif isinstance(ref, str) and ids.get("datasets") is not None and ref not in ids["datasets"]:
                problems.append(f"/metrics/{i}/heads_dataset: no dataset with id '{ref}' in this suite")
        if isinstance(heads, str) and heads.startswith("sahara:"):
            ref = heads.split(":", 1)[1]
            if metric_kinds.get(ref) != "sahara":
                problems.append(f"/metrics/{i}/heads: '{heads}' must name a metric of kind sahara in this suite")
            else:
                steps = next((m.get("steps", 5) for m in data["metrics"] if isinstance(m, dict) and m.get("id") == ref), 5)
                ks = metric.get("k", 1)
                too_big = [k for k in (ks if isinstance(ks, list) else [ks]) if isinstance(k, int) and k > steps]
                if isinstance(steps, int) and too_big:
                    problems.append(f"/metrics/{i}/k: {too_big} exceeds the {steps} step(s) of sahara metric '{ref}';"
                                    f" lower k or raise that metric's steps")
        if heads in ("sahara", "ships_per_prompt", "random") or (isinstance(heads, str) and heads.startswith("sahara:")):
            if "k" not in metric:
                problems.append(f"/metrics/{i}: heads '{heads}' needs k (how many heads to ablate)")
        if metric.get("kind") == "utility":
            from shb.utility.spec import problems as utility_problems

            problems += utility_problems(i, metric, ids.get("datasets"))
            target = metric.get("intervention")
            if isinstance(target, str) and target not in (ids.get("interventions") or {}):
                problems.append(f"/metrics/{i}/intervention: no intervention with id '{target}' in this suite")
        if heads == "ships_per_prompt" and "ships" not in metric_kinds.values():
            problems.append(f"/metrics/{i}/heads: 'ships_per_prompt' needs a metric of kind ships in this suite")
        if metric.get("kind") == "asr":
            problems += _asr_target_problems(metric, i, ids.get("interventions") or {})
        if metric.get("kind") == "rdsha":
            problems += _rdsha_problems(metric, i, data)
        benign = metric.get("benign") if metric.get("kind") == "attention" else None
        if isinstance(benign, str) and ids.get("datasets") is not None and benign not in ids["datasets"]:
            problems.append(f"/metrics/{i}/benign: no dataset with id '{benign}' in this suite")
    problems += _intervention_problems(data, ids)
    problems += _toy_problems(data)
    return problems


def _toy_problems(data: dict) -> list[str]:
    """A toy model's keys must make a recipe (e.g. align_heads inside the model, not with align 'full')."""
    from shb.models import toy_variant
    from shb.models.toy.build import resolve

    problems = []
    for i, model in enumerate(data.get("models") or []):
        if not (isinstance(model, dict) and model.get("kind") == "toy"):
            continue
        try:
            resolve(model.get("seed", 0), **toy_variant(model))
        except (ValueError, TypeError) as exc:
            problems.append(f"/models/{i}: {exc}")
    return problems


def _rdsha_problems(metric: dict, i: int, data: dict) -> list[str]:
    """RDSHA scores heads against a refusal direction: its intervention must be one."""
    target = metric.get("intervention")
    kinds = {e.get("id"): e.get("kind") for e in data.get("interventions") or [] if isinstance(e, dict)}
    if isinstance(target, str) and kinds.get(target) != "refusal_direction":
        found = f"is of kind '{kinds[target]}'" if target in kinds else "does not exist"
        return [f"/metrics/{i}/intervention: rdsha needs a refusal_direction intervention; '{target}' {found}"]
    return []


def _empty_list_problems(metric: dict, i: int) -> list[str]:
    """An empty filter would run the metric on nothing (or, for layers, read as "every layer"): refuse it."""
    problems = []
    for key, what in (("models", "model"), ("datasets", "dataset"), ("ablations", "ablation"), ("layers", "layer")):
        if metric.get(key) == []:
            problems.append(f"/metrics/{i}/{key}: an empty list selects no {what}; name at least one, or leave"
                            f" \"{key}\" out for every {what}")
    return problems


def _explicit_k_problems(metric: dict, i: int) -> list[str]:
    """With an explicit head list, k counts the list's first k heads (k = 0: the unablated baseline)."""
    heads, ks = metric.get("heads"), metric.get("k")
    if not isinstance(heads, list) or ks is None:
        return []
    too_big = [k for k in (ks if isinstance(ks, list) else [ks]) if isinstance(k, int) and k > len(heads)]
    if too_big:
        return [f"/metrics/{i}/k: {too_big} exceeds the {len(heads)} head(s) of the explicit list; with a list, k"
                f" ablates its first k heads (0: none): lower k or name more heads"]
    return []


def _asr_target_problems(metric: dict, i: int, interventions: dict) -> list[str]:
    """An asr metric ablates a head set (``heads``) or applies an intervention, exactly one of them."""
    has_heads, target = "heads" in metric, metric.get("intervention")
    if has_heads == (target is not None):
        return [f"/metrics/{i}: asr needs exactly one of heads (a head set) or intervention (an id of the "
                "interventions section)"]
    if target is not None:
        if isinstance(target, str) and target not in interventions:
            return [f"/metrics/{i}/intervention: no intervention with id '{target}' in this suite"]
        if "k" in metric:
            return [f"/metrics/{i}/k: k counts heads; an asr metric with an intervention takes no k"]
    return []


# What each fitted kind is fitted on: harmful prompts (all but the attention swap, which only loads
# weights), harmless data to contrast, an unaligned reference.
FIT_NEEDS = {"refusal_direction": ("harmful", "harmless"), "setdiff": ("harmful", "harmless"),
             "safety_neurons": ("harmful", "reference"), "attention_swap": ("reference",)}
FIT_NEEDS_DEFAULT = ("harmful",)


def _intervention_problems(data: dict, ids: dict) -> list[str]:
    """The datasets and models an intervention is fitted on exist in the suite."""
    problems = []
    for i, entry in enumerate(data.get("interventions") or []):
        fit = entry.get("fit") if isinstance(entry, dict) else None
        if not isinstance(fit, dict):
            continue
        for key in FIT_NEEDS.get(entry.get("kind"), FIT_NEEDS_DEFAULT):
            if key not in fit:
                problems.append(f"/interventions/{i}/fit: {entry['kind']} is fitted on {key} data too: add \"{key}\"")
        for key, section in (("harmful", "datasets"), ("harmless", "datasets"), ("reference", "models")):
            ref = fit.get(key)
            if isinstance(ref, str) and ids.get(section) is not None and ref not in ids[section]:
                problems.append(f"/interventions/{i}/fit/{key}: no {SECTIONS[section]} with id '{ref}' in this suite")
    return problems


def _read(path: Path) -> tuple[Any, bytes]:
    if not path.is_file():
        raise SuiteError(path, [f"/: file not found (looked at {path.resolve()})"])
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise SuiteError(path, [f"/: cannot read the file ({exc.strerror})"]) from None
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = blob[:exc.start].count(b"\n") + 1
        column = exc.start - (blob.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SuiteError(path, [f"/: not UTF-8 text at line {line}, column {column} (byte 0x{blob[exc.start]:02x});"
                                " save the suite as UTF-8"]) from None
    try:
        data = json.loads(text, object_pairs_hook=_KeyedObject.from_pairs)
    except json.JSONDecodeError as exc:
        raise SuiteError(path, [f"/: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None
    except RecursionError:
        raise SuiteError(path, ["/: nested too deeply to read (a suite needs a few levels of objects and lists);"
                                " check the file for runaway brackets"]) from None
    duplicates = list(_duplicate_keys(data))
    if duplicates:
        raise SuiteError(path, [f"{pointer}: key '{key}' appears more than once in this object (JSON keeps only the"
                                f" last); keep one" for pointer, key in duplicates])
    if _depth(data) > MAX_DEPTH:
        raise SuiteError(path, [f"/: nested deeper than {MAX_DEPTH} levels; a suite needs a few levels of objects"
                                " and lists: check the file for runaway brackets"])
    return _plain(data), blob


# Deeper values than this are never a suite (the deepest real one, a utility metric's options, is ~5).
MAX_DEPTH = 32


class _KeyedObject(dict):
    """A JSON object that remembers the keys it saw twice (json keeps the last value silently)."""

    duplicates: tuple = ()

    @classmethod
    def from_pairs(cls, pairs):
        obj = cls(pairs)
        if len(obj) < len(pairs):
            seen, dups = set(), []
            for key, _ in pairs:
                if key in seen and key not in dups:
                    dups.append(key)
                seen.add(key)
            obj.duplicates = tuple(dups)
        return obj


def _walk(data, path=()):
    """(path, value) for every value, depth first, without recursion (the input may be deep)."""
    stack = [(path, data)]
    while stack:
        here, value = stack.pop()
        yield here, value
        if isinstance(value, dict):
            stack += [((*here, k), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [((*here, i), v) for i, v in enumerate(value)]


def _duplicate_keys(data):
    for here, value in _walk(data):
        for key in getattr(value, "duplicates", ()):
            yield _pointer(here), key


def _depth(data) -> int:
    return max(len(here) for here, _ in _walk(data))


def _plain(data):
    """Plain dicts again (the suite is compared, hashed and stored as ordinary JSON)."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def problems(data: Any) -> list[str]:
    found = schema_problems(data)
    if isinstance(data, dict):
        found += semantic_problems(data)
    return found


def from_dict(data: dict, path: str = "<suite>", blob: bytes | None = None) -> Suite:
    found = problems(data)
    if found:
        raise SuiteError(path, found)
    blob = blob if blob is not None else json.dumps(data, sort_keys=True).encode()

    def entries(section):
        out = []
        for item in data[section]:
            params = {k: v for k, v in item.items() if k not in ("id", "kind")}
            out.append(Entry(SECTIONS[section], item["id"], item["kind"], params))
        return tuple(out)

    return Suite(
        name=data["name"], path=str(path), sha256=hashlib.sha256(blob).hexdigest(),
        models=entries("models"), datasets=entries("datasets"),
        ablations=entries("ablations"), metrics=entries("metrics"),
        defaults={**DEFAULTS, **(data.get("defaults") or {})}, raw=data,
        interventions=tuple(Entry("intervention", item["id"], item["kind"],
                                  {k: v for k, v in item.items() if k not in ("id", "kind")})
                            for item in data.get("interventions") or []),
    )


def load(path) -> Suite:
    """Read and validate a suite file; raises SuiteError listing every problem.

    Relative file paths in it are relative to the suite file's directory (not the working directory),
    so a suite runs the same from anywhere: see ``anchor_paths``."""
    path = Path(path)
    data, blob = _read(path)
    return from_dict(anchor_paths(data, Path(os.path.abspath(path.parent))), str(path), blob)


def _anchored(value: str, base: Path) -> str:
    expanded = Path(value).expanduser()
    return value if expanded.is_absolute() else os.path.normpath(base / expanded)


def anchor_paths(data: Any, base: Path) -> Any:
    """The suite with its relative file paths made relative to ``base`` (the suite file's directory).

    Anchored: a dataset's ``path``; an ``hf`` model's ``path`` when it starts with ``.`` or names an
    existing path there (otherwise it is a hub id such as ``meta-llama/Llama-2-7b-chat-hf``); an lm-eval
    task given as a ``.yaml`` file. Absolute paths and ``~`` stay as written."""
    if not isinstance(data, dict):
        return data
    data = json.loads(json.dumps(data))  # a copy: the caller's dict stays as read
    for entry in data.get("datasets") if isinstance(data.get("datasets"), list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry["path"]:
            entry["path"] = _anchored(entry["path"], base)
    for entry in data.get("models") if isinstance(data.get("models"), list) else []:
        path = entry.get("path") if isinstance(entry, dict) and entry.get("kind") == "hf" else None
        if isinstance(path, str) and path and (path.startswith(".") or (base / path).exists()):
            entry["path"] = _anchored(path, base)
    for entry in data.get("metrics") if isinstance(data.get("metrics"), list) else []:
        tasks = (entry.get("lm_eval") or {}).get("tasks") if isinstance(entry, dict) and isinstance(
            entry.get("lm_eval"), dict) else None
        if isinstance(tasks, list):
            entry["lm_eval"]["tasks"] = [_anchored(t, base) if isinstance(t, str) and t.endswith((".yaml", ".yml"))
                                         else t for t in tasks]
    return data
