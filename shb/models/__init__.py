"""Load models: the built-in toy model, local directories and hub ids.

``load`` returns a ``LoadedModel`` (model, tokenizer, attention layout). Importing this
package does not import torch; ``check_available`` and ``geometry`` let ``shb plan`` and
``shb run`` fail before any work when weights are missing, without loading them.

Security: weights load from safetensors only, and code shipped in a model repository never
runs, unless the caller opts in (``allow_pickle``, ``trust_remote_code``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shb.errors import ModelNotFound, UsageError

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    layout: Any
    source: str
    path: str

    @property
    def n_layers(self) -> int:
        return self.layout.n_layers

    @property
    def n_heads(self) -> int:
        return self.layout.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.layout.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.layout.head_dim

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a formatted prompt, exactly as scoring and generation feed it to the model.

    The tokenizer's special tokens are added unless the text already starts with the BOS text: a
    chat template usually writes BOS itself, and adding it again would put two in front."""
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    ids = tokenizer(text, add_special_tokens=add)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {text[:40]!r} tokenizes to no tokens")
    return list(ids)


def resolve_device(device: str | None = None) -> str:
    """"auto" (or None): cuda when there is one, else cpu."""
    if device in (None, "auto"):
        import torch

        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    return device


def resolve_dtype_name(dtype: str | None, device: str) -> str:
    """The dtype name a model loads in: "auto" (or None) is bfloat16 on cuda, float32 elsewhere.

    No torch: ``shb plan`` hashes this name into unit ids, ``resolve_dtype`` loads with it."""
    if dtype in (None, "auto"):
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}'; known: {', '.join(DTYPES)}")
    return dtype


def guess_device(device: str | None = None) -> str:
    """``resolve_device`` without torch, for ``shb plan``: "auto" is cuda when an NVIDIA driver is
    loaded and CUDA_VISIBLE_DEVICES does not hide every GPU. ``shb run`` resolves with torch."""
    if device not in (None, "auto"):
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    return "cuda" if Path("/proc/driver/nvidia/version").exists() else "cpu"


def resolve_dtype(dtype: str | None, device: str):
    import torch

    return getattr(torch, resolve_dtype_name(dtype, device))


def _is_toy(source: str) -> bool:
    return source == "toy" or source.startswith("toy:")


def toy_path(seed: int = 0, quiet: bool = False, **variant) -> Path:
    from transformers.utils import logging as hf_logging

    from shb.models import toy

    hf_logging.disable_progress_bar()  # the toy build draws its own bar
    return Path(toy.ensure(seed=seed, quiet=quiet, **variant))


def _weight_files(directory: Path) -> tuple[list[Path], list[Path]]:
    safe = sorted(directory.glob("*.safetensors"))
    pickled = sorted(p for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    return safe, pickled


def check_spec(spec: dict, model_id: str) -> None:
    """Fail before any work unless an ``hf`` model spec's weights can be had (and, for a GGUF, read)."""
    from shb.models import gguf

    if gguf.is_gguf_spec(spec):
        gguf.check(gguf.locate(spec, model_id), model_id)
        return
    check_available(spec.get("path"), revision=spec.get("revision"), allow_pickle=spec.get("allow_pickle", False),
                    model_id=model_id)


def check_available(source: str, *, revision: str | None = None, allow_pickle: bool = False, model_id: str | None = None) -> None:
    """Raise ModelNotFound (naming the model, where shb looked and how to supply it) unless weights can be had."""
    name = model_id or source
    if _is_toy(source):
        return
    local = Path(source).expanduser()
    if local.exists() or source.startswith((".", "/", "~")):
        if not local.is_dir():
            raise ModelNotFound(f"model '{name}': no directory at {local.resolve()}.\n"
                                "  Give \"path\" as a directory holding config.json and *.safetensors, or a hub id.")
        if not (local / "config.json").is_file():
            raise ModelNotFound(f"model '{name}': {local.resolve()} has no config.json; it is not a Hugging Face model directory")
        safe, pickled = _weight_files(local)
        if not safe and not (allow_pickle and pickled):
            if pickled:
                raise ModelNotFound(_pickle_only(name, str(local.resolve()), [p.name for p in pickled]))
            raise ModelNotFound(f"model '{name}': no *.safetensors weights in {local.resolve()}.")
        return
    _check_hub(source, revision, name, allow_pickle)


def _pickle_only(name: str, where: str, files: list[str]) -> str:
    shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
    return (f"model '{name}': {where} has only pickle weights ({shown}), no *.safetensors; shb loads safetensors "
            "only unless told otherwise.\n  Either add \"allow_pickle\": true to this model in the suite (shb then "
            "reads them with torch.load(weights_only=True), which rebuilds tensors and runs no code from the file), "
            "or convert them to safetensors and point \"path\" at the converted copy.")


def _weight_names(names) -> tuple[list[str], list[str]]:
    names = sorted(str(n).rsplit("/", 1)[-1] for n in names)
    return ([n for n in names if n.endswith(".safetensors")],
            [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")) and not n.startswith("training_args")])


def _check_hub(repo: str, revision: str | None, name: str, allow_pickle: bool = False) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(repo, revision=revision, local_files_only=True, allow_patterns=["config.json"])
    except Exception:  # not in the local cache: ask the hub whether it can be downloaded
        snapshot = None
    if snapshot is not None:
        safe, pickled = _weight_names(p.name for p in Path(snapshot).iterdir())
        if safe or (allow_pickle and pickled):
            return
        if pickled:
            raise ModelNotFound(_pickle_only(name, f"'{repo}' (in the Hugging Face cache)", pickled))
        # config cached without weights: the hub may still have them (checked below)
    from huggingface_hub import constants

    how = (f"  Download it on a machine with access (`hf download {repo}`), or point \"path\" at a local copy;"
           f" for a gated model (Llama-2, Llama Guard), accept its licence on the hub and run `hf auth login`.")
    if os.environ.get("HF_HUB_OFFLINE") or constants.HF_HUB_OFFLINE:
        state = "has its config but no weights in" if snapshot is not None else "is not in"
        raise ModelNotFound(f"model '{name}': '{repo}' {state} the Hugging Face cache ({constants.HF_HUB_CACHE})"
                            f" and HF_HUB_OFFLINE is set.\n{how}")
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, timeout=15)
    except Exception as exc:  # network down, gated, missing: all end the same way for the user
        reason = type(exc).__name__
        raise ModelNotFound(f"model '{name}': '{repo}' is not a local directory, not in the Hugging Face cache"
                            f" ({constants.HF_HUB_CACHE}), and the hub could not be reached for it ({reason}).\n{how}") from None
    safe, pickled = _weight_names(s.rfilename for s in (info.siblings or []))
    if pickled and not safe and not allow_pickle:
        raise ModelNotFound(_pickle_only(name, f"'{repo}' on the hub", pickled))


def config_dict(source: str, revision: str | None = None) -> dict | None:
    """The model's config.json if it is on disk (local directory, toy cache or hub cache); no download."""
    if _is_toy(source):
        return None
    local = Path(source).expanduser()
    if (local / "config.json").is_file():
        return json.loads((local / "config.json").read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:
        return None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def geometry_from_config(config: dict) -> dict:
    text = config.get("text_config", config)
    layers = text.get("num_hidden_layers") or text.get("n_layer")
    heads = text.get("num_attention_heads") or text.get("n_head")
    hidden = text.get("hidden_size") or text.get("n_embd")
    vocab = text.get("vocab_size")
    inter = text.get("intermediate_size") or (4 * hidden if hidden else None)
    n_params = None
    if layers and hidden and vocab and inter:
        # attention 4 d^2 + gated MLP 3 d i per layer, plus embeddings: a plan-time estimate only.
        n_params = layers * (4 * hidden * hidden + 3 * hidden * inter) + 2 * vocab * hidden
    return {"layers": layers, "heads": heads, "hidden": hidden, "n_params": n_params}


def load_directory(path: str, source: str, dtype, device, revision, trust_remote_code, allow_pickle,
                    attn_implementation: str | None = None, gguf_file: str | None = None) -> LoadedModel:
    import torch  # noqa: F401  (fail here, with a clear import error, before transformers)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # shb draws its own progress; transformers' bars would interleave

    from shb.models.layout import detect

    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if gguf_file:  # weights dequantized to `dtype`; tokenizer and chat template read from the same file
        kwargs["gguf_file"] = gguf_file
        with _gguf_bar_off():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra, **_dense_gguf(), **kwargs)
        return _finish(model, AutoTokenizer.from_pretrained(path, **kwargs), device, source, path, detect)
    # safetensors only, unless the suite opts in; then pickle files are read by torch.load(weights_only=True),
    # which rebuilds tensors and plain containers and refuses any other object, so no code in them runs.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=None if allow_pickle else True,
                                                 weights_only=True, **extra, **kwargs)
    return _finish(model, AutoTokenizer.from_pretrained(path, **kwargs), device, source, path, detect)


def _dense_gguf() -> dict:
    """Ask for dense weights explicitly. Newer transformers keep a GGUF's weights packed and compute with
    matmul kernels where the `kernels` package has one for the device, silently and per quantization type;
    shb ablates, edits and exports plain weights (baselines, surgery), and a result must not depend on which
    kernels happened to be installed. Older transformers always dequantize and have no such config."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


@contextlib.contextmanager
def _gguf_bar_off():
    """transformers draws its GGUF conversion bar with tqdm directly, past disable_progress_bar(); inside a
    run it would break shb's own progress display. Swap the module's tqdm for a disabled one while loading."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _finish(model, tokenizer, device, source, path, detect) -> LoadedModel:
    model.to(device).eval()
    model.requires_grad_(False)
    tokenizer.padding_side = "left"  # the last prompt token sits at position -1 in every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, layout=detect(model), source=source, path=str(path))


def load(source: str, dtype: str | None = None, device: str | None = None, *, revision: str | None = None,
         trust_remote_code: bool = False, allow_pickle: bool = False, toy_variant: dict | None = None,
         quiet: bool = False, attn_implementation: str | None = None, gguf_file: str | None = None) -> LoadedModel:
    """Load a model: ``"toy"`` / ``"toy:SEED"``, a local directory, or a hub id; a GGUF file with
    ``gguf_file`` (a file in that directory or repository) or as ``source`` itself (a path ending in .gguf).

    ``quiet`` hides the progress bar of a first-use toy build."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if gguf_file or source.endswith(".gguf"):
        from shb.models import gguf

        spec = {"kind": "hf", "path": source, "gguf_file": gguf_file} if gguf_file else {"kind": "hf", "gguf_file": source}
        return gguf.load({**spec, "revision": revision}, torch_dtype, device, attn_implementation)
    if _is_toy(source):
        seed = int(source.split(":", 1)[1]) if ":" in source else 0
        path = toy_path(seed, quiet=quiet, **(toy_variant or {}))
        return load_directory(str(path), source, torch_dtype, device, None, False, False, attn_implementation)
    check_available(source, revision=revision, allow_pickle=allow_pickle)
    return load_directory(source, source, torch_dtype, device, revision, trust_remote_code, allow_pickle,
                           attn_implementation)


# -- suite model kinds (registered in shb.registry.MODELS) -------------------------------------------
def toy_variant(spec: dict) -> dict:
    return {k: spec[k] for k in ("base_seed", "align_seed", "align_data", "align", "align_heads", "align_dropout", "align_steps") if k in spec}


def load_toy_spec(spec: dict, *, dtype=None, device=None, quiet=False) -> LoadedModel:
    if spec.get("stage", "aligned") == "base":
        # the stage-1 toy before alignment: an unaligned reference for baselines that compare two models
        from shb.models import toy

        device = resolve_device(device)
        path = toy.ensure_base(spec.get("seed", 0), quiet=quiet, **toy_variant(spec))
        return load_directory(str(path), source_of(spec), resolve_dtype(spec.get("dtype", dtype), device), device,
                               None, False, False)
    return load(f"toy:{spec.get('seed', 0)}", dtype=spec.get("dtype", dtype), device=device,
                toy_variant=toy_variant(spec), quiet=quiet, attn_implementation=spec.get("attn_implementation"))


def load_hf_spec(spec: dict, *, dtype=None, device=None, quiet=False) -> LoadedModel:
    from shb.models import gguf

    if gguf.is_gguf_spec(spec):
        device = resolve_device(device)
        return gguf.load(spec, resolve_dtype(spec.get("dtype", dtype), device), device, spec.get("attn_implementation"))
    return load(spec["path"], dtype=spec.get("dtype", dtype), device=device, revision=spec.get("revision"),
                trust_remote_code=spec.get("trust_remote_code", False), allow_pickle=spec.get("allow_pickle", False),
                attn_implementation=spec.get("attn_implementation"))


def load_resolved(spec: dict, device, quiet: bool = True) -> LoadedModel:
    """Load one suite model from its resolved load spec (``shb.plan.ModelLoad.spec``: revision pinned to
    the fingerprinted commit, dtype resolved); every model a unit uses, its own and a fit's reference,
    loads here. A library failure (a broken checkpoint, an unknown config) is the user's to fix, so it
    becomes one message naming the model rather than transformers' stack."""
    from shb.errors import ShbError
    from shb.registry import MODELS, resolve

    try:
        return resolve(MODELS, spec["kind"], "model")(spec, dtype=spec["dtype"], device=device, quiet=quiet)
    except (ShbError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ShbError(f"model '{spec['id']}' ({spec.get('path', spec['kind'])}) failed to load: "
                       f"{type(exc).__name__}: {first}") from exc


def source_of(spec: dict) -> str:
    from shb.models import gguf

    if gguf.is_gguf_spec(spec):
        return gguf.describe(spec)
    if spec["kind"] != "toy":
        return spec["path"]
    return f"toy:{spec.get('seed', 0)}" + ("/base" if spec.get("stage") == "base" else "")
