"""Checks that stop bad input before any work, each naming the suite path and the fix.

Three moments:
  ``geometry_problems(suite)``     at ``shb validate`` (and again at run start): head names, k, Sahara
                                   steps and layer lists against the model's geometry where it is known
                                   without loading the model (toy config, config.json on disk, the
                                   suite's ``geometry`` hint);
  ``run_problems(suite, device)``  at ``shb run`` start: the device exists, the cache is writable before
                                   a toy model is trained, every hf model directory is an architecture
                                   shb supports and needs no remote code it was not allowed;
  ``loaded_problems(...)``         after a model loads, before its first unit: the geometry checks with
                                   the real model, and every prompt fits the model's context.
No torch at module level.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from shb.errors import SuiteError, UsageError


def _metrics_on(suite, model_id: str):
    for i, metric in enumerate(suite.metrics):
        wanted = metric.get("models")
        if wanted is None or model_id in wanted:
            yield i, metric


def _head_problems(suite, model_id: str, layers: int, heads: int, where: str) -> list[str]:
    """Problems of every metric that runs on a model with ``layers`` x ``heads``: the layers a sweep
    names, then each kind's own checks (``Metric.geometry_problems``: head names, k, Sahara steps)."""
    from shb.registry import metric as metric_kind

    problems = []
    geometry = f"model '{model_id}' has {layers} layers x {heads} heads ({where})"
    for i, metric in _metrics_on(suite, model_id):
        swept = metric.get("layers")
        if isinstance(swept, list):
            bad = [layer for layer in swept if isinstance(layer, int) and layer >= layers]
            if bad:
                problems.append(f"/metrics/{i}/layers: {bad} out of range: {geometry}; use layers 0-{layers - 1}")
        problems += metric_kind(metric.kind).geometry_problems(i, metric.params, layers, heads, geometry)
    return problems


def geometry_problems(suite) -> list[str]:
    """What can be checked without the model: heads, k, steps, layers against a known geometry."""
    from shb.plan import geometry

    problems = []
    for model in suite.models:
        try:
            geom = _toy_geometry() if model.kind == "toy" else geometry(model)
        except (OSError, ValueError):  # an unreadable config.json is reported at run start
            geom = None
        if not geom or not geom.get("layers") or not geom.get("heads"):
            continue
        where = "the toy model's config" if model.kind == "toy" else (
            "config.json" if not model.get("geometry") else "config.json or the suite's geometry hint")
        problems += _head_problems(suite, model.id, int(geom["layers"]), int(geom["heads"]), where)
    return list(dict.fromkeys(problems))


def _toy_geometry() -> dict:
    from shb.models import toy

    config = toy.config_dict()
    return {"layers": config["num_hidden_layers"], "heads": config["num_attention_heads"]}


def check_static(suite) -> None:
    problems = geometry_problems(suite)
    if problems:
        raise SuiteError(suite.path, problems)


# -- run start --------------------------------------------------------------------------------------
def check_device(device: str | None, source: str = "--device") -> None:
    """Refuse a device this machine does not have (before any model loads)."""
    if device in (None, "auto", "cpu"):
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{source} {device}: this machine has no CUDA device (torch {torch.__version__},"
                             " cuda available: False); use --device cpu or auto")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"{source} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        return
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{source} mps: Apple MPS is not available on this machine; use --device cpu or auto")
        return
    raise UsageError(f"{source} {device}: unknown device; use cpu, cuda, cuda:N, mps or auto")


def writable_dir(path: Path, what: str, fix: str) -> None:
    """Raise UsageError unless ``path`` is (or can be made) a directory shb can write in."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".shb-write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"{what} {path} is not writable ({exc.strerror or exc}); {fix}") from None


def _toy_cached(spec: dict) -> bool:
    import importlib

    from shb.models import toy_variant

    build = importlib.import_module("shb.models.toy.build")  # the module (the package exports a function `build`)

    recipe = build.resolve(spec.get("seed", 0), **toy_variant(spec))
    return (build.cache_root() / build._key(recipe) / "toy.json").exists()


def check_cache_for_toys(suite_models) -> None:
    """A toy model that is not cached yet is trained (about a minute) and then saved: check the cache
    first, so an unwritable SHB_CACHE fails at once rather than after the training."""
    import shb

    if any(m.kind == "toy" and not _toy_cached(m.spec()) for m in suite_models):
        writable_dir(shb.cache_dir() / "toy", "the shb cache (SHB_CACHE)",
                     "set SHB_CACHE to a writable directory")


def config_problems(model_id: str, path: str, pointer: str, trust_remote_code: bool = False) -> list[str]:
    """An hf model directory's config.json: parseable, a supported architecture, no unallowed remote code."""
    from shb.models.layout import SUPPORTED

    config_file = Path(path).expanduser() / "config.json"
    if not config_file.is_file():
        return []
    import json

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{pointer}: model '{model_id}': {config_file} is not readable JSON ({exc})"]
    if not isinstance(config, dict):
        return [f"{pointer}: model '{model_id}': {config_file} is not a JSON object"]
    problems = []
    if config.get("auto_map") and not trust_remote_code:
        problems.append(f"{pointer}: model '{model_id}' ships its own modelling code (auto_map in {config_file});"
                        " shb does not run it unless the suite says \"trust_remote_code\": true")
        return problems
    arch = config.get("model_type")
    if arch not in SUPPORTED and not config.get("auto_map"):
        problems.append(f"{pointer}: model '{model_id}' is a '{arch}' model ({config_file}); shb supports decoder-only"
                        f" architectures: {', '.join(sorted(SUPPORTED))}")
    return problems


def dataset_path_problems(suite) -> list[str]:
    """Each dataset file the suite names exists and is a regular file (not a pipe, a device, a link loop)."""
    import os

    from shb.paths import not_a_file

    problems = []
    for i, dataset in enumerate(suite.datasets):
        path = dataset.get("path")
        if isinstance(path, str):
            problem = not_a_file(Path(path).expanduser())
            if problem:
                problems.append(f"/datasets/{i}/path: dataset '{dataset.id}': {problem}"
                                f" {os.path.abspath(Path(path).expanduser())}; fix its \"path\" (relative paths"
                                " start at the suite file's directory)")
    return problems


def run_problems(suite, device: str | None) -> None:
    """Everything about the machine and the model files that must hold before a run starts."""
    check_device(device or suite.defaults.get("device"), "--device" if device else "the suite's defaults.device")
    problems = dataset_path_problems(suite)
    for i, model in enumerate(suite.models):
        if model.kind == "hf" and model.get("path") and not model.get("gguf_file"):
            problems += config_problems(model.id, model.get("path"), f"/models/{i}",
                                        bool(model.get("trust_remote_code", False)))
    if problems:
        raise SuiteError(suite.path, problems)
    check_static(suite)
    check_cache_for_toys(suite.models)


# -- after a model loads ----------------------------------------------------------------------------
def context_length(lm) -> int | None:
    """Positions the model can attend over (None: no limit known)."""
    config = lm.model.config
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def loaded_problems(suite, model_id: str, lm) -> None:
    """The geometry checks with the loaded model (a hub model's geometry is known only now)."""
    problems = _head_problems(suite, model_id, lm.n_layers, lm.n_heads, "as loaded")
    if problems:
        raise SuiteError(suite.path, problems)


def fit_prompts(dataset, prompts, formatted: list[str], lm, pointer: str):
    """Every formatted prompt must fit the model's context: refused, or with ``"too_long": "truncate"``
    cut (the raw request is shortened, keeping its start, until the formatted prompt fits).

    Returns (formatted, truncations) where truncations lists {prompt_id, n_tokens, kept_tokens}."""
    from shb.models import encode_prompt

    limit = context_length(lm)
    if limit is None:
        return formatted, []
    lengths = [len(encode_prompt(lm.tokenizer, text)) for text in formatted]
    long = [(p, n) for p, n in zip(prompts, lengths) if n > limit]
    if not long:
        return formatted, []
    if dataset.get("too_long", "error") != "truncate":
        shown = ", ".join(f"prompt {p.prompt_id} ({n} tokens)" for p, n in long[:3])
        raise UsageError(f"{pointer}: {len(long)} prompt(s) of dataset '{dataset.id}' are longer than model"
                         f" '{lm.source}''s context of {limit} tokens: {shown}; shorten them, drop them, or set"
                         " \"too_long\": \"truncate\" on the dataset")
    from shb.datasets import format_prompt

    out, truncations = list(formatted), []
    index = {p.prompt_id: i for i, p in enumerate(prompts)}
    for prompt, n in long:
        raw = lm.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
        keep = max(1, len(raw) - (n - limit) - 1)
        while True:
            text = lm.tokenizer.decode(raw[:keep], skip_special_tokens=True)
            candidate = format_prompt(text, dataset.get("format", "direct"), lm.tokenizer, dataset.get("system"))
            kept = len(encode_prompt(lm.tokenizer, candidate))
            if kept <= limit or keep == 1:
                break
            keep = max(1, keep - max(1, kept - limit))
        if kept > limit:
            raise UsageError(f"{pointer}: prompt {prompt.prompt_id} of dataset '{dataset.id}' cannot be truncated to"
                             f" fit {limit} tokens (the format alone is longer)")
        out[index[prompt.prompt_id]] = candidate
        truncations.append({"prompt_id": prompt.prompt_id, "n_tokens": n, "kept_tokens": kept})
    return out, truncations
