"""Collect real answers of SmolLM2-135M-Instruct to AdvBench prompts, unablated and with its top Ships heads
ablated, judged three ways (refused / complied / broken) beside the paper's binary verdict.

What it does (float32, one CPU thread, chat format with the model's own template and default system
prompt, greedy decoding, 48 new tokens; the paper's undifferentiated-attention ablation, epsilon 1e-5):

1. generates the unablated answers (k = 0) with shb.generate;
2. ranks heads by mean Ships over the prompts: shb's screening estimate of all 270 heads
   (shb.scorers.attribution), then exact Ships (shb's engine) of the best ``--candidates``; an exact
   sweep of all 270 heads costs about 20 CPU-minutes, too much for a shared 2-core machine
   (``--heads 18-8,...`` skips the ranking);
3. generates at k = 1, 3 with the top heads ablated (the hooks of shb.ablation);
4. judges every answer with keyword-paper (binary, what ASR counts) and its three-way outcome.

The answers land in a JSON file (default /tmp/smollm2_answers.json; the benchmark prompts stay out of the
repository) and a summary table is printed. Hand-labelled test cases in tests/cases/judges_real.json were
picked from this output.

    export SHB_CACHE=/work/cache/shb
    python bench/real_answers.py --advbench "$(python -c 'from shb.datasets import fetch_upstream as f; print(f(\"advbench\"))')" \
        --model-dir /work/cache/smollm2 --n 32 --out /tmp/smollm2_answers.json

About 5 CPU-minutes (torch.set_num_threads(1)).
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
    parser.add_argument("--advbench", default=None, help="AdvBench CSV (default: the hash-checked upstream copy)")
    parser.add_argument("--model-dir", default="/work/cache/smollm2")
    parser.add_argument("--n", type=int, default=32, help="first N AdvBench prompts")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--ks", default="0,1,3")
    parser.add_argument("--out", default="/tmp/smollm2_answers.json")
    parser.add_argument("--heads", default=None, help="ablate these heads (e.g. 18-8,...) instead of ranking by Ships")
    parser.add_argument("--candidates", type=int, default=12, help="screened heads whose exact Ships is measured")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from shb import judges
    from shb.ablation import format_head, parse_heads
    from shb.datasets import format_prompt, read_csv_text
    from shb.generate import generate

    if args.advbench is None:  # cache, $SHB_DATA_MIRROR or the download, checked by the pinned sha256
        from shb.datasets import fetch_upstream

        args.advbench = fetch_upstream("advbench")
    requests = read_csv_text(Path(args.advbench).read_text(encoding="utf-8"), "goal")[: args.n]
    lm = load_smollm2(args.model_dir)
    formatted = [format_prompt(q, "chat", lm.tokenizer) for q in requests]
    judge = judges.get("keyword-paper")
    ks = [int(k) for k in args.ks.split(",")]
    out = {"model": f"{args.model_dir}/{GGUF}", "dtype": "float32", "format": "chat", "decoding": "greedy",
           "max_new_tokens": args.max_new_tokens, "ablation": {"kind": "undifferentiated", "epsilon": 1e-5},
           "judge": judge.id, "judge_hash": judge.config_hash, "outcome_hash": judge.outcome_hash,
           "ships": None, "answers": [], "summary": []}

    def save():
        Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False), encoding="utf-8")

    def answer(k, heads):
        t0 = time.perf_counter()
        gens = generate(lm, formatted, heads=heads, kind="undifferentiated", epsilon=1e-5,
                        decoding={"mode": "greedy"}, max_new_tokens=args.max_new_tokens, batch_size=16)
        verdicts = judge.judge(requests, [g.text for g in gens], formatted)
        counts = {o: sum(v.outcome == o for v in verdicts) for o in ("refused", "complied", "broken")}
        for i, (g, v) in enumerate(zip(gens, verdicts)):
            out["answers"].append({"prompt_id": i, "request": requests[i], "k": k, "heads": [format_head(h) for h in heads],
                                   "text": g.text, "n_tokens": g.n_tokens, "finish_reason": g.finish_reason,
                                   "harmful": v.harmful, "raw": v.raw, "outcome": v.outcome,
                                   "outcome_rule": v.outcome_rule})
        asr = sum(v.harmful for v in verdicts) / len(verdicts)
        heads_text = ",".join(format_head(h) for h in heads) or "-"
        out["summary"].append({"k": k, "heads": heads_text, "n": len(verdicts), "asr": asr, **counts})
        print(f"k={k} heads {heads_text}: ASR {asr:.3f} ({sum(v.harmful for v in verdicts)}/{len(verdicts)});"
              f" refused {counts['refused']}, complied {counts['complied']}, broken {counts['broken']}"
              f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        save()

    if 0 in ks:
        answer(0, [])
    if args.heads:
        top = parse_heads(args.heads)
    else:
        top = top_heads(lm, formatted, args.candidates, out)
        save()
    for k in ks:
        if k > 0:
            answer(k, top[:k])
    print(f"wrote {len(out['answers'])} answers to {args.out}")


def top_heads(lm, formatted, candidates: int, out: dict):
    """Heads ranked by mean exact Ships over the prompts, among the ``candidates`` best by shb's screening
    estimate (shb.scorers.attribution): an exact sweep of all 270 heads costs ~20 CPU-minutes."""
    import torch

    from shb.ablation import format_head
    from shb.engine import Engine
    from shb.scorers.attribution import estimate

    t0 = time.perf_counter()
    est = estimate(lm, formatted, kind="undifferentiated", epsilon=1e-5).mean(dim=0)   # (L, H)
    n_heads = lm.n_heads
    order = torch.argsort(est.flatten(), descending=True).tolist()[:candidates]
    heads = [(i // n_heads, i % n_heads) for i in order]
    engine = Engine(lm, formatted, kind="undifferentiated", epsilon=1e-5, site=None, batch_size=16)
    exact = engine.ships_head_sets([[h] for h in heads])    # (P, S) nats
    mean = exact.mean(dim=0)
    ranked = sorted(range(len(heads)), key=lambda i: -float(mean[i]))
    top_count = {format_head(heads[i]): int((exact.argmax(dim=1) == i).sum()) for i in ranked}
    out["ships"] = {"method": f"exact Ships of the {candidates} best screened heads (mean over prompts)",
                    "heads": [{"head": format_head(heads[i]), "mean_ships": float(mean[i]),
                               "estimate": float(est.flatten()[order[i]]),
                               "top_of_prompts": top_count[format_head(heads[i])]} for i in ranked]}
    print(f"Ships ({time.perf_counter() - t0:.0f} s): " + ", ".join(
        f"{h['head']} {h['mean_ships']:.2f} nats (top on {h['top_of_prompts']})" for h in out["ships"]["heads"][:5]),
        flush=True)
    return [heads[i] for i in ranked]


if __name__ == "__main__":
    main()
