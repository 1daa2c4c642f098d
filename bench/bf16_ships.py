"""bf16/fp16 Ships against float32 Ships on the toy model: the measurement behind the tolerances of
tests/integration/test_numerics.py and the README's "Numerical precision" section.

    python bench/bf16_ships.py --prompts 16 --threads 1

For each floor, over the (prompt, head) values whose float32 score is at least the floor: how many,
and the max and median relative error of the reduced-precision engine (final norm, LM head and
log-softmax in float32); with ``--old-head``, also the naive loop scored from the model's own bf16
logits (shb before the float32 scoring head) for comparison.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--old-head", action="store_true", help="also score bf16 from the model's own bf16 logits")
    args = p.parse_args(argv)

    import torch

    import shb.models
    from shb.engine import Engine
    from shb.models import toy

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = shb.models.load("toy", dtype="float32", device="cpu")
    texts = toy.prompts.harmful("test", n=args.prompts)
    prompts = [lm.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                add_generation_prompt=True) for t in texts]
    sets = [[(layer, h)] for layer in range(lm.n_layers) for h in range(lm.n_heads)]
    ref = Engine(lm, prompts).ships_head_sets(sets)
    print(f"toy model, {len(prompts)} prompts x {len(sets)} heads; fp32 Ships quantiles (0, .5, .9, 1): "
          + ", ".join(f"{float(q):.1e}" for q in torch.quantile(ref.flatten(), torch.tensor([0, .5, .9, 1.],
                                                                                              dtype=ref.dtype))))
    runs = {}
    for dtype in (torch.bfloat16, torch.float16):
        reduced = SimpleNamespace(model=copy.deepcopy(lm.model).to(dtype), tokenizer=lm.tokenizer, layout=lm.layout)
        runs[f"{str(dtype)[6:]} engine, float32 head"] = Engine(reduced, prompts).ships_head_sets(sets)
        if args.old_head and dtype == torch.bfloat16:
            old = Engine(reduced, prompts, strategy="naive")
            old._backend.head = None  # the model's own bf16 logits
            runs["bfloat16 naive, bf16 head (old)"] = old.ships_head_sets(sets)
    for floor in (1e-4, 1e-3, 1e-2, 1e-1):
        above = ref >= floor
        strong = ref.mean(0) >= floor
        for name, got in runs.items():
            rel = ((got - ref).abs() / ref)[above]
            mean_rel = ((got.mean(0) - ref.mean(0)).abs() / ref.mean(0))[strong]
            means = (f"head means n={int(strong.sum())}: max {float(mean_rel.max()):.3f}, median "
                     f"{float(mean_rel.median()):.4f}" if int(strong.sum()) else "no head mean above the floor")
            print(f"floor {floor:g}  {name:<32} values n={int(above.sum())}: max {float(rel.max()):.3f}, "
                  f"median {float(rel.median()):.4f}; {means}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
