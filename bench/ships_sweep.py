"""Ships sweep benchmark: the paper's per-head loop (naive) vs shb's engine (and an nnsight loop, if installed).

Run by hand, not in the test suite:

    python bench/ships_sweep.py                 # CPU default: 8 layers x 8 heads, hidden 256, 32 prompts x 40 tokens
    python bench/ships_sweep.py --preset 7b     # GPU: Llama-2-7B shape, bf16, 100 prompts (see bench/gpu.sh)

Random-initialised Llama-shaped models (vocabulary 32000, as Llama-2), random token prompts. Both
strategies run in one process on the same model; the script checks that they agree, prints the
median wall time of each (over --repeats), their ratio, the engine's achieved FLOP rate against a
measured matmul rate on the same machine, and peak memory. ``--naive-layers`` limits the slow
strategies to the first N layers (the 7b preset: 1), and the engine is timed on the same layers
for the ratio; the engine's full sweep is timed too.
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
            "dtype": "float32", "device": "cpu", "naive_layers": None, "repeats": 3},
    "7b": {"layers": 32, "heads": 32, "kv_heads": 32, "hidden": 4096, "intermediate": 11008, "prompts": 100,
           "tokens": 40, "dtype": "bfloat16", "device": "cuda", "naive_layers": 1, "repeats": 3},
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
    for name in ("layers", "heads", "kv_heads", "hidden", "intermediate", "prompts", "tokens", "repeats", "naive_layers"):
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
    n_layers_slow = args.layers if args.naive_layers is None else min(args.naive_layers, args.layers)
    slow_layers = list(range(n_layers_slow))
    print(f"model: Llama-shaped, {args.layers} layers x {args.heads} heads ({args.kv_heads} kv), hidden {args.hidden}, "
          f"vocab {VOCAB}, {args.dtype} on {args.device}, {torch.get_num_threads()} threads")
    print(f"prompts: {args.prompts} x {min(lengths)}-{max(lengths)} tokens; slow strategies on layers 0..{n_layers_slow - 1}")
    rate = matmul_rate(args)
    print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s ({args.dtype})")

    def make(strategy):
        return lambda: Engine(lm, prompts, kind="undifferentiated", epsilon=args.epsilon, strategy=strategy,
                              batch_size=batch_size)

    results = {}
    peak_reset(args)
    t_eng, times, eng = timed(args, lambda: sweep(make("engine"), slow_layers), args.repeats)
    results["engine"] = t_eng
    flops = engine_flops(args, lengths, slow_layers)
    print(f"engine  ({len(slow_layers)} layers): median {t_eng:.2f} s of {[round(t, 2) for t in times]}; "
          f"{flops / t_eng / 1e9:.1f} GFLOP/s = {flops / t_eng / rate:.0%} of matmul rate; {peak_text(args)}")
    if n_layers_slow < args.layers:
        peak_reset(args)
        t_full, times, _ = timed(args, lambda: sweep(make("engine"), range(args.layers)), 1)
        flops = engine_flops(args, lengths, range(args.layers))
        print(f"engine  (all {args.layers} layers, {args.layers * args.heads} heads): {t_full:.2f} s; "
              f"{flops / t_full / 1e9:.1f} GFLOP/s = {flops / t_full / rate:.0%} of matmul rate; {peak_text(args)}")
    if not args.skip_naive:
        peak_reset(args)
        naive_repeats = args.repeats if args.device == "cpu" else 1
        t_naive, times, ref = timed(args, lambda: sweep(make("naive"), slow_layers), naive_repeats)
        results["naive"] = t_naive
        print(f"naive KL per (prompt, head): min {float(ref.min()):.2e}, median {float(ref.median()):.2e}, "
              f"max {float(ref.max()):.2e}")
        scale = float(ref.abs().max())
        diff = float((eng - ref).abs().max()) / scale
        top_same = bool((eng.mean(0).argmax() == ref.mean(0).argmax()).item())
        tol = 1e-4 if args.dtype == "float32" else 5e-2
        print(f"naive   ({len(slow_layers)} layers): median {t_naive:.2f} s of {[round(t, 2) for t in times]}; {peak_text(args)}")
        print(f"agreement: max |engine - naive| / max|naive| = {diff:.2e} (tolerance {tol:g}); "
              f"same top head: {top_same}")
        print(f"speed-up engine vs naive: {t_naive / t_eng:.1f}x")
        if diff > tol:
            print("FAILED: engine and naive disagree")
            return 1
    if importlib.util.find_spec("nnsight") is None:
        print("nnsight: not installed, skipped (pip install nnsight to time the per-head trace loop)")
    else:
        t_nn, times, nn = timed(args, lambda: nnsight_sweep(lm, prompts, slow_layers, args), args.repeats)
        diff = float((eng - nn).abs().max()) / float(nn.abs().max())
        print(f"nnsight ({len(slow_layers)} layers): median {t_nn:.2f} s of {[round(t, 2) for t in times]}; "
              f"max rel diff to engine {diff:.1e}")
        print(f"speed-up engine vs nnsight loop: {t_nn / t_eng:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
