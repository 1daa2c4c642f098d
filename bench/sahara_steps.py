"""Exact Sahara steps before and after the engine's shared-G cache, and the screened step, side by side.

Run by hand, not in the test suite:

    python bench/sahara_steps.py --model fetch:smollm2 --prompts 4 --prompts-file "$SHB_DATA_MIRROR/maliciousinstruct.txt"
    python bench/sahara_steps.py --model fetch:qwen2.5-coder-1.5b --dtype bfloat16 --prompts 4 --no-before \\
        --prompts-file "$SHB_DATA_MIRROR/maliciousinstruct.txt"

Every step scores G + {h} for every candidate h. Before (``shared=()``, what shb did until the
cache): every set starts at its lowest layer, so once G holds a head in layer l0 every candidate
above l0 reruns layers l0.. . After (``shared=G``, what ``shb.search.sahara_step`` does now): G runs
once per step, its hidden states entering every layer are cached, and each candidate starts at its
own layer. Screened (``shb.search.screened_sahara_step``, ``--screened-top`` verified): run with the
*exact* search's G at every step, so each step's pick is compared with the exact pick for the same
G. Each method has its own engine (base passes outside the times); times per step, the picks, the
largest angle difference between before and after, where the estimate ranked the exact winner, and
the bound: layer passes before over after (what the cache can save at most, G's own pass counted).

``--exact-db DB --exact-unit UNIT`` takes the exact search from a stored ``sahara`` unit instead of
running it (its prompts, as the unit's dataset stored them, chat-formatted; its picks, scores and step
seconds) and runs the screened steps with that unit's G: how a large model's screened search compares
with an exact search that took an hour, without paying the hour again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    from real_model import model_parser

    p = model_parser(__doc__.split("\n\n")[0])
    p.add_argument("--skip", type=int, default=0, help="start at this line of the prompt file")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--screened-top", type=int, default=10, help="candidates the screened step verifies (0: no screen)")
    p.add_argument("--directions", type=int, default=8)
    p.add_argument("--no-before", action="store_true", help="skip the uncached exact step (slow on large models)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--exact-db", default=None, help="a results database holding an exact sahara unit")
    p.add_argument("--exact-unit", default=None, help="that unit's unit_id (prefix)")
    args = p.parse_args(argv)

    import torch
    from real_model import load, timed

    from shb.datasets import format_prompt
    from shb.engine import Engine
    from shb.search import best, candidates, score_head_sets, screened_sahara_step

    torch.set_num_threads(args.threads)
    t_load, lm = timed(lambda: load(args.model, args.dtype))
    lines = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    lines = lines[args.skip: args.skip + args.prompts]
    stored = stored_exact(args.exact_db, args.exact_unit) if args.exact_db else None
    if stored:
        lines = stored["texts"]
        args.no_before, args.steps = True, len(stored["steps"])
        print(f"exact search from {args.exact_db} unit {stored['unit_id']}: picks "
              f"{[f'{l}-{h}' for l, h in stored['picks']]}, step seconds {[round(t) for t in stored['seconds']]}")
    prompts = [format_prompt(t, "chat", lm.tokenizer) for t in lines]
    print(f"model: {args.model} {args.dtype}, {lm.n_layers} layers x {lm.n_heads} heads, loaded in {t_load:.0f} s; "
          f"{len(prompts)} prompts; torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)

    def name(h):
        return f"{h[0]}-{h[1]}"

    engines = {m: Engine(lm, prompts) for m in ("before", "after", "screened")}
    for e in engines.values():
        e.base_hidden  # noqa: B018 - the base passes, outside the step times
    g, rows = [], []
    for step in range(args.steps):
        cands = candidates(engines["after"], g)
        if stored:
            t_a, (head, value) = stored["seconds"][step], stored["steps"][step]
        else:
            t_a, s_a = timed(lambda: score_head_sets(engines["after"], [[*g, h] for h in cands], shared=g))
            head, value = best(zip(cands, s_a))
        row = {"step": step, "G": list(g), "after": t_a, "pick": head, "angle": value}
        # Layer passes per prompt, before/after: the most the cache can save (G's own pass counted).
        passes_before = sum(lm.n_layers - min([h[0], *(x[0] for x in g)]) for h in cands)
        passes_after = sum(lm.n_layers - h[0] for h in cands) + (lm.n_layers - min(x[0] for x in g) if g else 0)
        row["bound"] = passes_before / passes_after
        if not args.no_before:
            row["before"], s_b = timed(lambda: score_head_sets(engines["before"], [[*g, h] for h in cands]))
            row["before_pick"] = best(zip(cands, s_b))[0]
            row["diff"] = max(abs(x - y) for x, y in zip(s_b, s_a))
        if args.screened_top:
            row["screened"], found = timed(lambda: screened_sahara_step(
                engines["screened"], g, top=args.screened_top, directions=args.directions))
            ranked = sorted(found["estimates"], key=lambda hv: -hv[1])
            row["screened_pick"], row["rank"] = found["chosen"], 1 + [h for h, _ in ranked].index(head)
        rows.append(row)
        print("measured: " + ", ".join(f"{k} {v:.1f} s" if isinstance(v, float) and k in ("after", "before", "screened")
                                       else f"{k} {v}" for k, v in row.items()) + f"; load {os.getloadavg()[0]:.1f}",
              flush=True)
        g.append(head)

    if stored:
        print("\n(the 'after s' column holds the stored exact run's step seconds: that run may predate the cache)")
    print(f"\n{'step':>4s} {'G':18s} {'exact pick':>10s} {'after s':>8s} {'before s':>9s} {'speedup':>8s} "
          f"{'bound':>6s} {'screened s':>10s} {'vs after':>8s}  screened pick")
    for r in rows:
        before = f"{r['before']:9.1f} {r['before'] / r['after']:7.2f}x" if "before" in r else f"{'-':>9s} {'-':>8s}"
        if "screened" in r:
            same = "same" if r["screened_pick"] == r["pick"] else f"DIFFERENT (exact winner's estimate rank {r['rank']})"
            screened = f"{r['screened']:10.1f} {r['after'] / r['screened']:7.1f}x  {name(r['screened_pick'])} {same}"
        else:
            screened = ""
        print(f"{r['step']:4d} {', '.join(map(name, r['G'])) or '-':18s} {name(r['pick']):>10s} {r['after']:8.1f} "
              f"{before} {r['bound']:5.2f}x {screened}")
    if not args.no_before:
        tb, ta = sum(r["before"] for r in rows), sum(r["after"] for r in rows)
        same = all(r["before_pick"] == r["pick"] for r in rows)
        print(f"exact, all {args.steps} steps: before {tb:.1f} s, after {ta:.1f} s: {tb / ta:.2f}x; same picks: {same}; "
              f"max angle difference {max(r['diff'] for r in rows):.1e} deg")
    if args.screened_top:
        ts, ta = sum(r["screened"] for r in rows), sum(r["after"] for r in rows)
        print(f"screened (top {args.screened_top}, {args.directions} directions) vs exact after: {ta / ts:.1f}x per step; "
              f"same picks: {all(r['screened_pick'] == r['pick'] for r in rows)}")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def stored_exact(db: str, unit: str) -> dict:
    """A stored exact ``sahara`` unit: its prompt texts, each step's (pick, score) and committed seconds."""
    import json

    import duckdb

    con = duckdb.connect(db, read_only=True)
    (unit_id, dataset_id, spec), = con.execute(
        "SELECT unit_id, dataset_id, spec FROM units WHERE unit_id LIKE ? AND metric_kind = 'sahara'",
        [unit + "%"]).fetchall()
    if json.loads(spec)["metric"].get("screen"):
        raise SystemExit(f"unit {unit_id} is a screened search, not an exact one")
    texts = [t for (t,) in con.execute("SELECT text FROM prompts WHERE dataset_id = ? ORDER BY prompt_id",
                                       [dataset_id]).fetchall()]
    steps = [((l, h), v) for l, h, v in con.execute(
        "SELECT layer, head, score FROM sahara_steps WHERE unit_id = ? AND chosen ORDER BY step", [unit_id]).fetchall()]
    seconds = [0.0] * len(steps)
    for chunk, t in con.execute("SELECT chunk, seconds FROM chunks WHERE unit_id = ?", [unit_id]).fetchall():
        seconds[int(chunk.split("-")[1])] += t
    return {"unit_id": unit_id, "texts": texts, "steps": steps, "picks": [h for h, _ in steps], "seconds": seconds}


if __name__ == "__main__":
    sys.exit(main())
