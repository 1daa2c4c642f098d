"""GGUF model files: where a suite's GGUF is, whether transformers can read it, what it is.

An ``hf`` model names a GGUF file in one of three ways:

- ``"gguf_file": "/path/model.gguf"`` (no ``path``): a local file;
- ``"path": DIR_OR_HUB_ID, "gguf_file": "model.gguf"``: a file inside a local directory or a hub repository;
- ``"fetch": "smollm2"``: a model ``shb models fetch`` puts in shb's cache (``shb.models.fetch``).

transformers (with the ``gguf`` package) dequantizes the weights to the suite's dtype and reads the
tokenizer and chat template from the file, so the file's sha256 names all three: it is the fingerprint.
``check`` reads only the header (no torch): a file that is not a GGUF, is truncated, holds an architecture
or a quantization transformers cannot dequantize, or needs the missing ``gguf`` package is refused
before any work.
"""

from __future__ import annotations

from pathlib import Path

from shb.errors import ModelNotFound, UsageError

GGUF_MAGIC = b"GGUF"
INSTALL = "pip install gguf (or: pip install 'shb[gguf]')"


def is_gguf_spec(spec: dict) -> bool:
    return spec.get("kind") == "hf" and bool(spec.get("gguf_file") or spec.get("fetch"))


def describe(spec: dict) -> str:
    """A short human name for where the GGUF comes from (runs.source, messages)."""
    if spec.get("fetch"):
        return f"fetch:{spec['fetch']}"
    if spec.get("path"):
        return f"{spec['path']}#{spec['gguf_file']}"
    return str(spec["gguf_file"])


def spec_from_cli(source: str, gguf_file: str | None) -> dict | None:
    """The model spec of a command line's ``--model`` (and ``--gguf-file``), or None when it is not a GGUF."""
    if source.startswith("fetch:"):
        return {"kind": "hf", "fetch": source.split(":", 1)[1]}
    if gguf_file:
        return {"kind": "hf", "path": source, "gguf_file": gguf_file}
    if source.endswith(".gguf"):
        return {"kind": "hf", "gguf_file": source}
    return None


def locate(spec: dict, model_id: str | None = None, download: bool = True) -> Path:
    """The local GGUF file of a GGUF spec; ModelNotFound (with how to get it) when it is not there."""
    name = model_id or spec.get("id") or describe(spec)
    if spec.get("fetch"):
        from shb.models import fetch

        return fetch.fetched_file(spec["fetch"], name)
    gguf_file = str(spec["gguf_file"])
    if not spec.get("path"):
        local = Path(gguf_file).expanduser()
        if not local.is_file():
            raise ModelNotFound(f"model '{name}': no GGUF file at {local.resolve()}; fix \"gguf_file\" (a local"
                                " .gguf file, or a file name inside \"path\")")
        return local
    source = spec["path"]
    directory = Path(source).expanduser()
    if directory.is_dir() or source.startswith((".", "/", "~")):
        local = directory / gguf_file
        if not local.is_file():
            raise ModelNotFound(f"model '{name}': no file {gguf_file} in {directory.resolve()}; fix \"gguf_file\""
                                " or \"path\"")
        return local
    return _hub_file(source, gguf_file, spec.get("revision"), name, download)


def _hub_file(repo: str, filename: str, revision: str | None, name: str, download: bool) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=True))
    except Exception:  # not cached
        if not download:
            raise ModelNotFound(f"model '{name}': {filename} of '{repo}' is not in the Hugging Face cache;"
                                f" `hf download {repo} {filename}` first") from None
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as exc:
        raise ModelNotFound(f"model '{name}': could not get {filename} from '{repo}' ({type(exc).__name__});"
                            f" `hf download {repo} {filename}` on a machine with access, or point \"gguf_file\""
                            " at a local copy") from None


def header(path: Path, model_id: str) -> dict:
    """{"architecture", "model_type", "layers", "heads", "hidden", "vocab", "types"} from the file's header,
    or UsageError naming what is wrong and how to fix it. Reads metadata only (memory-mapped), no torch."""
    where = f"model '{model_id}': {path}"
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise UsageError(f"{where} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); point \"gguf_file\""
                         " at a .gguf model file")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UsageError(f"{where}: reading GGUF files needs the gguf package, which is not installed: {INSTALL}") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # a short file fails its memory map or its tensor table
        raise UsageError(f"{where} is truncated or damaged ({type(exc).__name__}: {str(exc)[:80]}); download"
                         " it again (for a fetched model: `shb models fetch NAME --force`)") from None

    def field(key, default=None):
        value = reader.fields.get(key)
        if value is None:
            return default
        part = value.parts[value.data[0]]
        return bytes(part).decode("utf-8") if value.types and value.types[0].name == "STRING" else part.tolist()[0]

    arch = field("general.architecture")
    return {"architecture": arch, "layers": field(f"{arch}.block_count"), "heads": field(f"{arch}.attention.head_count"),
            "hidden": field(f"{arch}.embedding_length"), "types": sorted({t.tensor_type.name for t in reader.tensors}),
            "n_params": sum(int(t.n_elements) for t in reader.tensors)}


def _dequantizable() -> set[str]:
    """Tensor types gguf can turn back into floats (what transformers' GGUF loader calls)."""
    from gguf import quants

    return {"F32", "F16", "F64"} | {t.name for t in getattr(quants, "_type_traits", {})}


def check(path: Path, model_id: str) -> dict:
    """The header, after checking that transformers can load this file into a model shb supports."""
    info = header(path, model_id)
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING  # no torch needed for the table

    from shb.registry import ARCHITECTURES

    arch = info["architecture"]
    model_type = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}.get(arch, arch)
    if model_type not in GGUF_CONFIG_MAPPING or model_type in ("general", "tokenizer"):
        raise UsageError(f"model '{model_id}': {path} holds a '{arch}' model, which transformers cannot read from GGUF;"
                         f" architectures it reads: {', '.join(k for k in GGUF_CONFIG_MAPPING if k not in ('general', 'tokenizer'))}")
    if model_type not in ARCHITECTURES:
        raise UsageError(f"model '{model_id}': {path} holds a '{arch}' model; shb supports: {', '.join(sorted(ARCHITECTURES))}")
    unsupported = [t for t in info["types"] if t not in _dequantizable()]
    if unsupported:
        raise UsageError(f"model '{model_id}': {path} uses quantization {', '.join(unsupported)}, which transformers"
                         " cannot dequantize; use a GGUF with another quantization (Q4_0, Q4_1, Q8_0, Q4_K, F16, ...)")
    info["model_type"] = model_type
    return info


def geometry(spec: dict) -> dict | None:
    """Layers, heads and parameters from the header (for `shb plan`), or None if the file is not readable."""
    try:
        info = header(locate(spec, download=False), spec.get("id", ""))
    except (ModelNotFound, UsageError, OSError):
        return None
    return {"layers": info["layers"], "heads": info["heads"], "hidden": info["hidden"], "n_params": info["n_params"]}


def load(spec: dict, dtype, device, attn_implementation: str | None = None):
    """Load a GGUF model with transformers: dequantized to ``dtype``; tokenizer and template from the file."""
    path = locate(spec)
    check(path, spec.get("id", describe(spec)))
    from shb.models import load_directory

    return load_directory(str(path.parent), describe(spec), dtype, device, None, False, False,
                           attn_implementation, gguf_file=path.name)
