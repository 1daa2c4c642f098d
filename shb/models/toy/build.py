"""Build and cache the toy aligned model.

    build(out, seed=0, **variant) -> Path    # train stage 1 + stage 2, write an HF directory
    ensure(seed=0, **variant) -> Path        # the same, built once, cached under $SHB_CACHE/toy/<key>

Variant keys (all optional; every one is part of the cache key):
    base_seed, align_seed   seeds of stage 1 and stage 2 (default: `seed`)
    align_data              alignment mix, a key of train.ALIGN_DATA ("default", ...)
    align_heads             heads trained in stage 2, e.g. "1-3" or [(1, 3)] (several heads: where among
                            them the refusal lands is up to training); default: one head
                            chosen from base_seed (a layer in 1..L-2, any head), so that two
                            alignments of one base share their safety head and another base has
                            its own: the toy plants the paper's observation that safety heads are
                            shaped by pre-training (Zhou et al. 2025, Sec. 5), and paper-mini's
                            overlap report checks that shb recovers it
    align                   "head" (default): stage 2 trains only align_heads, a safety head
                            planted by construction (the tests' ground truth); "full": stage 2
                            trains every weight (train.align_full), so nothing decides in advance
                            which heads, if any, carry the refusal. Only "full" enters the recipe
                            and the cache key: every "head" toy keeps the key it always had.
    align_dropout           attention-head dropout rate p of stage 2 (AHD, Huang et al. 2025; train.HeadDropout),
                            seeded from align_seed; the benign examples (the authors' utility anchors)
                            run unmasked. Default 0: no dropout, and then absent from the recipe, so
                            every existing toy keeps its key; any p > 0 enters recipe and key
    base_steps, align_steps training steps of each stage (reduce for quick tests)
    layers, heads, hidden, intermediate   model size

``ensure_base(seed, **variant)`` gives the stage-1 model itself (complies with everything): the
unaligned reference of an aligned toy, shared by every alignment of that base.

Two aligned variants of one base (same base_seed and size, different
align_seed / align_data) share one cached base under $SHB_CACHE/toy/base-<key>,
the toy's version of Llama-2-chat vs Vicuna (one base, two alignments).

Determinism: the build runs with torch.set_num_threads(1) (restored after),
seeds every stage, and trains the tokenizer without randomness, so one seed
gives bit-identical safetensors on one machine and torch version. A build
writes into a temporary sibling directory and renames it into place, so a
killed build never leaves a half-written model behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

TOY_VERSION = 1
DEFAULTS = {
    "align_data": "default", "align_heads": None, "base_steps": 500, "align_steps": 250,
    "layers": 4, "heads": 8, "hidden": 64, "intermediate": 192,
}
_SEED_KEYS = ("base_seed", "align_seed")
ALIGN_MODES = ("head", "full")
_SIZE_KEYS = ("layers", "heads", "hidden", "intermediate")


def _normalise_heads(heads) -> list[list[int]]:
    if isinstance(heads, str):
        heads = [h.split("-") for h in heads.split(",") if h.strip()]
    try:
        out = sorted({(int(layer), int(head)) for layer, head in heads})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"align_heads must look like '1-3,2-0' or [(1, 3)], got {heads!r}") from exc
    if not out:
        raise ValueError("align_heads must name at least one head")
    return [list(h) for h in out]


def resolve(seed: int = 0, **variant) -> dict:
    """The full, JSON-able recipe of a toy model: defaults filled in, heads chosen."""
    unknown = set(variant) - set(DEFAULTS) - set(_SEED_KEYS) - {"align", "align_dropout"}
    if unknown:
        raise ValueError(f"unknown toy variant keys {sorted(unknown)}; "
                         f"known: {sorted(set(DEFAULTS) | set(_SEED_KEYS) | {'align', 'align_dropout'})}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    align = variant.pop("align", "head")
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {list(ALIGN_MODES)}, got {align!r}")
    dropout = variant.pop("align_dropout", 0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"align_dropout must be a number in [0, 1), got {dropout!r}")
    recipe = {**DEFAULTS, "base_seed": seed, "align_seed": seed, **variant}
    if dropout:
        recipe["align_dropout"] = float(dropout)  # only when on: p = 0 is the ordinary toy, same key
        recipe["align_dropout_spares"] = "benign"  # the anchors left unmasked (train.HeadDropout)
    if align == "full":
        if recipe["align_heads"] is not None:
            raise ValueError("align 'full' trains every weight; it takes no align_heads")
        recipe["align"] = "full"  # present only when not the default, so "head" keys stay as they were
        return recipe
    if recipe["align_heads"] is None:
        rng = random.Random(recipe["base_seed"])
        layer = rng.randrange(1, recipe["layers"] - 1) if recipe["layers"] > 2 else recipe["layers"] - 1
        recipe["align_heads"] = [[layer, rng.randrange(recipe["heads"])]]
    recipe["align_heads"] = _normalise_heads(recipe["align_heads"])
    outside = [f"{layer}-{head}" for layer, head in recipe["align_heads"]
               if not (0 <= layer < recipe["layers"] and 0 <= head < recipe["heads"])]
    if outside:
        raise ValueError(f"align_heads {','.join(outside)} outside the toy's {recipe['layers']} layers x "
                         f"{recipe['heads']} heads (layer-head, both counted from 0)")
    return recipe


def config_dict(seed: int = 0, **variant) -> dict:
    """The config.json fields that give the toy's geometry, without building it (no torch)."""
    from shb.models.toy.tokenizer import VOCAB_SIZE

    r = resolve(seed, **variant)
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "num_hidden_layers": r["layers"], "num_attention_heads": r["heads"],
            "num_key_value_heads": r["heads"], "hidden_size": r["hidden"],
            "intermediate_size": r["intermediate"], "vocab_size": VOCAB_SIZE,
            "head_dim": r["hidden"] // r["heads"]}


def _key(parts: dict) -> str:
    blob = json.dumps({"toy_version": TOY_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _base_part(recipe: dict) -> dict:
    return {k: recipe[k] for k in ("base_seed", "base_steps", *_SIZE_KEYS)}


def cache_root() -> Path:
    """$SHB_CACHE/toy (see shb.cache_dir)."""
    import shb

    return shb.cache_dir() / "toy"


@contextlib.contextmanager
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed reduction order -> bit-identical weights; fastest for this size
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _hf_bars_off():
    """Silence transformers' own load/save progress bars (quiet builds)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _progress(quiet: bool):
    """Yields make_callback(description, total) -> on_step(step, loss)."""
    if quiet:
        with _hf_bars_off():
            yield lambda description, total: None
        return
    from shb.progress import active

    if active() is not None:  # inside `shb run`: train on the run's live line, not a second display
        with _hf_bars_off():
            yield active().steps
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # shb's bar is the one display: transformers' own load/save bars would print between its updates
    with _hf_bars_off(), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(),
                                  TimeRemainingColumn()) as bar:
        def make(description, total):
            task = bar.add_task(description, total=total, loss=float("nan"))
            return lambda step, loss: bar.update(task, completed=step + 1, loss=loss)
        yield make


def _save(model, tokenizer, out: Path, meta: dict) -> Path:
    """Write an HF directory atomically: into a temp sibling, then rename to `out`."""
    from transformers import GenerationConfig

    out = Path(out)
    if out.exists():
        if not out.is_dir() or any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not an empty directory")
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a cache dir should read like any other
    try:
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "toy.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, out)  # atomic on one filesystem; fails if another build got there first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _train_base(recipe: dict, make_bar):
    from shb.models.toy import prompts, train
    from shb.models.toy import tokenizer as toy_tokenizer

    tok = toy_tokenizer.train_tokenizer(prompts.corpus())
    model = train.pretrain(tok, recipe["base_seed"], steps=recipe["base_steps"],
                           on_step=make_bar("base  ", recipe["base_steps"]),
                           **{k: recipe[k] for k in _SIZE_KEYS})
    return model, tok


def _align(model, tok, recipe: dict, make_bar, head_dropout: float | None = None):
    from shb.models.toy import train

    # head_dropout: None off; recipe's align_dropout when set (a test passes 0.0 to run the hooks at p = 0)
    head_dropout = recipe.get("align_dropout", head_dropout)
    if recipe.get("align") == "full":
        return train.align_full(model, tok, recipe["align_seed"], steps=recipe["align_steps"],
                                align_data=recipe["align_data"], head_dropout=head_dropout,
                                on_step=make_bar("align (all weights) ", recipe["align_steps"]))
    heads = [tuple(h) for h in recipe["align_heads"]]
    return train.align(model, tok, recipe["align_seed"], heads, steps=recipe["align_steps"],
                       align_data=recipe["align_data"], head_dropout=head_dropout,
                       on_step=make_bar("align ", recipe["align_steps"]))


def build(out, seed: int = 0, *, quiet: bool = False, **variant) -> Path:
    """Train the toy model (both stages, no cache) and write it to `out` (must not exist or be empty)."""
    recipe = resolve(seed, **variant)
    start = time.perf_counter()
    with _one_thread(), _progress(quiet) as make_bar:
        model, tok = _train_base(recipe, make_bar)
        _align(model, tok, recipe, make_bar)
    meta = {"toy_version": TOY_VERSION, "recipe": recipe, "build_seconds": time.perf_counter() - start}
    with _hf_bars_off():
        return _save(model, tok, Path(out), meta)


def _ensure_base(recipe: dict, quiet: bool) -> Path:
    path = cache_root() / f"base-{_key(_base_part(recipe))}"
    if not (path / "toy.json").exists():
        with _one_thread(), _progress(quiet) as make_bar:
            model, tok = _train_base(recipe, make_bar)
        meta = {"toy_version": TOY_VERSION, "stage": "base", "recipe": _base_part(recipe)}
        try:
            with _hf_bars_off():
                _save(model, tok, path, meta)
        except (FileExistsError, OSError):
            if not (path / "toy.json").exists():  # not a concurrent build that finished first
                raise
    return path


def ensure_base(seed: int = 0, *, quiet: bool = False, **variant) -> Path:
    """The stage-1 (base, unaligned) model directory of (seed, variant), built on first use and cached.

    Only base_seed, base_steps and the size keys matter; every alignment of this base starts from it."""
    return _ensure_base(resolve(seed, **variant), quiet)


def ensure(seed: int = 0, *, quiet: bool = False, **variant) -> Path:
    """The toy model directory for (seed, variant), built on first use and cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = resolve(seed, **variant)
    path = cache_root() / _key(recipe)
    if (path / "toy.json").exists():
        return path
    start = time.perf_counter()
    from shb.progress import active

    if active() is not None and not quiet:
        active().note(f"training the toy model (first use of this recipe; once, then loaded from the cache): {path}")
    base = _ensure_base(recipe, quiet)
    with _one_thread(), _progress(quiet) as make_bar:
        # eager, as in training, so a cached base aligns to the same bytes as build()
        model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager")
        tok = AutoTokenizer.from_pretrained(base)
        _align(model, tok, recipe, make_bar)
    meta = {"toy_version": TOY_VERSION, "recipe": recipe, "base": base.name,
            "build_seconds": time.perf_counter() - start}
    if active() is not None and not quiet:
        active().note(f"toy model trained in {meta['build_seconds']:.0f} s; cached in {path} (later runs load it)")
    try:
        with _hf_bars_off():
            return _save(model, tok, path, meta)
    except (FileExistsError, OSError):
        if (path / "toy.json").exists():  # a concurrent ensure() finished first: same recipe
            return path
        raise
