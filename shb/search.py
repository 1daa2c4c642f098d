"""Sahara (paper Algorithm 1): greedy forward selection of a safety head set.

Every step scores G + {h} for every head h not yet in G against the *unablated* model and adds
the best-scoring head to G. Orchestration only: the forward passes are the engine's
(``shb.engine.Engine.evaluate``), the scores are ``shb.scorers``.

Scores:
- ``"ships_dataset"`` (default, as in the paper): generalized Ships, the sum of principal angles
  (degrees) between the top-r left singular subspaces of the base and ablated last-token hidden
  states of the dataset;
- ``"ships_mean"``: Ships (per-prompt KL) averaged over the prompts.

Ties are broken by the order (layer, head): the first best candidate wins, so a run is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

SCORES = ("ships_dataset", "ships_mean")

Head = tuple[int, int]


def candidates(engine, chosen: Iterable[Head], layers: Iterable[int] | None = None) -> list[Head]:
    """Heads not in ``chosen``, in (layer, head) order, restricted to ``layers`` when given."""
    taken = {(int(l), int(h)) for l, h in chosen}
    if layers is None:
        layers = range(engine.n_layers)
    out = []
    for layer in sorted(set(layers)):
        if not isinstance(layer, int) or not 0 <= layer < engine.n_layers:
            raise ValueError(f"layer {layer!r} is outside the model (0..{engine.n_layers - 1})")
        out.extend((layer, h) for h in range(engine.n_heads) if (layer, h) not in taken)
    return out


def score_head_sets(engine, head_sets: Sequence[Sequence[Head]], score: str = "ships_dataset", r: int = 1,
                    shared: Sequence[Head] = ()) -> list[float]:
    """One score per head set, each against the unablated model. ``shared``: heads every set contains
    (a step's G), which lets the engine run G once and start each set at its own head's layer."""
    if score not in SCORES:
        raise ValueError(f"unknown Sahara score {score!r}; choose one of {', '.join(SCORES)}")
    if not head_sets:
        return []
    if score == "ships_mean":
        return engine.ships_head_sets(head_sets, shared=shared).mean(0).tolist()  # (P, S) -> (S,)
    from shb.scorers.subspace import subspace_angle_scores

    hidden = engine.hidden_head_sets(head_sets, shared=shared)  # (S, P, d)
    return subspace_angle_scores(engine.base_hidden, hidden, r=r).tolist()


def sahara_step(engine, chosen: Sequence[Head] = (), score: str = "ships_dataset", r: int = 1,
                layers: Iterable[int] | None = None) -> list[tuple[Head, float]]:
    """Score G + {h} for every candidate h (not in G = ``chosen``): [((layer, head), score)], in (layer, head) order."""
    chosen = [tuple(map(int, h)) for h in chosen]
    cands = candidates(engine, chosen, layers)
    scores = score_head_sets(engine, [[*chosen, h] for h in cands], score=score, r=r, shared=chosen)
    return list(zip(cands, scores))


def sahara_step_layer(engine, chosen: Sequence[Head], layer: int, score: str = "ships_dataset",
                      r: int = 1) -> list[tuple[Head, float]]:
    """The candidates of one layer of one Sahara step (what the runner commits as one chunk)."""
    return sahara_step(engine, chosen, score=score, r=r, layers=[layer])


def screened_sahara_step(engine, chosen: Sequence[Head] = (), r: int = 1, layers: Iterable[int] | None = None,
                         top: int = 10, directions: int = 8, sample: int = 0, seed: int = 0, step: int = 0) -> dict:
    """One screened step (score ``ships_dataset``): estimate G + {h} for every candidate h from one
    linearised pass (shb.scorers.subspace_attribution), score the ``top`` best estimates exactly
    with the engine, and ``sample`` others drawn at random (seeded by ``seed`` and ``step``:
    shb.screen_check, the step's own recall check), and pick the best *verified* candidate (``best``):
    a sampled candidate's exact score is as real as a top one's, so one that beats them all wins.

    Returns ``{"chosen", "score", "verified": [((layer, head), exact score)] of the top, "sampled": the
    same of the sample, "estimates": [((layer, head), estimate)]}``; the estimates rank candidates and
    are never a score."""
    from shb import screen_check
    from shb.scorers.subspace_attribution import estimate_step

    chosen = [tuple(map(int, h)) for h in chosen]
    cands = candidates(engine, chosen, layers)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    est = estimate_step(engine.lm, engine.prompts, chosen, engine.base_hidden, kind=engine.kind,
                        epsilon=engine.epsilon, site=engine.site, r=r, directions=directions)  # (L, H)
    estimates = [(h, float(est[h])) for h in cands]
    ranked = _by_estimate(estimates)
    picked = sorted(h for h, _ in ranked[:top])
    drawn = screen_check.draw([h for h, _ in estimates if h not in set(picked)], sample, seed if sample else 0,
                              "sahara", step)
    scores = score_head_sets(engine, [[*chosen, h] for h in picked + drawn], score="ships_dataset", r=r,
                             shared=chosen)
    verified, sampled = list(zip(picked, scores[:len(picked)])), list(zip(drawn, scores[len(picked):]))
    head, value = best(verified + sampled)
    return {"chosen": head, "score": value, "verified": verified, "sampled": sampled, "estimates": estimates}


def _by_estimate(estimates: Iterable[tuple[Head, float]]) -> list[tuple[Head, float]]:
    """Highest estimate first; NaN (a degenerate linearised Gram) last; ties in (layer, head) order."""
    return sorted(estimates, key=lambda hv: (math.isnan(hv[1]), 0.0 if math.isnan(hv[1]) else -hv[1], hv[0]))


def compare_screened(engine, screened: Sequence[dict], r: int = 1, layers: Iterable[int] | None = None) -> list[dict]:
    """Each screened step (``sahara(..., screen=...)``) against the exact step *with the same G* (the
    heads the screened search chose before it): ``{"step", "screened", "exact", "same", "reason",
    "exact_rank"}``. A differing pick has a reason only when the exact winner was not verified (its
    estimate ranked below the verified ones) or the two exact scores tie within float rounding;
    otherwise ``reason`` is None, which a caller must treat as a bug."""
    out, chosen = [], []
    for step in screened:
        exact_head, exact_value = best(sahara_step(engine, chosen, score="ships_dataset", r=r, layers=layers))
        ranked = _by_estimate(step["estimates"])
        rank = next(i for i, (h, _) in enumerate(ranked) if h == exact_head) + 1
        verified = dict(step["candidates"])
        same, reason = step["chosen"] == exact_head, None
        if not same and exact_head not in verified:
            reason = (f"the exact winner {exact_head[0]}-{exact_head[1]} ranked {rank} of {len(ranked)} by its "
                      f"estimate, outside the {len(verified)} verified")
        elif not same and abs(verified[exact_head] - step["score"]) <= 1e-6 * max(abs(exact_value), 1e-12):
            reason = f"tie: {exact_head[0]}-{exact_head[1]} and the screened pick score within float rounding"
        out.append({"step": step["step"], "screened": step["chosen"], "exact": exact_head, "same": same,
                    "reason": reason, "exact_rank": rank, "screened_score": step["score"], "exact_score": exact_value})
        chosen.append(step["chosen"])
    return out


def best(results: Iterable[tuple[Head, float]]) -> tuple[Head, float]:
    """The highest-scoring candidate; on ties the first in (layer, head) order. NaN scores never win."""
    top = None
    for head, value in sorted(results, key=lambda hv: hv[0]):
        if math.isnan(value):
            continue
        if top is None or value > top[1]:
            top = (head, value)
    if top is None:
        raise ValueError("no candidate with a finite score to choose from")
    return top


def sahara(engine, steps: int = 5, score: str = "ships_dataset", r: int = 1,
           layers: Iterable[int] | None = None, screen: dict | None = None) -> list[dict]:
    """Run ``steps`` greedy steps. Returns one dict per step:
    ``{"step": i, "chosen": (layer, head), "score": s, "candidates": [((layer, head), score), ...]}``.

    With ``screen`` ({"top": M, "directions": K, "sample": S, "seed": seed}, score ``ships_dataset``
    only) every step is ``screened_sahara_step``: ``candidates`` holds the verified (exact) scores only,
    top and sampled, and the step adds ``estimates``."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if layers is not None:
        layers = list(layers)
    if steps > len(candidates(engine, [], layers)):
        raise ValueError(f"steps={steps} exceeds the number of candidate heads")
    chosen: list[Head] = []
    out = []
    if screen and score != "ships_dataset":
        raise ValueError(f"screened Sahara estimates the score ships_dataset only, got {score!r}")
    for i in range(steps):
        if screen:
            found = screened_sahara_step(engine, chosen, r=r, layers=layers, step=i, **screen)
            chosen.append(found["chosen"])
            out.append({"step": i, "chosen": found["chosen"], "score": found["score"],
                        "candidates": found["verified"] + found["sampled"], "estimates": found["estimates"]})
            continue
        results = sahara_step(engine, chosen, score=score, r=r, layers=layers)
        head, value = best(results)
        chosen.append(head)
        out.append({"step": i, "chosen": head, "score": value, "candidates": results})
    return out
