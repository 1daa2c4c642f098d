"""Screened Ships on real models: recall@10 of the verified ranking and the work it costs, for each
estimator and number of verified heads N, every model side by side in one run.

Run by hand, not in the test suite (models fetched first with `shb models fetch NAME`):

    nice python bench/screen_recall.py --model fetch:smollm2@float32 --model fetch:qwen2.5-coder-1.5b@bfloat16 \\
        --prompts-file "$SHB_DATA_MIRROR/maliciousinstruct.txt"

Prompts: the last ``--prompts`` lines of the file (held out: the earlier measurements and any tuning
used the first ones), chat template. Per model the exact sweep (shb.engine, every head) is the
reference; per estimator (shb.scorers.attribution) the estimate of every head, then for each N the
ranking a screened sweep reports: each prompt's N best estimates verified exactly (their exact values
are the exact sweep's: Engine.ships_pairs computes the same numbers, bench/screening.py checks that),
the rest below them. Reported per (model, estimator, N):

* recall@10: share of the exact top 10 heads per prompt found among the verified heads' top 10, the
  verified heads being each prompt's N best estimates and, with ``pool`` k (``--pools``), the heads
  among any prompt's k best exact scores in its batch of 8 (as ShipsMetric's ``screen.pool``);
* work in forward-pass equivalents per prompt over the exact sweep's (one partial forward per head):
  *counted* ((estimate passes + heads verified) / heads, the estimate counted as ShipsMetric.estimate counts it:
  two forwards and a backward, about two forwards, per gradient row) and *timed* ((estimate seconds /
  seconds per head of the exact sweep + heads verified) / heads, measured in this run);
* the largest N within a tenth of the exact sweep's counted work, and its recall@10.

``--diagnose P`` also splits the estimate's error on the first P prompts: every head is ablated by
hand (one full forward each, shb.ablation.ablate) to get its exact next-token logit change dl, and
the recall@10 of the Fisher form 1/2 Var_p(dl) of that *exact* change (over the full vocabulary and over
the 16 most probable tokens, as ``fisher`` renormalises) is printed beside the estimate's (the same
Fisher form of the *linearised* change). High recall for the first and low for the last says the
second-order form is sound and the linearisation of the layers above the head is what misses.

``--cache DIR`` keeps each model's exact sweep (and its time) between runs while estimators are tried;
a cached time is from the run that measured it (printed so).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ESTIMATORS = ["fisher:16", "fisher:4", "sampled:8", "logit-top"]
TOPS = [10, 15, 20, 25, 27, 30, 40]


def estimate_passes(estimator: str, tokens: int) -> int:
    """Forward-pass equivalents of one prompt's estimate, as shb.metrics.ships.ShipsMetric.estimate counts
    them: two forwards, and about two forwards per gradient row (``tokens`` rows + the mean row;
    logit-top has one token row)."""
    rows = (1 if estimator == "logit-top" else tokens) + 1
    return 2 + 2 * rows


def parse_estimator(text: str) -> tuple[str, int]:
    name, _, tokens = text.partition(":")
    return name, int(tokens or 16)


def exact_sweep(lm, prompts, cache: Path | None, key: str):
    import torch

    from shb.engine import Engine

    path = cache / f"exact-{key}.pt" if cache else None
    if path and path.exists():
        saved = torch.load(path, weights_only=True)
        return saved["scores"], float(saved["seconds"]), True
    t0 = time.perf_counter()
    engine = Engine(lm, prompts)
    scores = torch.cat([engine.ships_layer(layer) for layer in range(lm.n_layers)], 1).cpu().double()  # (P, L*H)
    seconds = time.perf_counter() - t0
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"scores": scores, "seconds": torch.tensor(seconds)}, path)
    return scores, seconds, False


def verified_recall(exact, est, top: int, pool: int = 0, batch: int = 8, k: int = 10) -> tuple[float, float]:
    """recall@k of the ranking a screened sweep reports (each prompt's ``top`` best estimates exact, then
    with ``pool`` the heads among any prompt's ``pool`` best exact scores in its batch of ``batch``
    prompts, as ShipsMetric does: attribution.pooled) and the heads verified per prompt."""
    from shb.scorers import attribution

    chosen = [est[p].topk(top).indices.tolist() for p in range(est.shape[0])]
    verified = {}
    for lo in range(0, len(chosen), batch):
        part = chosen[lo: lo + batch]
        extra = attribution.pooled(part, [[float(exact[lo + i, f]) for f in heads] for i, heads in enumerate(part)],
                                   pool)
        for i, heads in enumerate(part):
            verified.update({(lo + i, f): float(exact[lo + i, f]) for f in heads + extra[i]})
    recall = attribution.recall_at(exact, attribution.screened_scores(est, verified), k)
    return recall, len(verified) / est.shape[0]


def diagnose(lm, prompts, exact, estimate) -> dict:
    """recall@10 against the exact sweep of: the Fisher form of each head's exact logit change (full
    vocabulary; the 16 most probable tokens, renormalised) and ``estimate`` (P, heads), on ``prompts``."""
    import torch

    from shb.ablation import ablate
    from shb.scorers import attribution

    full, top16 = torch.zeros(exact.shape, dtype=torch.float64), torch.zeros(exact.shape, dtype=torch.float64)
    heads = [(layer, h) for layer in range(lm.n_layers) for h in range(lm.n_heads)]
    for p, text in enumerate(prompts):
        ids, mask, pos = attribution.encode_prompts(lm.tokenizer, [text], "cpu")

        def last_logits():
            return lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[0, -1].double()

        with torch.no_grad():
            base = last_logits()
            probs = torch.softmax(base, -1)
            picks = probs.topk(16).indices
            weights = probs[picks] / probs[picks].sum()
            for f, head in enumerate(heads):
                with ablate(lm.model, [head], kind="undifferentiated", epsilon=1e-5):
                    dl = last_logits() - base
                full[p, f] = 0.5 * (probs * (dl - (probs * dl).sum()) ** 2).sum()
                d16 = dl[picks]
                top16[p, f] = 0.5 * (weights * (d16 - (weights * d16).sum()) ** 2).sum()
    rows = slice(0, len(prompts))
    return {"fisher of exact dl, full vocabulary": attribution.recall_at(exact[rows], full, 10),
            "fisher of exact dl, top 16 tokens": attribution.recall_at(exact[rows], top16, 10),
            "estimate (fisher of linearised dl, top 16)": attribution.recall_at(exact[rows], estimate[rows], 10)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="fetch:NAME or a .gguf file, @dtype to override --dtype (repeatable)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--prompts-file", required=True)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--estimators", default=",".join(ESTIMATORS), help="name[:tokens], comma-separated")
    p.add_argument("--tops", default=",".join(map(str, TOPS)), help="N values, comma-separated")
    p.add_argument("--pools", default="0,5", help="`pool` values (ShipsMetric screen.pool), comma-separated")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None, help="keep exact sweeps here between runs")
    p.add_argument("--diagnose", type=int, default=0, metavar="P",
                   help="on the first P prompts, split the estimate's error (one full forward per head and prompt)")
    args = p.parse_args(argv)

    import torch
    from real_model import load

    from shb.datasets import format_prompt
    from shb.scorers import attribution

    torch.set_num_threads(args.threads)
    lines = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    texts = lines[-args.prompts:]
    tops = [int(t) for t in args.tops.split(",")]
    pools = [int(t) for t in args.pools.split(",")]
    table = []
    for given in args.model:
        model, _, dtype = given.partition("@")
        dtype = dtype or args.dtype
        lm = load(model, dtype)
        prompts = [format_prompt(t, "chat", lm.tokenizer) for t in texts]
        n = lm.n_layers * lm.n_heads
        key = hashlib.sha256(json.dumps([model, dtype, prompts]).encode()).hexdigest()[:16]
        exact, t_exact, cached = exact_sweep(lm, prompts, args.cache, key)
        per_head = t_exact / n  # seconds per head (all prompts) of the exact sweep
        print(f"{model} {dtype}: {lm.n_layers} x {lm.n_heads} = {n} heads, {len(prompts)} prompts; exact sweep "
              f"{t_exact:.1f} s{' (cached)' if cached else ''}; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        for option in args.estimators.split(","):
            name, tokens = parse_estimator(option)
            t0 = time.perf_counter()
            est = attribution.estimate(lm, prompts, estimator=name, tokens=tokens).reshape(len(prompts), -1)
            t_est = time.perf_counter() - t0
            counted, timed = estimate_passes(name, tokens), t_est / per_head
            budget = int(n / 10 - counted)
            for pool in pools:
                for top in sorted(set(tops + ([budget] if budget >= 1 and not pool else []))):
                    if top > n:
                        continue
                    recall, verified = verified_recall(exact, est, top, pool)
                    table.append({"model": f"{model} {dtype}", "estimator": option, "N": top, "pool": pool,
                                  "verified": verified, "recall10": recall,
                                  "work_counted": (counted + verified) / n, "work_timed": (timed + verified) / n,
                                  "budget": top == budget and not pool, "spearman": attribution.spearman(exact, est)})
            if args.diagnose and option == "fisher:16":
                for what, value in diagnose(lm, prompts[: args.diagnose], exact, est).items():
                    print(f"  diagnosis, {args.diagnose} prompts: recall@10 of {what}: {value:.3f}", flush=True)
            print(f"  {option}: estimate {t_est:.1f} s = {timed:.1f} head-equivalents timed, {counted} counted; "
                  f"N within a tenth: {budget}", flush=True)
        del lm
    print(f"\n{'model':32s} {'estimator':10s} {'N':>4s} {'pool':>4s} {'verified':>8s} {'recall@10':>9s} "
          f"{'work (counted)':>14s} {'work (timed)':>12s} {'Spearman':>8s}")
    for row in table:
        mark = "  <- largest N within 1/10 (counted)" if row["budget"] else ""
        print(f"{row['model']:32s} {row['estimator']:10s} {row['N']:4d} {row['pool']:4d} {row['verified']:8.1f} "
              f"{row['recall10']:9.3f} {row['work_counted']:14.3f} {row['work_timed']:12.3f} "
              f"{row['spearman']:8.3f}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
