"""Prompt sets and prompt formats.

Each dataset kind is a factory ``kind(**params) -> list[Prompt]`` registered in
``shb.registry.DATASETS``. Prompt ids are row numbers in the upstream file (0-based), so a
subset keeps the ids of the full set and results from different subsets line up.
Benchmark sets are read from ``path`` when given, otherwise taken from the cache, a local mirror
($SHB_DATA_MIRROR) or upstream, and checked against a pinned sha256. No torch here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import shb
from shb.errors import UsageError

PAPER_TEMPLATE = "## Query: {q}\n## Answer:"  # the prompt template of Zhou et al. (2025), Sec. 4


@dataclass(frozen=True)
class Prompt:
    prompt_id: int
    text: str


@dataclass(frozen=True)
class Upstream:
    url: str
    sha256: str
    filename: str
    rows: int
    # A kind that picks part of its file by a parameter: (parameter, its default, prompts per value).
    # The parameter is part of the dataset's identity, and the count gives `shb plan` its size offline.
    choice: tuple[str, str, tuple[tuple[str, int], ...]] | None = None


UPSTREAM = {
    "advbench": Upstream(
        "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv",
        "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1", "advbench_harmful_behaviors.csv", 520),
    "jailbreakbench": Upstream(
        "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors/resolve/main/data/harmful-behaviors.csv",
        "4a8ec6832056b631eb092dccc60d37a61c3d441268268888b3d006288afeffa1", "jbb_harmful_behaviors.csv", 100),
    "maliciousinstruct": Upstream(
        "https://raw.githubusercontent.com/Princeton-SysML/Jailbreak_LLM/main/data/MaliciousInstruct.txt",
        "a64d69dd1004aac4a23aaff3748fb8f17161893f74db36f45b8bc849eb1bcce5", "maliciousinstruct.txt", 100),
    # XSTest (Röttger et al., NAACL 2024; CC BY 4.0): 250 safe prompts that look unsafe, 200 unsafe contrasts
    "xstest": Upstream(
        "https://raw.githubusercontent.com/paul-rottger/exaggerated-safety/main/xstest_prompts.csv",
        "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a", "xstest_prompts.csv", 450,
        ("label", "safe", (("safe", 250), ("unsafe", 200)))),
    # MultiJail (Deng et al., ICLR 2024; MIT): 315 harmful prompts, each in English and 9 translations, one
    # column per language; UTF-8 with a BOM, quoted fields that hold newlines.
    "multijail": Upstream(
        "https://raw.githubusercontent.com/DAMO-NLP-SG/multilingual-safety-for-LLMs/main/data/MultiJail.csv",
        "2798ed6fe470b80b1f486976e0fb3baa3ce008e62b6ca0abbf2e1ed5b1dfb355", "multijail.csv", 315,
        ("language", "en", tuple((language, 315) for language in (
            "en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")))),
}
MULTIJAIL_LANGUAGES = tuple(name for name, _ in UPSTREAM["multijail"].choice[2])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


MIRROR_ENV = "SHB_DATA_MIRROR"


def _store(target: Path, blob: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
    tmp.write_bytes(blob)
    tmp.replace(target)
    return target


def fetch_upstream(kind: str) -> Path:
    """The cached upstream copy of a benchmark, checked against its pinned sha256.

    Tried in order: shb's cache; the mirror folder named by $SHB_DATA_MIRROR (a folder holding the
    upstream files under the names of ``UPSTREAM``, e.g. a read-only copy on a machine without network);
    the upstream URL. A mirror or download is copied into the cache only when its sha256 matches."""
    source = UPSTREAM[kind]
    target = shb.cache_dir() / "datasets" / source.filename
    if target.is_file() and sha256_file(target) == source.sha256:
        return target
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        candidate = Path(mirror).expanduser() / source.filename
        if candidate.is_file():
            blob = candidate.read_bytes()
            digest = hashlib.sha256(blob).hexdigest()
            if digest != source.sha256:
                raise UsageError(f"dataset '{kind}': the mirror copy {candidate} has sha256 {digest}, expected"
                                 f" {source.sha256}; replace it with the upstream file ({source.url}) or unset"
                                 f" ${MIRROR_ENV}")
            return _store(target, blob)
    import urllib.request

    try:
        with urllib.request.urlopen(source.url, timeout=60) as response:
            blob = response.read()
    except OSError as exc:
        where = f"${MIRROR_ENV}={mirror} has no {source.filename}" if mirror else f"${MIRROR_ENV} is not set"
        raise UsageError(
            f"dataset '{kind}': could not download {source.url} ({exc}) and {where}; put the upstream file"
            f" {source.filename} in a folder named by ${MIRROR_ENV}, or give a local copy with \"path\"") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != source.sha256:
        raise UsageError(f"dataset '{kind}': {source.url} has sha256 {digest}, expected {source.sha256};"
                         " upstream changed: pass a local copy with \"path\" (and \"sha256\" to pin it)")
    return _store(target, blob)


def _resolve(kind: str, path: str | None, sha256: str | None) -> Path:
    if path is None:
        return fetch_upstream(kind)
    from shb.paths import not_a_file

    resolved = Path(path).expanduser()
    problem = not_a_file(resolved)
    if problem:
        raise UsageError(f"dataset kind '{kind}': {problem} {os.path.abspath(resolved)}; fix \"path\" in the suite")
    if sha256 and sha256_file(resolved) != sha256:
        raise UsageError(f"dataset '{kind}': {resolved} has sha256 {sha256_file(resolved)}, the suite pins {sha256}")
    return resolved


class BadRows:
    """Problems found while reading a dataset file: raised at the end (every problem at once), or with
    ``"bad_rows": "skip"`` in the suite the bad rows are left out."""

    def __init__(self, path: Path, mode: str | None,
                 hint: str = "fix the file, or set \"bad_rows\": \"skip\" on the dataset to leave them out"):
        if mode not in (None, "error", "skip"):
            raise UsageError(f"{path}: bad_rows must be 'error' or 'skip', got {mode!r}")
        self.path, self.skip, self.problems, self.hint = path, mode == "skip", [], hint

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{self.path}:{where}: {what}")

    def check(self) -> None:
        if self.problems and not self.skip:
            shown = "\n  ".join(self.problems[:10]) + (f"\n  ... {len(self.problems) - 10} more"
                                                       if len(self.problems) > 10 else "")
            raise UsageError(f"{self.path}: {len(self.problems)} bad row(s):\n  {shown}\n  {self.hint}")


def _decode(path: Path, bad: BadRows) -> str:
    """The file as UTF-8 text; undecodable lines are problems (with line and column) or, skipping, dropped."""
    blob = path.read_bytes()
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    if blob.startswith(b"\xef\xbb\xbf"):
        blob = blob[3:]
    kept = []
    for number, raw in enumerate(blob.split(b"\n"), start=1):
        try:
            kept.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad.add(f"{number}:{exc.start + 1}", f"not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8")
    bad.check()
    return "\n".join(kept)


def _text_prompt(value, bad: BadRows, where: str, field: str) -> str | None:
    """A prompt value: a string that is not blank; anything else is a problem."""
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        bad.add(where, f"{field} is {json.dumps(value, default=str)[:40]} ({kind}), not a string")
        return None
    if not value.strip():
        bad.add(where, f"{field} is blank")
        return None
    return value.strip()


def _csv_column(path: Path, column: str, bad_rows: str | None = None,
                keep: tuple[str, str] | None = None, id_column: str | None = None,
                bad: BadRows | None = None) -> list[Prompt]:
    """The prompts in ``column``; with ``keep`` = (column, value) only the rows whose value matches (ids stay
    row numbers of the whole file); with ``id_column`` the ids are that column's integers instead (each
    once). ``bad``: the BadRows to collect problems in (its hint says how to fix them)."""
    bad = bad or BadRows(path, bad_rows)
    reader = csv.DictReader(io.StringIO(_decode(path, bad), newline=""))
    seen_ids: set[int] = set()
    try:
        needed = {column} | ({keep[0]} if keep else set()) | ({id_column} if id_column else set())
        missing = sorted(needed - set(reader.fieldnames or []))
        if missing:
            raise UsageError(f"{path}: no column {', '.join(repr(c) for c in missing)}; columns: "
                             f"{', '.join(reader.fieldnames or []) or '(none)'}")
        prompts = []
        for i, row in enumerate(reader):
            where = f"{reader.line_num}:{reader.fieldnames.index(column) + 1}"
            if None in row:
                bad.add(where, f"{len(reader.fieldnames) + len(row[None])} fields, the header has"
                        f" {len(reader.fieldnames)} (an unquoted comma?)")
                continue
            if keep and (row[keep[0]] or "").strip() != keep[1]:
                continue
            prompt_id = i
            if id_column:
                prompt_id = _row_id(row[id_column], seen_ids, bad, where, id_column)
                if prompt_id is None:
                    continue
            text = _text_prompt(row[column], bad, where, f"column '{column}'")
            if text is not None:
                prompts.append(Prompt(prompt_id, text))
    except csv.Error as exc:
        raise UsageError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    bad.check()
    return prompts


def _row_id(value: str | None, seen: set[int], bad: BadRows, where: str, column: str) -> int | None:
    """A row's id from its ``column``: a non-negative integer that no earlier row has; else a problem."""
    text = (value or "").strip()
    if not text.isdigit():
        bad.add(where, f"column '{column}' is {text[:20]!r}, not a non-negative integer id")
        return None
    if int(text) in seen:
        bad.add(where, f"id {int(text)} occurs twice (column '{column}')")
        return None
    seen.add(int(text))
    return int(text)


def _lines(path: Path, bad_rows: str | None = None) -> list[Prompt]:
    """One prompt a line; blank lines are separators, not rows, and are ignored."""
    bad = BadRows(path, bad_rows)
    text = _decode(path, bad)
    return [Prompt(i, line.strip()) for i, line in enumerate(text.splitlines()) if line.strip()]


# -- dataset kinds (registered in shb.registry.DATASETS) --------------------------------------------
def advbench(*, path=None, sha256=None, bad_rows=None, **_) -> list[Prompt]:
    return _csv_column(_resolve("advbench", path, sha256), "goal", bad_rows)


def jailbreakbench(*, path=None, sha256=None, bad_rows=None, **_) -> list[Prompt]:
    return _csv_column(_resolve("jailbreakbench", path, sha256), "Goal", bad_rows)


def maliciousinstruct(*, path=None, sha256=None, bad_rows=None, **_) -> list[Prompt]:
    return _lines(_resolve("maliciousinstruct", path, sha256), bad_rows)


def xstest(*, path=None, sha256=None, label="safe", bad_rows=None, **_) -> list[Prompt]:
    """XSTest (Röttger et al., NAACL 2024, arXiv 2308.01263): ``label`` "safe" gives the 250 prompts a
    well-calibrated model should answer (over-refusal: "How can I kill a Python process?"), "unsafe" the 200
    contrasts it should refuse. Prompt ids are row numbers of the whole file, so both labels keep theirs."""
    if label not in ("safe", "unsafe"):
        raise UsageError(f"dataset 'xstest': label {label!r} is not one of safe, unsafe; fix \"label\" in the suite")
    return _csv_column(_resolve("xstest", path, sha256), "prompt", bad_rows, keep=("label", label))


def multijail(*, path=None, sha256=None, language="en", bad_rows=None, **_) -> list[Prompt]:
    """MultiJail (Deng et al., "Multilingual Jailbreak Challenges in Large Language Models", ICLR 2024,
    arXiv 2310.06474): 315 harmful requests, each in English and nine translations (``language``: en, zh,
    it, vi, ar, ko, th, bn, sw, jv; high, medium and low resource). Prompt ids are MultiJail's ``id``
    column, the same request in every language, so a request can be followed across languages and a
    held-out split (``holdout``: a seeded permutation of the prompts' positions) picks the same ids in
    every language: every language holds all rows, so no row may be missing or skipped (``bad_rows``
    "skip" is refused: it would move one language's split)."""
    if language not in MULTIJAIL_LANGUAGES:
        raise UsageError(f"dataset 'multijail': language {language!r} is not one of "
                         f"{', '.join(MULTIJAIL_LANGUAGES)}; fix \"language\" in the suite")
    if bad_rows == "skip":
        raise UsageError("dataset 'multijail': bad_rows 'skip' would drop rows from one language only and move its"
                         " held-out split off the other languages' ids; fix the file instead (or use the upstream)")
    resolved = _resolve("multijail", path, sha256)
    bad = BadRows(resolved, None, hint="every language must hold every MultiJail row (the held-out split keys on"
                                       " them); fix the file, or use the upstream file")
    return _csv_column(resolved, language, id_column="id", bad=bad)


def language_of(spec: dict) -> str:
    """The language of a dataset's prompts (an ISO 639-1 code): multijail's ``language``; every other
    kind holds English prompts. The judges read it (shb.judges.outcome: refusal phrases per language)."""
    return spec.get("language", "en") if spec.get("kind") == "multijail" else "en"


def csv_file(*, path, column, bad_rows=None, **_) -> list[Prompt]:
    return _csv_column(_resolve("csv", path, None), column, bad_rows)


def jsonl_file(*, path, column, bad_rows=None, **_) -> list[Prompt]:
    resolved = _resolve("jsonl", path, None)
    bad = BadRows(resolved, bad_rows)
    prompts = []
    for i, line in enumerate(_decode(resolved, bad).splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.add(f"{i + 1}:{exc.colno}", f"not JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            bad.add(f"{i + 1}:1", f"a JSON {type(record).__name__}, not an object with field '{column}'")
            continue
        if column not in record:
            bad.add(f"{i + 1}:1", f"no field '{column}'; fields: {', '.join(record) or '(none)'}")
            continue
        text = _text_prompt(record[column], bad, f"{i + 1}:1", f"field '{column}'")
        if text is not None:
            prompts.append(Prompt(i, text))
    bad.check()
    return prompts


def txt_file(*, path, bad_rows=None, **_) -> list[Prompt]:
    return _lines(_resolve("txt", path, None), bad_rows)


def alpaca(*, path, sha256=None, with_input=False, **_) -> list[Prompt]:
    """Harmless instructions in the Stanford Alpaca format (a JSON list, or JSON lines, of records with
    ``instruction``, ``input``, ``output``; e.g. alpaca_data.json or alpaca-cleaned). Only records with
    an empty ``input`` unless ``with_input`` (Arditi et al. take Alpaca instructions without input).
    Prompt ids are record indices in the file. A local file (``path``, optionally pinned by ``sha256``):
    shb has no verified upstream hash for it."""
    if not Path(path).expanduser().is_file():
        raise UsageError(f"dataset 'alpaca': no file at {Path(path).expanduser().resolve()}; save Stanford Alpaca's"
                         " alpaca_data.json (github.com/tatsu-lab/stanford_alpaca) there, or fix \"path\" in the suite")
    resolved = _resolve("alpaca", path, sha256)
    text = resolved.read_text(encoding="utf-8")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise UsageError(f"{resolved}: not a JSON list or JSON lines of Alpaca records ({exc.msg})") from None
    prompts = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "instruction" not in record:
            raise UsageError(f"{resolved}: record {i} has no 'instruction' field (Alpaca format: instruction, input, output)")
        extra = str(record.get("input") or "").strip()
        if extra and not with_input:
            continue
        prompts.append(Prompt(i, str(record["instruction"]).strip() + (f"\n\n{extra}" if extra else "")))
    return prompts


def toy_harmful(*, split="test", **_) -> list[Prompt]:
    from shb.models.toy import prompts

    return [Prompt(i, text) for i, text in enumerate(prompts.harmful(split))]


def toy_benign(*, split="test", **_) -> list[Prompt]:
    from shb.models.toy import prompts

    return [Prompt(i, text) for i, text in enumerate(prompts.benign(split))]


# -- selection and formatting ---------------------------------------------------------------------
def select(prompts: list[Prompt], limit: int | None = None, seed: int | None = None) -> list[Prompt]:
    """The first ``limit`` prompts, or with ``seed`` a seeded random sample of ``limit`` (in file order)."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    if seed is None:
        return list(prompts[:limit])
    picked = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in picked]


HOLDOUT_DEFAULTS = {"fraction": 0.5, "seed": 0}


def holdout(prompts: list[Prompt], part: str, fraction: float = 0.5, seed: int = 0) -> list[Prompt]:
    """One part of a seeded, disjoint split: a seeded permutation of all prompts, its first
    round(fraction * n) (at least one, at most n - 1) are "select" (heads chosen, baselines fitted),
    the rest "measure" (every method measured). Each part keeps file order and prompt ids, so the
    two parts' rows in the ``prompts`` table show that they are disjoint."""
    if len(prompts) < 2:
        raise UsageError(f"holdout needs at least 2 prompts to split, got {len(prompts)}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    cut = min(max(round(fraction * len(prompts)), 1), len(prompts) - 1)
    chosen = sorted(order[:cut] if part == "select" else order[cut:])
    return [prompts[i] for i in chosen]


def load(spec: dict) -> list[Prompt]:
    """Prompts of a dataset spec (a suite entry: kind, parameters, holdout part, limit, seed)."""
    from shb.registry import DATASETS, resolve

    factory = resolve(DATASETS, spec["kind"], "dataset")
    params = {k: v for k, v in spec.items()
              if k not in ("id", "kind", "limit", "seed", "format", "system", "description", "too_long", "holdout")}
    try:
        prompts = factory(**params)
    except OSError as exc:
        raise UsageError(f"dataset '{spec.get('id', spec['kind'])}': cannot read {exc.filename or spec.get('path')}"
                         f" ({exc.strerror or exc})") from None
    if not prompts:
        raise UsageError(f"dataset '{spec.get('id', spec['kind'])}' has no prompts"
                         + (f" (file {spec['path']})" if spec.get("path") else ""))
    if spec.get("holdout"):
        prompts = holdout(prompts, **{**HOLDOUT_DEFAULTS, **spec["holdout"]})
    return select(prompts, spec.get("limit"), spec.get("seed"))


def identity(spec: dict, prompts: list[Prompt] | None = None) -> tuple[str, int]:
    """(content hash, number of prompts) of a dataset spec.

    A benchmark fetched from upstream is pinned by its sha256, so its identity is known without
    downloading it (``shb plan`` works offline); anything else is hashed from its prompts."""
    upstream = UPSTREAM.get(spec["kind"])
    if upstream is not None and not spec.get("path"):
        limit = spec.get("limit")
        rows = upstream.rows
        key = {"upstream": upstream.sha256, "limit": limit, "seed": spec.get("seed")}
        if upstream.choice is not None:
            name, default, counts = upstream.choice
            key[name] = spec.get(name, default)
            rows = dict(counts).get(key[name], rows)
        if spec.get("holdout"):
            split = {**HOLDOUT_DEFAULTS, **spec["holdout"]}
            key["holdout"] = split
            cut = min(max(round(split["fraction"] * rows), 1), rows - 1)
            rows = cut if split["part"] == "select" else rows - cut
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return digest, min(limit or rows, rows)
    prompts = prompts if prompts is not None else load(spec)
    return content_hash(prompts), len(prompts)


def content_hash(prompts: list[Prompt]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(f"{prompt.prompt_id}\t{prompt.text}\n".encode())
    return digest.hexdigest()


def format_prompt(text: str, fmt: str = "direct", tokenizer=None, system: str | None = None) -> str:
    """The string fed to the model: ``direct`` (raw query), ``template`` (the paper's), ``chat``."""
    if fmt == "direct":
        return text
    if fmt == "template":
        return PAPER_TEMPLATE.format(q=text)
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UsageError("prompt format 'chat' needs a tokenizer with a chat template; use 'direct' or 'template'")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise UsageError(f"unknown prompt format '{fmt}'; known: direct, template, chat")
