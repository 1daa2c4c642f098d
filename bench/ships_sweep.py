"""Ships sweep benchmark: the paper's per-head loop and a fairer naive loop against shb's engine
(and an nnsight loop, with ``pip install 'shb[bench]'``).

Run by hand, not in the test suite:

    python bench/ships_sweep.py --threads 1                   # CPU: 8 layers x 8 heads, hidden 256, 32 prompts x 40 tokens
    python bench/ships_sweep.py --preset cpu7b --threads 1    # CPU, 7B proportions: hidden 1024, 8 heads of 128, 8 layers
    python bench/ships_sweep.py --preset 7b                   # GPU: Llama-2-7B shape, bf16, 100 prompts (bench/gpu.sh)

Random-initialised Llama-shaped models (vocabulary 32,000, as Llama-2), random token prompts. All
strategies run in one process on the same model and are checked to agree:

* paper's loop (``strategy="naive"``): batch 1, one forward per prompt and head, logits of every position;
* fair naive loop: the same, but only the last position goes through the LM head (``logits_to_keep=1``),
  as the engine does; on a model whose LM head is a large share of a forward pass (hidden 256,
  vocabulary 32,000) this is the honest baseline, on a 7B model the two are within a few percent;
* engine: shb's batched, prefix-cached path.

The slow loops run on the first ``--naive-layers`` layers and ``--naive-prompts`` prompts only (a
timed sample) and are extrapolated to the full sweep: one of their forward passes costs the same
whatever layer its head is in. The engine is timed on the same sample (ratio measured side by side)
and on the full sweep (ratio against the extrapolation). Reported: median wall times, both ratios,
the engine's achieved FLOP/s against a matmul rate measured in the same run, and peak memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESETS = {
    "cpu": {"layers": 8, "heads": 8, "kv_heads": 8, "hidden": 256, "intermediate": 688, "prompts": 32, "tokens": 40,
            "dtype": "float32", "device": "cpu", "naive_layers": None, "naive_prompts": None, "repeats": 3},
    # 7B proportions on a CPU: hidden large against the vocabulary (1024 vs 32,000; Llama-2-7B 4096 vs 32,000),
    # head_dim 128 and MLP ratio 2.69 as Llama-2-7B; the slow loops on a sample (layer 0, 8 prompts).
    "cpu7b": {"layers": 8, "heads": 8, "kv_heads": 8, "hidden": 1024, "intermediate": 2752, "prompts": 16,
              "tokens": 30, "dtype": "float32", "device": "cpu", "naive_layers": 1, "naive_prompts": 8, "repeats": 3},
    "7b": {"layers": 32, "heads": 32, "kv_heads": 32, "hidden": 4096, "intermediate": 11008, "prompts": 100,
           "tokens": 30, "dtype": "bfloat16", "device": "cuda", "naive_layers": 1, "naive_prompts": 20, "repeats": 3},
}
VOCAB = 32000


class IdTokenizer:
    """Prompts are written as space-separated token ids: the bench needs no tokenizer files."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):  # no special tokens: the ids are the whole prompt
        return {"input_ids": [int(t) for t in text.split()]}


def build(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from shb.models.layout import detect

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      max_position_embeddings=max(512, 2 * args.tokens), pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, initializer_range=0.02)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    gen = torch.Generator().manual_seed(args.seed)
    lengths = [args.tokens] * args.prompts
    if args.vary:  # left padding exercised: lengths between 3/4 of --tokens and --tokens
        lengths = torch.randint(3 * args.tokens // 4, args.tokens + 1, (args.prompts,), generator=gen).tolist()
    prompts = [" ".join(str(t) for t in [1] + torch.randint(3, VOCAB, (n - 1,), generator=gen).tolist())
               for n in lengths]
    return SimpleNamespace(model=model, tokenizer=IdTokenizer(), layout=detect(model)), prompts, lengths


def layer_flops(args, t: int) -> float:
    """Matmul FLOPs of one decoder layer for one sequence of t tokens (attention counted over the full t x t)."""
    d, hd = args.hidden, args.hidden // args.heads
    proj = d * (args.heads * hd + 2 * args.kv_heads * hd) + args.heads * hd * d + 3 * d * args.intermediate
    return 2.0 * t * proj + 4.0 * t * t * args.heads * hd


def naive_flops(args, lengths, n_heads_layers: int, all_logits: bool) -> float:
    """FLOPs of the batch-1 loops for ``n_heads_layers`` heads: every forward runs all layers; the LM head
    on every position (the paper's loop) or the last one (the fair loop)."""
    return n_heads_layers * sum(args.layers * layer_flops(args, n) + 2.0 * args.hidden * VOCAB * (n if all_logits else 1)
                                for n in lengths)


def engine_flops(args, lengths, layers) -> float:
    """FLOPs the engine must do for single-head sweeps of ``layers``: rows start at their layer, LM head on 1 position."""
    total = sum(args.layers * layer_flops(args, n) + 2.0 * args.hidden * VOCAB for n in lengths)  # base pass
    for layer in layers:
        per_row = sum((args.layers - layer) * layer_flops(args, n) + 2.0 * args.hidden * VOCAB for n in lengths)
        total += args.heads * per_row
    return total


def matmul_rate(args) -> float:
    import torch

    n = 4096 if args.device == "cuda" else 1024
    dtype = getattr(torch, args.dtype)
    a = torch.randn(n, n, device=args.device).to(dtype)
    b = torch.randn(n, n, device=args.device).to(dtype)
    reps = 50 if args.device == "cuda" else 10
    for _ in range(3):
        a @ b
    sync(args)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(args)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def sync(args):
    import torch

    if args.device == "cuda":
        torch.cuda.synchronize()


def peak_reset(args):
    import torch

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_text(args) -> str:
    import torch

    if args.device == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB CUDA peak"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB max RSS (process so far)"


def timed(args, fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        sync(args)
        t0 = time.perf_counter()
        result = fn()
        sync(args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def sweep(engine_factory, layers):
    import torch

    engine = engine_factory()  # a fresh engine: the base pass is part of the timed work
    return torch.cat([engine.ships_layer(layer) for layer in layers], 1)  # (P, H * len(layers))


def fair_naive_sweep(lm, prompts, layers, args, encode=None):
    """The paper's loop made fair: batch 1, one forward per prompt and head, but the LM head and the
    log-softmax on the last position only (the engine's saving that is not about batching or caching).
    ``encode(prompt)`` gives a prompt's token ids (default: the prompt is space-separated ids)."""
    import torch

    from shb.ablation import ablate
    from shb.scorers.head import ScoringHead
    from shb.scorers.kl import kl_from_log_probs, log_probs

    model = lm.model
    head = ScoringHead(model)  # float32 head under bf16, as the engine's
    encode = encode or (lambda p: [int(t) for t in p.split()])
    ids = [torch.tensor([encode(p)], device=args.device) for p in prompts]

    def last_logp(x):
        if not head.widened:  # float32 model: its own last-position logits
            return log_probs(model(input_ids=x, logits_to_keep=1, use_cache=False).logits[0, -1])
        grabbed = {}  # bf16/fp16: the float32 scoring head on what enters the final norm
        handle = head.first.register_forward_pre_hook(lambda _m, a: grabbed.__setitem__("h", a[0][:, -1]))
        try:
            model(input_ids=x, logits_to_keep=1, use_cache=False)
        finally:
            handle.remove()
        return log_probs(head(grabbed["h"])[0][0])

    with torch.no_grad():
        base = [last_logp(x) for x in ids]
        out = torch.zeros(len(prompts), len(layers) * args.heads, dtype=torch.float64, device=args.device)
        for p, x in enumerate(ids):
            for j, (layer, h) in enumerate((layer, h) for layer in layers for h in range(args.heads)):
                with ablate(model, [(layer, h)], kind="undifferentiated", epsilon=args.epsilon):
                    out[p, j] = kl_from_log_probs(base[p], last_logp(x))
    return out


def nnsight_sweep(lm, prompts, layers, args):
    """The loop a user writes with nnsight: one trace per head, all prompts in the trace, q_proj scaled."""
    import torch
    from nnsight import NNsight

    model = NNsight(lm.model)  # the generic wrapper: our prompts are token ids already
    ids = [[int(t) for t in p.split()] for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.tensor([[0] * (width - len(x)) + x for x in ids], device=args.device)
    mask = (torch.arange(width, device=args.device)[None] >= torch.tensor([width - len(x) for x in ids],
                                                                           device=args.device)[:, None]).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hd = args.hidden // args.heads
    with torch.no_grad():
        with model.trace(input_ids=input_ids, attention_mask=mask, position_ids=positions):
            base = model.lm_head.output[:, -1].save()
        base_lp = torch.log_softmax(base.double(), -1)
        out = []
        for layer in layers:
            for head in range(args.heads):
                with model.trace(input_ids=input_ids, attention_mask=mask, position_ids=positions):
                    q = model.model.layers[layer].self_attn.q_proj.output
                    q[:, :, head * hd:(head + 1) * hd] *= args.epsilon
                    logits = model.lm_head.output[:, -1].save()
                lq = torch.log_softmax(logits.double(), -1)
                out.append((base_lp.exp() * (base_lp - lq)).sum(-1))
    return torch.stack(out, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    for name in ("layers", "heads", "kv_heads", "hidden", "intermediate", "prompts", "tokens", "repeats", "naive_layers",
                 "naive_prompts"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device")
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--epsilon", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--vary", action="store_true", help="prompt lengths vary (left padding) instead of all --tokens")
    p.add_argument("--skip-naive", action="store_true")
    args = p.parse_args(argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)

    import torch

    from shb.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here; use the cpu preset")
    lm, prompts, lengths = build(args)
    n_slow_layers = args.layers if args.naive_layers is None else min(args.naive_layers, args.layers)
    n_slow_prompts = args.prompts if args.naive_prompts is None else min(args.naive_prompts, args.prompts)
    slow_layers, slow_prompts, slow_lengths = list(range(n_slow_layers)), prompts[:n_slow_prompts], lengths[:n_slow_prompts]
    scale = (args.layers / n_slow_layers) * (args.prompts / n_slow_prompts)  # sample -> full sweep
    print(f"model: Llama-shaped, {args.layers} layers x {args.heads} heads ({args.kv_heads} kv), hidden {args.hidden}, "
          f"intermediate {args.intermediate}, vocab {VOCAB}, {args.dtype} on {args.device}, {torch.get_num_threads()} threads")
    print(f"prompts: {args.prompts} x {min(lengths)}-{max(lengths)} tokens; timed sample for the slow loops: "
          f"layers 0..{n_slow_layers - 1} x {n_slow_prompts} prompts ({n_slow_layers * args.heads * n_slow_prompts} "
          f"batch-1 forwards each), extrapolated x{scale:g} to the full sweep")
    lm_share = 2.0 * args.hidden * VOCAB / (args.layers * layer_flops(args, 1) + 2.0 * args.hidden * VOCAB)
    print(f"LM head share of one token's forward FLOPs: {lm_share:.1%}")
    rate = matmul_rate(args)
    print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s ({args.dtype}, measured now)")

    def make(strategy, ps):
        return lambda: Engine(lm, ps, kind="undifferentiated", epsilon=args.epsilon, strategy=strategy,
                              batch_size=batch_size)

    def flop_text(flops, seconds):
        return f"{flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / rate:.0%} of matmul rate"

    peak_reset(args)
    t_eng, times, eng = timed(args, lambda: sweep(make("engine", slow_prompts), slow_layers), args.repeats)
    print(f"engine, sample: median {t_eng:.2f} s of {[round(t, 2) for t in times]}; "
          f"{flop_text(engine_flops(args, slow_lengths, slow_layers), t_eng)}; {peak_text(args)}")
    t_full = t_eng
    if scale != 1:
        peak_reset(args)
        t_full, times, _ = timed(args, lambda: sweep(make("engine", prompts), range(args.layers)),
                                 1 if args.device == "cuda" else args.repeats)
        probe = Engine(lm, prompts, batch_size=batch_size)
        print(f"engine, full sweep ({args.layers * args.heads} heads x {args.prompts} prompts): median {t_full:.2f} s "
              f"of {[round(t, 2) for t in times]}; {flop_text(engine_flops(args, lengths, range(args.layers)), t_full)}; "
              f"{peak_text(args)}; batch {probe.batch_size} rows ({probe.batch_history[0][1]})")
    results, disagree = {}, []
    if not args.skip_naive:
        slow_repeats = args.repeats if args.device == "cpu" else 1
        for name, fn, all_logits in (
                ("paper's loop", lambda: sweep(make("naive", slow_prompts), slow_layers), True),
                ("fair naive loop", lambda: fair_naive_sweep(lm, slow_prompts, slow_layers, args), False)):
            peak_reset(args)
            t, times, ref = timed(args, fn, slow_repeats)
            flops = naive_flops(args, slow_lengths, n_slow_layers * args.heads, all_logits)
            diff = float((eng - ref).abs().max()) / float(ref.abs().max())
            median_rel = float(((eng - ref).abs() / ref.abs().clamp(min=1e-30)).median())
            same_top = int(eng.mean(0).argmax()) == int(ref.mean(0).argmax())
            tol = 1e-4 if args.dtype == "float32" else 5e-2
            results[name] = t
            print(f"{name}, sample: median {t:.2f} s of {[round(x, 2) for x in times]}; {flop_text(flops, t)}; "
                  f"max |engine - it| / max|it| = {diff:.1e} (tolerance {tol:g}), median relative difference "
                  f"{median_rel:.1e}, same top head: {same_top}; {peak_text(args)}")
            if diff > tol:  # reported at the end: the timings are still worth printing
                disagree.append(name)
        print(f"KL per (prompt, head) in the sample: min {float(eng.min()):.2e}, median {float(eng.median()):.2e}, "
              f"max {float(eng.max()):.2e}")
        for name, t in results.items():
            line = f"speed-up engine vs {name}: {t / t_eng:.1f}x on the sample (both measured)"
            if scale != 1:
                line += (f", {t * scale / t_full:.1f}x on the full sweep ({name} extrapolated to "
                         f"{t * scale:.0f} s, engine measured {t_full:.1f} s)")
            print(line)
    if importlib.util.find_spec("nnsight") is None:
        print("nnsight: not installed, skipped (pip install 'shb[bench]' to time the per-head trace loop)")
    else:
        t_nn, times, nn = timed(args, lambda: nnsight_sweep(lm, slow_prompts, slow_layers, args), args.repeats)
        diff = float((eng - nn).abs().max()) / float(nn.abs().max())
        print(f"nnsight, sample: median {t_nn:.2f} s of {[round(t, 2) for t in times]}; max rel diff to engine {diff:.1e}")
        print(f"speed-up engine vs nnsight loop: {t_nn / t_eng:.1f}x on the sample")
    if disagree:
        print(f"FAILED: the engine disagrees with {', '.join(disagree)} beyond the tolerance")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
