"""Ships and Sahara on a real model, every method side by side in one run, ratios printed.

Run by hand, not in the test suite (SmolLM2-135M-Instruct from its GGUF file; a prompt file with
one prompt per line, e.g. MaliciousInstruct):

    python bench/real_model.py --model fetch:smollm2 --prompts-file "$SHB_DATA_MIRROR/maliciousinstruct.txt"
    python bench/real_model.py --model fetch:qwen2.5-coder-1.5b --prompts 2 --steps 1 --naive-layers 1 \\
        --prompts-file "$SHB_DATA_MIRROR/maliciousinstruct.txt"

The model (fetched first with `shb models fetch NAME`) is dequantized to ``--dtype`` (float32) and the
first ``--prompts`` prompts are formatted with its chat template. Measured on those prompts, in this order:

* paper's loop (``strategy="naive"``: batch 1, one full forward per prompt and head, logits of every
  position) and the fair naive loop (the same, the LM head on the last position only;
  bench/ships_sweep.py) on a timed sample (``--naive-layers`` layers x all prompts), extrapolated to
  every layer: a forward pass costs the same whatever layer its head is in. A Sahara step of the
  paper's loop is the same number of forward passes (one per candidate and prompt), so its time per
  step is the sweep's (printed as such, not measured twice);
* shb's exact Ships sweep (shb.engine) and the screened sweep (attribution estimate + each prompt's
  top ``--top`` heads verified on one engine), with recall@10 of the screened ranking against the
  exact one;
* exact Sahara (every candidate of every step through the engine) and screened Sahara (estimate every
  candidate, verify the top ``--sahara-top``), ``--steps`` steps each, timed per step: the same heads?
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load(model: str, dtype: str):
    """The model as a suite loads it: ``fetch:NAME`` (see `shb models ls`) or a .gguf file, sdpa attention."""
    from shb.models import gguf, load_hf_spec

    spec = gguf.spec_from_cli(model, None)
    if spec is None:
        raise SystemExit(f"--model {model}: give fetch:NAME (e.g. fetch:smollm2, fetch:qwen2.5-coder-1.5b) or a .gguf file")
    return load_hf_spec({"id": "bench", **spec, "attn_implementation": "sdpa"}, dtype=dtype, device="cpu")


def model_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every real-model bench takes: which model, in which dtype, on which prompts."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="fetch:NAME (`shb models ls`) or a .gguf file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--prompts-file", required=True, help="one prompt per line")
    p.add_argument("--prompts", type=int, default=8)
    return p


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    p = model_parser(__doc__.split("\n\n")[0])
    p.add_argument("--top", type=int, default=27, help="heads verified per prompt by the screened sweep")
    p.add_argument("--sahara-top", type=int, default=10, help="candidates verified per screened Sahara step")
    p.add_argument("--directions", type=int, default=8, help="singular directions of screened Sahara's estimate")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--naive-layers", type=int, default=1, help="layers of the slow loops' timed sample")
    p.add_argument("--layers", type=int, default=None, help="sweep only the first N layers (a quick smoke run)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch
    from ships_sweep import fair_naive_sweep

    from shb.datasets import format_prompt
    from shb.engine import Engine
    from shb.models import encode_prompt
    from shb.scorers import attribution
    from shb.search import best, sahara_step, screened_sahara_step

    torch.set_num_threads(args.threads)
    t_load, lm = timed(lambda: load(args.model, args.dtype))
    texts = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()][: args.prompts]
    prompts = [format_prompt(t, "chat", lm.tokenizer) for t in texts]
    lengths = [len(encode_prompt(lm.tokenizer, x)) for x in prompts]
    n_layers = args.layers or lm.n_layers
    layers, heads = list(range(n_layers)), lm.n_heads
    n = n_layers * heads
    cfg = lm.model.config
    print(f"model: {args.model} -> {type(lm.model).__name__} {args.dtype}, {lm.n_layers} layers x {heads} heads "
          f"(swept: {n_layers} layers, {n} heads), hidden {cfg.hidden_size}, vocab {cfg.vocab_size}; loaded in {t_load:.0f} s")
    print(f"prompts: {len(prompts)} from {Path(args.prompts_file).name}, chat template, {min(lengths)}-{max(lengths)} "
          f"tokens; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    # -- Ships: the slow loops on a sample, extrapolated ------------------------------------------
    sample = layers[: args.naive_layers]
    scale = n_layers / len(sample)
    t_paper, paper = timed(lambda: torch.cat([Engine(lm, prompts, strategy="naive").ships_layer(l) for l in sample], 1))
    ns = SimpleNamespace(device="cpu", heads=heads, epsilon=1e-5)
    t_fair, fair = timed(lambda: fair_naive_sweep(lm, prompts, sample, ns, encode=lambda x: encode_prompt(lm.tokenizer, x)))
    t_paper_full, t_fair_full = t_paper * scale, t_fair * scale
    print(f"measured: paper's loop sample {t_paper:.1f} s, fair naive loop sample {t_fair:.1f} s", flush=True)

    # -- Ships: shb's exact and screened sweeps -----------------------------------------------------
    t_exact, exact = timed(lambda: (lambda e: torch.cat([e.ships_layer(l) for l in layers], 1))(Engine(lm, prompts)))
    agree = float((exact[:, : len(sample) * heads] - paper).abs().max() / paper.abs().max())
    agree_fair = float((exact[:, : len(sample) * heads] - fair).abs().max() / fair.abs().max())
    print(f"measured: shb exact sweep {t_exact:.1f} s", flush=True)

    def screened_sweep():
        est = attribution.estimate(lm, prompts)[:, :n_layers].reshape(len(prompts), -1)
        chosen = [est[i].topk(args.top).indices.tolist() for i in range(len(prompts))]
        pairs = [(i, [divmod(f, heads)]) for i in range(len(prompts)) for f in chosen[i]]
        values = Engine(lm, prompts).ships_pairs(pairs)
        verified = {(i, hs[0][0] * heads + hs[0][1]): float(v) for (i, hs), v in zip(pairs, values)}
        return attribution.screened_scores(est, verified), verified

    t_screen, (screened, verified) = timed(screened_sweep)
    recall = attribution.recall_at(exact, screened, 10)
    print(f"measured: shb screened sweep {t_screen:.1f} s", flush=True)
    verified_exact = max(abs(v - float(exact[i, f])) for (i, f), v in verified.items()) / float(exact.abs().max())

    # -- Sahara: exact and screened, per step ------------------------------------------------------
    exact_engine, screen_engine = Engine(lm, prompts), Engine(lm, prompts)
    t_base, _ = timed(lambda: exact_engine.base_hidden)
    screen_engine.base_hidden
    exact_steps, screened_steps = [], []
    g_exact, g_screen = [], []
    for step in range(args.steps):
        t, results = timed(lambda: sahara_step(exact_engine, g_exact, layers=layers))
        head, value = best(results)
        exact_steps.append((t, head, value))
        t, found = timed(lambda: screened_sahara_step(screen_engine, g_screen, layers=layers, top=args.sahara_top,
                                                      directions=args.directions))
        rank = None
        if g_exact == g_screen:  # the same G: where did the screen rank the exact winner?
            ranked = sorted(found["estimates"], key=lambda hv: -hv[1])
            rank = 1 + [h for h, _ in ranked].index(head)
        screened_steps.append((t, found["chosen"], found["score"], rank))
        print(f"measured: Sahara step {step}: exact {exact_steps[-1][0]:.1f} s picks {head}, screened {t:.1f} s "
              f"picks {found['chosen']}", flush=True)
        g_exact.append(head)
        g_screen.append(found["chosen"])

    # -- the table ---------------------------------------------------------------------------------
    def name(h):
        return f"{h[0]}-{h[1]}"

    rows = [("paper's loop, Ships sweep", t_paper_full, f"extrapolated x{scale:g} from {len(sample)} layer(s), "
             f"{t_paper:.1f} s measured"),
            ("fair naive loop, Ships sweep", t_fair_full, f"extrapolated x{scale:g}, {t_fair:.1f} s measured"),
            ("shb exact sweep", t_exact, f"max rel diff to paper's loop {agree:.1e}, to fair loop {agree_fair:.1e}"),
            ("shb screened sweep", t_screen, f"top {args.top}/{n} verified per prompt; recall@10 {recall:.3f}; "
             f"verified values' max rel diff to exact {verified_exact:.1e}")]
    for i, ((te, he, ve), (ts, hs, vs, rank)) in enumerate(zip(exact_steps, screened_steps)):
        rows.append((f"exact Sahara step {i}", te, f"picks {name(he)} ({ve:.3f} deg)"))
        same = "same head" if he == hs else "DIFFERENT head" + (f" (exact winner ranked {rank} by the estimate)"
                                                                if rank else " (earlier steps differ)")
        rows.append((f"screened Sahara step {i}", ts, f"picks {name(hs)} ({vs:.3f} deg), top {args.sahara_top} "
                     f"verified, {args.directions} directions: {same}; {te / ts:.1f}x exact step"))
    print(f"\n{'method':32s} {'seconds':>9s} {'vs paper':>9s} {'vs fair':>8s}  notes")
    for label, seconds, note in rows:
        print(f"{label:32s} {seconds:9.1f} {t_paper_full / seconds:8.1f}x {t_fair_full / seconds:7.1f}x  {note}")
    print(f"(a Sahara step of the paper's loop is {n} candidates x {len(prompts)} prompts full forwards: "
          f"{t_paper_full:.0f} s as the sweep; the engines' base pass {t_base:.1f} s is outside the step times)")
    mean_exact = sum(t for t, _, _ in exact_steps) / len(exact_steps)
    mean_screen = sum(t for t, _, _, _ in screened_steps) / len(screened_steps)
    same_heads = [h for _, h, _ in exact_steps] == [h for _, h, _, _ in screened_steps]
    print(f"\nscreened Ships vs paper's loop: {t_paper_full / t_screen:.1f}x (target >= 10x), recall@10 {recall:.3f} "
          f"(target >= 0.9); vs shb exact sweep {t_exact / t_screen:.1f}x; shb exact sweep vs paper's loop "
          f"{t_paper_full / t_exact:.1f}x, vs fair naive loop {t_fair_full / t_exact:.1f}x")
    print(f"screened Sahara vs exact Sahara per step: {mean_exact / mean_screen:.1f}x (target >= 5x); same first "
          f"{args.steps} heads: {same_heads} (exact {[name(h) for _, h, _ in exact_steps]}, screened "
          f"{[name(h) for _, h, _, _ in screened_steps]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
