"""What a model *is*, for unit ids: a fingerprint of its weights, tokenizer and chat template.

No torch here: ``shb plan`` computes fingerprints offline.

- toy model: the full build recipe (defaults filled in) and ``TOY_VERSION``. The toy build is
  deterministic, so the recipe names the weights, tokenizer and chat template exactly.
- local directory: sha256 of each weight file and of config.json / generation_config.json,
  of the tokenizer files, and of the chat template text. A file's hash is cached under
  ``$SHB_CACHE/fingerprints`` keyed by (resolved path, size, mtime_ns, inode), so gigabytes of
  weights are read once, not on every ``shb plan`` or ``shb run``.
- GGUF file (``gguf_file`` or ``fetch``): the file's sha256 (cached as above) for all three.
- hub id: the resolved commit sha. A 40-hex ``revision`` is used as is; otherwise the hub API is
  asked (unless HF_HUB_OFFLINE is set), then the local Hugging Face cache's ``refs``. A commit
  pins weights, tokenizer and chat template together. ``shb run`` loads exactly that commit.

A fingerprint that cannot be known (hub id neither cached nor reachable, directory missing)
has ``weights = None`` and ``why``; the plan says so instead of guessing, and ``shb run`` refuses
(it would otherwise store results under an id that does not name their weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from shb.errors import ModelNotFound

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 1 << 24


def is_known(fp: dict) -> bool:
    return fp.get("weights") is not None


def _unknown(why: str) -> dict:
    return {"weights": None, "tokenizer": None, "chat_template": None, "why": why}


def fingerprint(spec: dict) -> dict:
    """{"weights", "tokenizer", "chat_template"} for a suite model spec (kind toy or hf)."""
    if spec["kind"] == "toy":
        return _toy(spec)
    from shb.models import gguf

    if gguf.is_gguf_spec(spec):  # one file holds weights, tokenizer and chat template
        return _gguf(spec, gguf)
    path = spec["path"]
    local = Path(path).expanduser()
    if local.exists() or path.startswith((".", "/", "~")):
        return directory_fingerprint(local)
    return _hub(path, spec.get("revision"))


def _gguf(spec: dict, gguf) -> dict:
    """The GGUF file's sha256 names weights, tokenizer and chat template (all three are in the file)."""
    try:
        path = gguf.locate(spec, download=False)
    except ModelNotFound as exc:
        return _unknown(str(exc).splitlines()[0])
    digest = f"gguf:{file_sha256(path)}"
    return {"weights": digest, "tokenizer": digest, "chat_template": digest}


# -- toy -----------------------------------------------------------------------------------------------
def _toy(spec: dict) -> dict:
    from shb.models import toy, toy_variant

    recipe = toy.resolve(spec.get("seed", 0), **toy_variant(spec))
    key = _sha_text(json.dumps({"toy_version": toy.TOY_VERSION, "recipe": recipe}, sort_keys=True))
    # The toy's tokenizer and chat template are code, versioned by TOY_VERSION with the weights.
    return {"weights": f"toy:{key}", "tokenizer": f"toy-v{toy.TOY_VERSION}", "chat_template": f"toy-v{toy.TOY_VERSION}"}


# -- local directory -------------------------------------------------------------------------------
def directory_fingerprint(directory: Path) -> dict:
    if not directory.is_dir():
        return _unknown(f"no directory at {directory}")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    weights = [p for p in files if p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_FILES
               or p.name.endswith((".safetensors.index.json", ".bin.index.json"))]
    if not any(p.suffix in WEIGHT_SUFFIXES for p in weights):
        return _unknown(f"no weight files in {directory}")
    tokenizer = [p for p in files if p.name in TOKENIZER_FILES]
    return {"weights": _files_hash(weights), "tokenizer": _files_hash(tokenizer) if tokenizer else None,
            "chat_template": chat_template_hash(directory)}


def chat_template_text(directory: Path) -> str | None:
    """The chat template as transformers finds it: chat_template.jinja, .json, or tokenizer_config.json."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
        path = directory / name
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get(key)
            except (ValueError, AttributeError):
                continue
            if value:
                return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return None


def chat_template_hash(directory: Path) -> str | None:
    text = chat_template_text(directory)
    return None if text is None else _sha_text(text)


def _files_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(f"{path.name}\t{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, cached by (path, size, mtime_ns, inode): a changed file is reread."""
    from shb import cache_dir

    path = path.resolve()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
    entry = cache_dir() / "fingerprints" / (_sha_text(str(path))[:32] + ".json")
    try:
        cached = json.loads(entry.read_text())
        if cached.get("path") == str(path) and cached.get("stamp") == stamp:
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    value = digest.hexdigest()
    try:  # best effort: a read-only cache only costs a reread next time
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(path), "stamp": stamp, "sha256": value}))
        tmp.replace(entry)
    except OSError:
        pass
    return value


def _sha_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- hub -----------------------------------------------------------------------------------------------
def _hub(repo: str, revision: str | None) -> dict:
    commit, why = resolve_commit(repo, revision)
    if commit is None:
        return _unknown(why)
    # A commit pins every file of the repository: tokenizer and chat template included.
    return {"weights": f"hub:{repo}@{commit}", "tokenizer": f"commit:{commit}", "chat_template": f"commit:{commit}",
            "commit": commit}


_COMMITS: dict[tuple, tuple] = {}


def resolve_commit(repo: str, revision: str | None) -> tuple[str | None, str | None]:
    """(commit sha, None) or (None, why not); the hub is asked once per process."""
    if revision and _SHA.match(revision):
        return revision, None
    key = (repo, revision)
    if key not in _COMMITS:
        _COMMITS[key] = _resolve_commit(repo, revision)
    return _COMMITS[key]


def _resolve_commit(repo: str, revision: str | None) -> tuple[str | None, str | None]:
    ref = revision or "main"
    offline = _offline()
    if not offline:
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(repo, revision=revision, timeout=10).sha
            if sha:
                return sha, None
        except Exception:  # unreachable, gated, missing: fall back to the local cache
            pass
    try:
        from huggingface_hub import constants

        refs = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--")) / "refs" / ref
        if refs.is_file():
            return refs.read_text().strip(), None
    except Exception:
        pass
    where = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    return None, (f"'{repo}' revision '{ref}' is not in the local Hugging Face cache and {where}; "
                  f"download it (`hf download {repo}`) or pin \"revision\" to a commit sha")


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False
