"""Load and validate suites: JSON -> frozen specs, with every problem reported at once.

``schemas/suite.schema.json`` is the definition of the format. Its metric section is assembled from
the metric kinds (each kind's ``Metric.schema``, shb.metrics), so a new kind brings its keys in its own
module; the file is written from them (``python -m shb.suite > schemas/suite.schema.json``) and a test
keeps the two equal. This module adds the checks JSON Schema cannot express (unique ids, references
between entries, each metric kind's ``problems``) and turns the validator's errors into one line each:
``/ablations/1/epsilon: -1 is less than the minimum of 0``. No torch here.
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
from shb.registry import METRICS, TABLES, unknown_message

SECTIONS = {"models": "model", "datasets": "dataset", "ablations": "ablation", "metrics": "metric"}
# Optional sections: not crossed into units, referred to by id (asr's "intervention").
OPTIONAL_SECTIONS = {"interventions": "intervention"}
DEFAULTS = {"device": "auto", "dtype": "float32", "batch_size": "auto", "seed": 0}


@lru_cache(maxsize=1)
def _schema_file() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas" / "suite.schema.json", here.parent / "schemas" / "suite.schema.json"):
        if candidate.is_file():
            return candidate.read_text()
    raise FileNotFoundError("suite.schema.json not found next to the shb package")


def schema() -> dict:
    """The suite schema: the file, with its metric section built from the registered metric kinds."""
    return _assembled(tuple(METRICS))


@lru_cache(maxsize=4)
def _assembled(kinds: tuple) -> dict:
    from shb.registry import metric

    out = json.loads(_schema_file())
    section = out["$defs"]["metric"]
    section["properties"]["kind"] = {"enum": list(kinds)}
    section["allOf"] = [{"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                         "then": metric(kind).schema} for kind in kinds]
    return out


def schema_text() -> str:
    """The schema as ``schemas/suite.schema.json`` holds it."""
    return json.dumps(schema(), indent=1) + "\n"


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
    """Checks beyond the schema: ids unique per section, metric filters that resolve, and each metric
    kind's own checks (``Metric.problems``: head sources, interventions, datasets it reads)."""
    from shb.registry import metric as metric_kind

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
    for i, metric in enumerate(data.get("metrics") or []):
        if not isinstance(metric, dict):
            continue
        problems += _empty_list_problems(metric, i)
        for section in ("models", "datasets", "ablations"):
            for j, ref in enumerate(metric.get(section) or []):
                if isinstance(ref, str) and ids.get(section) and ref not in ids[section]:
                    problems.append(f"/metrics/{i}/{section}/{j}: no {SECTIONS[section]} with id '{ref}' in this suite")
        if metric.get("kind") in METRICS:
            problems += metric_kind(metric["kind"]).problems(i, metric, data, ids)
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


def _empty_list_problems(metric: dict, i: int) -> list[str]:
    """An empty filter would run the metric on nothing (or, for layers, read as "every layer"): refuse it."""
    problems = []
    for key, what in (("models", "model"), ("datasets", "dataset"), ("ablations", "ablation"), ("layers", "layer")):
        if metric.get(key) == []:
            problems.append(f"/metrics/{i}/{key}: an empty list selects no {what}; name at least one, or leave"
                            f" \"{key}\" out for every {what}")
    return problems


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
    existing path there (otherwise it is a hub id such as ``meta-llama/Llama-2-7b-chat-hf``); what a
    metric kind anchors (``Metric.anchor_paths``: utility's lm-eval tasks given as ``.yaml`` files).
    Absolute paths and ``~`` stay as written."""
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
    from shb.registry import metric as metric_kind

    for entry in data.get("metrics") if isinstance(data.get("metrics"), list) else []:
        if isinstance(entry, dict) and entry.get("kind") in METRICS:
            metric_kind(entry["kind"]).anchor_paths(entry, lambda value: _anchored(value, base))
    return data


if __name__ == "__main__":  # python -m shb.suite > schemas/suite.schema.json
    print(schema_text(), end="")
