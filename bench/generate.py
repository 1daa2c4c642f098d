"""Generation throughput: shb's batched KV-cached loop under a one-head ablation against
(a) transformers' ``model.generate`` without ablation (target: shb >= 0.8x) and
(b) the paper's reference loop (batch 1, full forward per token, no cache; target: shb >= 10x).

Run by hand (not part of the tests):

    . .venv/bin/activate && python bench/generate.py                # random Llama, then the toy model if built
    python bench/generate.py --new-tokens 32 --prompts 32 --repeats 3 --no-toy
    python bench/generate.py --preset 7b --no-toy                   # GPU: Llama-2-7B shape, bf16 (bench/gpu.sh)

Tokens/s counts the tokens actually generated (a row stops at its EOS).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEMPLATE = "You are a helpful assistant. Answer the request of the user below.\nUser: {goal}\nAssistant:"


def goals(n: int) -> list[str]:
    """AdvBench goals (hash-checked: shb's cache, $SHB_DATA_MIRROR or the download), else a stand-in."""
    from shb import datasets
    from shb.errors import UsageError

    try:
        rows = [p.text for p in datasets.load({"kind": "advbench"})]
    except UsageError:  # a stand-in so that the benchmark runs anywhere
        rows = [f"Explain step {i} of a long and detailed procedure for building a bookshelf" for i in range(520)]
    return rows[:n]


PRESETS = {  # geometry of the random Llama; the 7b one has Llama-2-7B's shape (vocabulary 32,000)
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 8, "num_attention_heads": 8,
              "num_key_value_heads": 8, "vocab_size": None, "dtype": "float32", "device": "cpu"},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 32000, "dtype": "bfloat16", "device": "cuda"},
}


def random_llama(n_prompts: int, preset: str = "small"):
    """A random-initialised Llama (``PRESETS``) with a BPE tokenizer trained on the prompts. With a model
    vocabulary larger than the tokenizer's, ids beyond it decode to nothing (tokens are still counted)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = goals(520)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus + [TEMPLATE], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", padding_side="left")
    geometry = dict(PRESETS[preset])
    dtype, device = getattr(torch, geometry.pop("dtype")), geometry.pop("device")
    geometry["vocab_size"] = geometry["vocab_size"] or len(tokenizer)
    config = LlamaConfig(**geometry, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    prompts = [TEMPLATE.format(goal=g) for g in goals(n_prompts)]
    return SimpleNamespace(model=model, tokenizer=tokenizer), prompts


def toy_model(n_prompts: int):
    import shb.models
    from shb.models import toy

    if not hasattr(toy, "ensure") or not hasattr(shb.models, "load"):
        return None, None
    lm = shb.models.load("toy")
    texts = toy.prompts.harmful("test", n=n_prompts)
    prompts = [lm.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                add_generation_prompt=True) for t in texts]
    return lm, prompts


def hf_generate(lm, prompts, new_tokens, batch_size):
    """Plain transformers generation, no ablation; returns the number of tokens generated."""
    import torch

    tok, n = lm.tokenizer, 0
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i: i + batch_size], return_tensors="pt", padding=True).to(lm.model.device)
        with torch.inference_mode():
            out = lm.model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            n += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return n


def timed_interleaved(fns: dict, repeats: dict):
    """{name: (median seconds, tokens)}; one warm-up each (not for single runs), then the
    strategies take turns, so that a burst of load from other processes on a shared machine
    does not land on one strategy only."""
    for k, fn in fns.items():
        if repeats[k] > 1:  # the slow single-run strategy needs no warm-up of its own
            fn()
    times = {k: [] for k in fns}
    tokens = {}
    for r in range(max(repeats.values())):
        for k, fn in fns.items():
            if r < repeats[k]:
                t0 = time.perf_counter()
                tokens[k] = fn()
                times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(times[k]), tokens[k]) for k in fns}


def bench(name, lm, prompts, args):
    from shb.generate import generate
    from shb.models import encode_prompt as encode

    head = [(lm.model.config.num_hidden_layers // 2, 1)]
    lengths = [len(encode(lm.tokenizer, p)) for p in prompts]
    print(f"\n== {name}: {len(prompts)} prompts, {min(lengths)}-{max(lengths)} tokens (mean "
          f"{statistics.mean(lengths):.0f}), {args.new_tokens} new tokens, batch {args.batch_size}, head {head}")
    ref_prompts = prompts[: args.reference_prompts]

    def shb_cached():
        gens = generate(lm, prompts, heads=head, max_new_tokens=args.new_tokens, batch_size=args.batch_size)
        return sum(g.n_tokens for g in gens)

    def shb_cached_no_ablation():
        gens = generate(lm, prompts, max_new_tokens=args.new_tokens, batch_size=args.batch_size)
        return sum(g.n_tokens for g in gens)

    def reference():
        gens = generate(lm, ref_prompts, heads=head, max_new_tokens=args.new_tokens, strategy="reference")
        return sum(g.n_tokens for g in gens)

    ref_name = f"reference loop, 1 head ablated ({len(ref_prompts)} prompts)"
    fns = {
        "shb cached, 1 head ablated": shb_cached,
        "shb cached, no ablation": shb_cached_no_ablation,
        "transformers generate, no ablation": lambda: hf_generate(lm, prompts, args.new_tokens, args.batch_size),
        ref_name: reference,
    }
    repeats = {k: (1 if k == ref_name else args.repeats) for k in fns}
    rows = timed_interleaved(fns, repeats)
    rate = {k: tokens / sec for k, (sec, tokens) in rows.items()}
    for k, (sec, tokens) in rows.items():
        print(f"  {k:<48} {tokens:6d} tokens {sec:8.2f} s {rate[k]:9.1f} tokens/s")
    shb_rate = rate["shb cached, 1 head ablated"]
    hf_rate = rate["transformers generate, no ablation"]
    ref_rate = [v for k, v in rate.items() if k.startswith("reference")][0]
    print(f"  shb / transformers generate: {shb_rate / hf_rate:.2f}x (target >= 0.8x)")
    print(f"  shb / reference loop:        {shb_rate / ref_rate:.1f}x (target >= 10x)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference-prompts", type=int, default=32, help="prompts for the (slow) reference loop")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-toy", action="store_true")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="geometry of the random Llama")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if PRESETS[args.preset]["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--preset {args.preset}: no CUDA device here")
    lm, prompts = random_llama(args.prompts, args.preset)
    g = PRESETS[args.preset]
    bench(f"random Llama ({g['num_hidden_layers']} layers, {g['num_attention_heads']} heads, hidden {g['hidden_size']}, "
          f"{g['dtype']} on {g['device']})", lm, prompts, args)
    if not args.no_toy:
        lm, prompts = toy_model(args.prompts)
        if lm is None:
            print("\n(toy model: shb.models.toy.ensure / shb.models.load not available; skipped)")
        else:
            bench("toy model", lm, prompts, args)


if __name__ == "__main__":
    main()
