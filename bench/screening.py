"""Screened Ships sweep vs the exact sweep, side by side in one run, with the recall measured there too.

Run by hand, not in the test suite:

    python bench/screening.py                  # CPU preset shaped like a 7B model (hidden large against vocab)
    python bench/screening.py --preset 7b      # GPU: Llama-2-7B shape, bf16

A random-initialised Llama of the preset's shape and random-token prompts. The exact sweep is the
engine on every single head (shb.engine); the screened sweep is the attribution estimate of every
head (shb.scorers.attribution) plus the engine on each prompt's top-N candidates (what the ships
metric does with ``screen``). Reported: wall time of each, their ratio, recall@10 and recall@5 of
the screened ranking against the exact one, and the estimate's Spearman correlation; and the
verification on one engine (``Engine.ships_pairs``) against a fresh engine per prompt (what screening
did before), timed side by side with their largest difference (``--no-compare-rebuild`` skips it).

Random weights give flat, tie-ridden head rankings (every head matters a little), the hard case
for screening; ``--init`` raises the initialisation scale to make heads differ more, as trained
models' heads do (the paper's Fig. 13 long tail).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESETS = {
    # hidden 1024 against a 32,000 vocabulary: the LM head is a small share of a forward pass, as in a 7B model.
    # 32 heads per layer as in Llama-2-7B (head_dim 32 here), 8 layers: 256 heads per prompt.
    "cpu7b": {"layers": 8, "heads": 32, "hidden": 1024, "intermediate": 2816, "prompts": 4, "tokens": 30,
              "dtype": "float32", "device": "cpu"},
    "7b": {"layers": 32, "heads": 32, "hidden": 4096, "intermediate": 11008, "prompts": 100, "tokens": 30,
           "dtype": "bfloat16", "device": "cuda"},
}
VOCAB = 32000


class IdTokenizer:
    """Prompts are written as space-separated token ids: no tokenizer files needed."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(t) for t in text.split()]}


def build(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from shb.models.layout import detect

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                      max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      initializer_range=args.init)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(getattr(torch, args.dtype)).eval()
    gen = torch.Generator().manual_seed(args.seed)
    prompts = [" ".join(str(t) for t in [1] + torch.randint(3, VOCAB, (args.tokens - 1,), generator=gen).tolist())
               for _ in range(args.prompts)]
    return SimpleNamespace(model=model, tokenizer=IdTokenizer(), layout=detect(model)), prompts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu7b")
    parser.add_argument("--top", type=float, default=0.1, help="share of heads verified per prompt (N / heads)")
    parser.add_argument("--fisher-tokens", dest="est_tokens", type=int, default=16, help="tokens of the Fisher form")
    parser.add_argument("--estimator", default="fisher")
    parser.add_argument("--init", type=float, default=0.02, help="initializer_range of the random model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compare-rebuild", dest="compare_rebuild", action="store_false",
                        help="skip timing verification with a fresh engine per prompt (the old way)")
    for key in ("layers", "heads", "hidden", "intermediate", "prompts", "tokens"):
        parser.add_argument(f"--{key}", type=int, default=None)
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)

    import torch

    from shb.engine import Engine
    from shb.scorers import attribution

    if args.threads:
        torch.set_num_threads(args.threads)
    lm, prompts = build(args)
    n_heads = args.layers * args.heads
    top = max(1, int(args.top * n_heads))
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    sync()
    t0 = time.perf_counter()
    engine = Engine(lm, prompts)
    exact = torch.stack([engine.ships_layer(layer) for layer in range(args.layers)], 1).reshape(len(prompts), -1)
    sync()
    t_exact = time.perf_counter() - t0

    t0 = time.perf_counter()
    est = attribution.estimate(lm, prompts, estimator=args.estimator, tokens=args.est_tokens).reshape(len(prompts), -1)
    sync()
    t_estimate = time.perf_counter() - t0
    chosen = [est[p].topk(top).indices.tolist() for p in range(len(prompts))]
    pairs = [(p, [(f // args.heads, f % args.heads)]) for p in range(len(prompts)) for f in chosen[p]]
    # Verification, before (a fresh engine per prompt: base pass and scoring head rebuilt each time) and
    # after (one engine for the batch, only each prompt's own candidates evaluated), timed side by side.
    t1 = time.perf_counter()
    rebuilt = torch.cat([Engine(lm, [prompts[p]]).ships_head_sets([[(f // args.heads, f % args.heads)]
                                                                    for f in chosen[p]])[0]
                         for p in range(len(prompts))]).cpu() if args.compare_rebuild else None
    sync()
    t_rebuild = time.perf_counter() - t1
    t1 = time.perf_counter()
    scores = Engine(lm, prompts).ships_pairs(pairs).cpu()
    sync()
    t_verify = time.perf_counter() - t1
    verified = {(p, hs[0][0] * args.heads + hs[0][1]): float(s) for (p, hs), s in zip(pairs, scores)}
    t_screened = t_estimate + t_verify
    screened = attribution.screened_scores(est.cpu(), verified)
    exact = exact.cpu()
    print(f"preset {args.preset}: {args.layers} layers x {args.heads} heads, hidden {args.hidden}, vocab {VOCAB}, "
          f"{args.prompts} prompts x {args.tokens} tokens, {args.dtype} on {args.device}, init {args.init}, "
          f"threads {torch.get_num_threads()}")
    print(f"exact sweep      {t_exact:8.2f} s   ({n_heads} heads per prompt)")
    print(f"screened sweep   {t_screened:8.2f} s   (estimate {t_estimate:.2f} s + {top} heads verified per prompt,"
          f" {100 * top / n_heads:.1f}%)")
    print(f"speed-up         {t_exact / t_screened:8.2f}x")
    if rebuilt is not None:
        print(f"verification: one engine {t_verify:.2f} s vs an engine per prompt as before "
              f"{t_rebuild:.2f} s ({t_rebuild / t_verify:.1f}x); max |difference| "
              f"{float((rebuilt - scores).abs().max()):.1e} of max {float(scores.abs().max()):.2e}")
    print(f"recall@10 {attribution.recall_at(exact, screened, 10):.3f}   recall@5 "
          f"{attribution.recall_at(exact, screened, 5):.3f}   recall@1 {attribution.recall_at(exact, screened, 1):.3f}"
          f"   estimate Spearman {attribution.spearman(exact, est.cpu()):.3f}")


if __name__ == "__main__":
    main()
