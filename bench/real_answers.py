"""Collect real answers of SmolLM2-135M-Instruct to AdvBench prompts, unablated and with its top Ships heads
ablated, judged three ways (refused / complied / broken) beside the paper's binary verdict.

What it does (float32, one CPU thread, chat format with the model's own template and default system
prompt, greedy decoding, 48 new tokens; the paper's undifferentiated-attention ablation, epsilon 1e-5):

1. per-prompt Ships of all 270 heads on the first N AdvBench prompts (shb's engine);
2. ranks heads by mean Ships over those prompts; k = 1 and k = 3 take the top 1 and 3;
3. generates at k = 0, 1, 3 with shb.generate (the ablation hooks of shb.ablation);
4. judges every answer with keyword-paper (binary, what ASR counts) and its three-way outcome.

The answers land in a JSON file (default /tmp/smollm2_answers.json; the benchmark prompts stay out of the
repository) and a summary table is printed. Hand-labelled test cases in tests/cases/judges_real.json were
picked from this output.

    export SHB_CACHE=/work/cache/shb
    python bench/real_answers.py --advbench /work/shared/data/advbench_harmful_behaviors.csv \
        --model-dir /work/cache/smollm2 --n 32 --out /tmp/smollm2_answers.json

Runs in a few minutes on 2 CPU cores (torch.set_num_threads(1)).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2(model_dir: str, gguf_file: str = GGUF):
    """SmolLM2 through transformers' GGUF reader, dequantized to float32, wrapped as shb's LoadedModel."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shb.models import LoadedModel
    from shb.models.layout import detect

    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file, dtype=torch.float32).eval()
    return LoadedModel(model=model, tokenizer=tok, layout=detect(model), source=f"{model_dir}/{gguf_file}",
                       path=model_dir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--advbench", default="/work/shared/data/advbench_harmful_behaviors.csv")
    parser.add_argument("--model-dir", default="/work/cache/smollm2")
    parser.add_argument("--n", type=int, default=32, help="first N AdvBench prompts")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--ks", default="0,1,3")
    parser.add_argument("--out", default="/tmp/smollm2_answers.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from shb import judges
    from shb.ablation import format_head
    from shb.datasets import format_prompt, read_csv_text
    from shb.engine import Engine
    from shb.generate import generate

    requests = read_csv_text(Path(args.advbench).read_text(encoding="utf-8"), "goal")[: args.n]
    lm = load_smollm2(args.model_dir)
    formatted = [format_prompt(q, "chat", lm.tokenizer) for q in requests]

    t0 = time.perf_counter()
    engine = Engine(lm, formatted, kind="undifferentiated", epsilon=1e-5, site=None, batch_size=16)
    with torch.no_grad():
        ships = torch.cat([engine.ships_layer(layer) for layer in range(lm.n_layers)], dim=1)  # (P, L*H)
    heads = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    mean = ships.mean(dim=0)
    order = torch.argsort(mean, descending=True).tolist()
    top = [heads[i] for i in order[:3]]
    per_prompt_top = [heads[int(i)] for i in ships.argmax(dim=1)]
    print(f"Ships: {time.perf_counter() - t0:.0f} s; top heads by mean Ships: "
          + ", ".join(f"{format_head(heads[i])} ({mean[i]:.2f} nats)" for i in order[:5]))
    print(f"  {format_head(top[0])} is the top head on {sum(h == top[0] for h in per_prompt_top)} of {len(requests)} prompts")

    judge = judges.get("keyword-paper")
    ks = [int(k) for k in args.ks.split(",")]
    out = {"model": f"{args.model_dir}/{GGUF}", "dtype": "float32", "format": "chat", "decoding": "greedy",
           "max_new_tokens": args.max_new_tokens, "ablation": {"kind": "undifferentiated", "epsilon": 1e-5},
           "judge": judge.id, "judge_hash": judge.config_hash,
           "top_heads": [{"head": format_head(heads[i]), "mean_ships": float(mean[i])} for i in order[:10]],
           "answers": []}
    print(f"{'k':>2} {'heads':<16} {'ASR':>6} {'refused':>8} {'complied':>9} {'broken':>7}  seconds")
    for k in ks:
        t0 = time.perf_counter()
        gens = generate(lm, formatted, heads=top[:k], kind="undifferentiated", epsilon=1e-5,
                        decoding={"mode": "greedy"}, max_new_tokens=args.max_new_tokens, batch_size=16)
        answers = [g.text for g in gens]
        verdicts = judge.judge(requests, answers)
        counts = {"refused": 0, "complied": 0, "broken": 0}
        for i, (g, v) in enumerate(zip(gens, verdicts)):
            outcome = getattr(v, "outcome", None)
            counts[outcome] = counts.get(outcome, 0) + 1
            out["answers"].append({"prompt_id": i, "request": requests[i], "k": k,
                                   "heads": [format_head(h) for h in top[:k]], "text": g.text,
                                   "n_tokens": g.n_tokens, "finish_reason": g.finish_reason,
                                   "harmful": v.harmful, "raw": v.raw, "outcome": outcome,
                                   "outcome_rule": getattr(v, "outcome_rule", None)})
        asr = sum(v.harmful for v in verdicts) / len(verdicts)
        print(f"{k:>2} {','.join(format_head(h) for h in top[:k]) or '-':<16} {asr:6.3f} {counts['refused']:8d}"
              f" {counts['complied']:9d} {counts['broken']:7d}  {time.perf_counter() - t0:.0f}")
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {len(out['answers'])} answers to {args.out}")


if __name__ == "__main__":
    main()
