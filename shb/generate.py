"""Batched, KV-cached generation with attention heads ablated.

The paper (Zhou et al. 2025) measures the attack success rate by generating an
answer for every harmful prompt with a head set ablated. Its code regenerates
the whole sequence for every new token (no KV cache, batch 1). Here the prompts
are left-padded into batches, the prompt is run once (prefill) and every new
token costs one forward of one position per row (decode), reading keys and
values from a ``DynamicCache``. The ablation hooks are attached for the whole
loop, so they act on the prefill and on every decode step.

``strategy="reference"`` keeps the paper's plain loop beside it (each prompt
tokenized on its own, batch 1, a full forward over the whole sequence for each
new token, no cache): the benchmark measures against it and the tests check
that both give the same greedy text. The reference appends token ids between
steps; it does not decode and re-tokenize the text, which can change the
tokens and would make it disagree with any cached loop for reasons that have
nothing to do with caching.

Decoding::

    {"mode": "greedy"}
    {"mode": "sample", "top_k": 5, "top_p": 1.0, "temperature": 1.0, "seed": 0, "n": 1}

Sampling draws every row's random numbers from its own generator, seeded from
(seed, prompt index, sample index): the samples do not depend on the batch
size, the batch composition or the strategy.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

from shb.models import encode_prompt

STRATEGIES = ("cached", "reference")
FINISH_REASONS = ("eos", "length")

_SAMPLE_DEFAULTS = {"top_k": 5, "top_p": 1.0, "temperature": 1.0, "seed": 0, "n": 1}


@dataclass(frozen=True)
class Generation:
    """One generated answer.

    ``text`` is the decoded new tokens with special tokens skipped, preceded by
    the answer prefix when one was forced. ``n_tokens`` counts the generated
    tokens (the EOS token included when the row stopped on one; the forced
    answer prefix not included).
    """

    prompt_index: int
    sample_index: int
    text: str
    n_tokens: int
    finish_reason: str  # "eos" | "length"


# --------------------------------------------------------------------------- decoding spec


def normalize_decoding(decoding: dict | None) -> dict:
    """Validate a decoding spec and fill its defaults; returns a new dict.

    Raises ValueError naming every problem found.
    """
    if decoding is None:
        return {"mode": "greedy", "n": 1}
    if not isinstance(decoding, dict):
        raise ValueError(f"decoding must be a dict such as {{'mode': 'greedy'}}, got {decoding!r}")
    mode = decoding.get("mode", "greedy")
    problems = []
    if mode == "greedy":
        unknown = sorted(set(decoding) - {"mode", "n"})
        if unknown:
            problems.append(f"greedy decoding takes no {unknown} (only 'mode')")
        if decoding.get("n", 1) != 1:
            problems.append("greedy decoding gives one answer per prompt: n must be 1")
        spec = {"mode": "greedy", "n": 1}
    elif mode == "sample":
        unknown = sorted(set(decoding) - {"mode", *_SAMPLE_DEFAULTS})
        if unknown:
            problems.append(f"unknown sampling keys {unknown}; allowed: {sorted(_SAMPLE_DEFAULTS)}")
        spec = {"mode": "sample", **_SAMPLE_DEFAULTS, **{k: v for k, v in decoding.items() if k != "mode"}}
        top_k, top_p, temp, n, seed = (spec[k] for k in ("top_k", "top_p", "temperature", "n", "seed"))
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
            problems.append(f"top_k must be an int >= 0 (0 or None: no top-k filter), got {top_k!r}")
        if not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {top_p!r}")
        if not isinstance(temp, (int, float)) or temp <= 0:
            problems.append(f"temperature must be > 0 (use mode 'greedy' for argmax), got {temp!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            problems.append(f"n must be an int >= 1, got {n!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            problems.append(f"seed must be an int, got {seed!r}")
    else:
        raise ValueError(f"decoding mode must be 'greedy' or 'sample', got {mode!r}")
    if problems:
        raise ValueError("bad decoding spec: " + "; ".join(problems))
    return spec


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The generator seed of one (prompt, sample) row: independent of batching."""
    digest = hashlib.sha256(f"shb-sample:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- public entry


def generate(
    lm,
    prompts: Sequence[str],
    *,
    heads=(),
    head_sets=None,
    kind: str = "undifferentiated",
    epsilon: float = 1e-5,
    site: str | None = None,
    decoding: dict | None = None,
    max_new_tokens: int = 128,
    batch_size: int | str = 16,
    answer_prefix: str | None = None,
    progress: Callable[[int], None] | None = None,
    strategy: str = "cached",
    first_index: int = 0,
) -> list[Generation]:
    """Generate an answer to every prompt with attention heads ablated.

    lm: an object with ``.model`` (a transformers causal LM) and ``.tokenizer``.
    prompts: formatted prompt strings (chat template already applied). A prompt
        that starts with the tokenizer's BOS text is tokenized without adding
        special tokens again; otherwise the tokenizer's special tokens are added.
    heads: one head set, ``[(layer, head), ...]``, ablated in every row.
    head_sets: one head set per prompt instead (``len(head_sets) == len(prompts)``).
    kind, epsilon, site: passed to ``shb.ablation.ablate`` / ``ablate_rows``.
    decoding: ``{"mode": "greedy"}`` (default) or ``{"mode": "sample", ...}``
        (see the module docstring); ``n`` samples per prompt.
    answer_prefix: forced start of the answer (e.g. "Sure, here is"), appended
        to the prompt text before tokenizing; it IS included at the start of
        every returned ``Generation.text`` (and not counted in ``n_tokens``).
    batch_size: rows per batch, or "auto": sized from free memory counting the KV cache
        (``generation_batch_size``). Either way an out-of-memory error halves it and the batch is
        run again (same rows, same seeds: same answers); the size settled on is logged.
    progress: called with the number of rows finished after every batch.
    strategy: "cached" (batched, KV cache) or "reference" (the paper's loop:
        batch 1, a full forward per new token, no cache).
    first_index: added to every ``prompt_index`` (returned and used for the
        sampling seeds), so that a caller generating in chunks gets the same
        samples as one call over all prompts.

    Returns one Generation per (prompt, sample), ordered by prompt then sample.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not one string")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a string, got {type(p).__name__}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if batch_size != "auto" and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {batch_size!r}")
    if answer_prefix is not None and not isinstance(answer_prefix, str):
        raise ValueError(f"answer_prefix must be a string or None, got {answer_prefix!r}")
    if not isinstance(first_index, int) or first_index < 0:
        raise ValueError(f"first_index must be an int >= 0, got {first_index!r}")
    from shb.ablation import KINDS

    if kind not in KINDS:
        raise ValueError(f"unknown ablation kind {kind!r}; known: {', '.join(KINDS)}")
    spec = normalize_decoding(decoding)
    row_heads = _heads_per_prompt(prompts, heads, head_sets)
    if not prompts:
        return []

    full_prompts = [p + answer_prefix for p in prompts] if answer_prefix else prompts
    encoded = [encode_prompt(lm.tokenizer, p) for p in full_prompts]
    # One row per (prompt, sample): (prompt_index within this call, sample_index).
    rows = [(i, s) for i in range(len(prompts)) for s in range(spec["n"])]
    seeds = [row_seed(spec.get("seed", 0), first_index + i, s) for i, s in rows]
    ablation = {"kind": kind, "epsilon": epsilon, "site": site}
    if strategy == "reference":
        outs = _reference_rows(
            lm, encoded, rows, seeds, row_heads, ablation, spec, max_new_tokens, progress
        )
    else:
        outs = _cached_rows(
            lm, encoded, rows, seeds, row_heads, ablation, spec, max_new_tokens, batch_size, progress
        )
    results = []
    for (i, s), (ids, reason) in zip(rows, outs):
        text = lm.tokenizer.decode(ids, skip_special_tokens=True)
        if answer_prefix:
            text = answer_prefix + text
        results.append(Generation(first_index + i, s, text, len(ids), reason))
    return results


def _heads_per_prompt(prompts, heads, head_sets) -> list[tuple]:
    """One normalised head set (tuple of (layer, head)) per prompt."""
    if head_sets is not None:
        if heads:
            raise ValueError("pass either heads (one set for all prompts) or head_sets (one per prompt), not both")
        head_sets = list(head_sets)
        if len(head_sets) != len(prompts):
            raise ValueError(f"head_sets has {len(head_sets)} sets for {len(prompts)} prompts; need one per prompt")
        return [_normalise_heads(h, f"head_sets[{i}]") for i, h in enumerate(head_sets)]
    one = _normalise_heads(heads, "heads")
    return [one] * len(prompts)


def _normalise_heads(heads, where: str) -> tuple:
    from shb.ablation import parse_heads

    try:
        return tuple(parse_heads(heads or ()))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


@contextlib.contextmanager
def ablation_context(model, head_sets: Sequence[tuple], ablation: dict):
    """Ablate ``head_sets`` (one per batch row); no hooks at all when every set is empty.

    One shared set uses ``ablate`` (every row), differing sets ``ablate_rows``.
    """
    if not any(head_sets):
        yield
        return
    import shb.ablation

    kw = {"kind": ablation["kind"], "epsilon": ablation["epsilon"], "site": ablation["site"]}
    if all(h == head_sets[0] for h in head_sets):
        with shb.ablation.ablate(model, list(head_sets[0]), **kw):
            yield
    else:
        with shb.ablation.ablate_rows(model, [list(h) for h in head_sets], **kw):
            yield


# --------------------------------------------------------------------------- shared pieces


def eos_token_ids(lm) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation config."""
    ids = set()
    tok_eos = getattr(lm.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen_cfg = getattr(lm.model, "generation_config", None)
    cfg_eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif cfg_eos is not None:
        ids.update(int(x) for x in cfg_eos)
    return sorted(ids)


def _pad_id(lm, eos_ids) -> int:
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return eos_ids[0] if eos_ids else 0


def pick_tokens(logits, spec: dict, generators):
    """Next token per row from last-position logits ``(B, V)``.

    Greedy: argmax. Sample: temperature, top-k, top-p, then inverse-CDF
    sampling with one uniform draw per row from that row's own CPU generator
    (so a row's sample does not depend on the other rows of its batch).
    """
    import torch

    if spec["mode"] == "greedy":
        return logits.argmax(dim=-1)
    logits = logits.float() / float(spec["temperature"])
    top_k = spec.get("top_k") or 0
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    sorted_p, sorted_idx = probs.sort(dim=-1, descending=True, stable=True)  # (B, V)
    if spec["top_p"] < 1.0:
        # keep the smallest prefix whose mass reaches top_p (the first token always)
        before = sorted_p.cumsum(dim=-1) - sorted_p
        sorted_p = sorted_p * (before < spec["top_p"])
    cdf = sorted_p.cumsum(dim=-1)  # (B, V)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    u = (u.to(cdf.device, cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
    j = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)
    # a zero-probability slot can only be hit at the cdf's flat top; step back onto mass
    j = torch.minimum(j, (sorted_p > 0).sum(dim=-1, keepdim=True) - 1)
    return sorted_idx.gather(-1, j).squeeze(-1)


def _generators(seeds):
    import torch

    return [torch.Generator(device="cpu").manual_seed(s) for s in seeds]


# --------------------------------------------------------------------------- fast path


GENERATION_CPU_BUDGET = 256 << 20  # bytes; as the engine's: on the CPU small batches run fastest
GENERATION_CUDA_SHARE = 0.6  # share of free CUDA memory a batch may fill
MAX_GENERATION_ROWS = {"cpu": 16, "cuda": 512}  # 16: what the CPU ran before "auto" (bench/generate.py)


def generation_memory_per_row(model, prompt_tokens: int, max_new_tokens: int) -> int:
    """Bytes one row of a generation batch holds at its peak: its KV cache (every layer's keys and
    values for the prompt and all new tokens), the prefill activations of one layer with the attention
    scores, and the sampling work on one position's float32 logits."""
    cfg = model.config
    elem = next(model.parameters()).element_size()
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or d // n_heads
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * d
    vocab = getattr(cfg, "vocab_size", None) or 32000
    t = prompt_tokens + max_new_tokens
    kv = 2 * n_layers * n_kv * head_dim * t * elem
    prefill = prompt_tokens * (12 * d + 4 * inter) * elem + n_heads * prompt_tokens**2 * (4 + elem)
    return int(kv + prefill + vocab * 32)


def generation_batch_size(model, prompt_tokens: int, max_new_tokens: int) -> int:
    """Rows per batch for ``batch_size="auto"``: what fits in the free memory of the model's device."""
    import torch

    device = next(model.parameters()).device
    if device.type == "cuda":
        budget = int(torch.cuda.mem_get_info(device)[0] * GENERATION_CUDA_SHARE)
    else:
        budget = GENERATION_CPU_BUDGET
    cap = MAX_GENERATION_ROWS.get(device.type, 16)
    return max(1, min(cap, budget // generation_memory_per_row(model, prompt_tokens, max_new_tokens)))


def _cached_rows(lm, encoded, rows, seeds, row_heads, ablation, spec, max_new_tokens, batch_size, progress):
    """Rows in batches of similar length (less padding); results in row order. An out-of-memory
    error halves the batch size and runs the same rows again."""
    import logging

    from shb.engine import is_oom

    order = sorted(range(len(rows)), key=lambda r: -len(encoded[rows[r][0]]))
    if batch_size == "auto":
        batch_size = generation_batch_size(lm.model, len(encoded[rows[order[0]][0]]), max_new_tokens)
    if getattr(getattr(lm, "layout", None), "padding_sensitive", None):
        batch_size = 1  # left padding would change this model's outputs (Llama-4 temperature tuning)
    results = [None] * len(rows)
    start = 0
    while start < len(order):
        idx = order[start : start + batch_size]
        try:
            outs = cached_batch(
                lm,
                [encoded[rows[r][0]] for r in idx],
                [seeds[r] for r in idx],
                [row_heads[rows[r][0]] for r in idx],
                ablation,
                spec,
                max_new_tokens,
            )
        except Exception as exc:  # re-raised unless out of memory with room to halve
            if not is_oom(exc) or len(idx) == 1:
                raise
            outs = None
        if outs is None:  # outside the except block: the failed batch's tensors are free by now
            batch_size = max(1, len(idx) // 2)
            logging.getLogger("shb.generate").warning(
                "shb generate: out of memory at %d rows per batch; continuing with %d", len(idx), batch_size)
            _empty_cuda_cache(lm.model)
            continue
        for r, out in zip(idx, outs):
            results[r] = out
        if progress is not None:
            progress(len(idx))
        start += len(idx)
    logging.getLogger("shb.generate").info("shb generate: %d rows per batch", batch_size)
    return results


def _empty_cuda_cache(model):
    import torch

    if next(model.parameters()).device.type == "cuda":
        torch.cuda.empty_cache()


def cached_batch(lm, ids_list, seeds, head_sets, ablation, spec, max_new_tokens):
    """One left-padded batch: prefill once, then one position per step from the KV cache."""
    import torch
    from transformers import DynamicCache

    model = lm.model
    device = model.device
    eos_ids = eos_token_ids(lm)
    pad_id = _pad_id(lm, eos_ids)
    B, T = len(ids_list), max(len(x) for x in ids_list)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T), left padded
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, ids in enumerate(ids_list):
        input_ids[b, T - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[b, T - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    # positions count real tokens only, so a padded row sees the same positions as alone
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    eos = torch.tensor(eos_ids or [-1], dtype=torch.long, device=device)
    gens = _generators(seeds) if spec["mode"] == "sample" else None

    finished = torch.zeros(B, dtype=torch.bool, device=device)
    hit_eos = torch.zeros(B, dtype=torch.bool, device=device)
    n_tokens = torch.zeros(B, dtype=torch.long, device=device)
    steps = []  # one (B,) tensor of tokens per step
    cache = DynamicCache(config=model.config)
    with torch.inference_mode(), ablation_context(model, head_sets, ablation):
        out = model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions,
            cache=cache, use_cache=True, logits_to_keep=1,
        )
        for step in range(max_new_tokens):
            tok = pick_tokens(out.logits[:, -1, :], spec, gens)  # (B,)
            tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
            steps.append(tok)
            n_tokens += (~finished).long()
            new_eos = torch.isin(tok, eos) & ~finished
            hit_eos |= new_eos
            finished |= new_eos
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1  # (B, 1)
            out = model(
                input_ids=tok.unsqueeze(-1), attention_mask=mask, position_ids=positions,
                cache=out.cache, use_cache=True, logits_to_keep=1,
            )
    tokens = torch.stack(steps, dim=1).cpu()  # (B, steps)
    n_tokens, hit_eos = n_tokens.cpu().tolist(), hit_eos.cpu().tolist()
    return [
        (tokens[b, : n_tokens[b]].tolist(), "eos" if hit_eos[b] else "length") for b in range(B)
    ]


# --------------------------------------------------------------------------- plain reference


def _reference_rows(lm, encoded, rows, seeds, row_heads, ablation, spec, max_new_tokens, progress):
    """The paper's loop: batch 1, full forward over the whole sequence per new token, no cache."""
    import torch

    model = lm.model
    eos_ids = set(eos_token_ids(lm))
    results = []
    for r, (i, _s) in enumerate(rows):
        ids = list(encoded[i])
        gens = _generators([seeds[r]]) if spec["mode"] == "sample" else None
        new, reason = [], "length"
        with torch.inference_mode(), ablation_context(model, [row_heads[i]], ablation):
            for _ in range(max_new_tokens):
                x = torch.tensor([ids + new], dtype=torch.long, device=model.device)  # (1, T)
                logits = model(input_ids=x, use_cache=False).logits[:, -1, :]
                tok = int(pick_tokens(logits, spec, gens)[0])
                new.append(tok)
                if tok in eos_ids:
                    reason = "eos"
                    break
        results.append((new, reason))
        if progress is not None:
            progress(1)
    return results
