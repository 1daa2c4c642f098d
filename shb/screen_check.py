"""The seeded random sample that lets every screened run measure its own recall.

A screened Ships sweep (shb.metrics.ships) and a screened Sahara step (shb.metrics.sahara) score
exactly only the candidates their estimate ranks highest. Beside those (``verified_as = 'top'``)
they score a few of the *other* candidates, drawn uniformly at random (``verified_as = 'sample'``,
``screen.sample`` per prompt or step, default SAMPLE). The share of sampled heads whose exact score
beats the 10th-best top-verified one estimates how many heads the screen missed
(shb.reports.screen_recall). The draw depends on the unit's seed and the prompt id (Ships) or step
(Sahara) only, not on chunking or batch order, so a resumed or rechunked run draws the same heads.

No torch here (the reports read the same constants).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

SAMPLE = 8  # heads sampled per prompt (Ships) or step (Sahara) when ``screen.sample`` is not given

SAMPLE_SCHEMA = {"type": "integer", "minimum": 0,
                 "description": f"candidates outside the top verified exactly at random per prompt/step, to measure "
                                f"the screen's recall (default {SAMPLE}; 0: none)"}


def with_screen_defaults(key: dict, defaults: dict) -> dict:
    """A metric key (Metric.identity) with every ``screen`` default spelled out (``defaults``: the kind's
    SCREEN_DEFAULTS): the sample, the pool, the estimator and its tokens change what a unit stores, so
    they are part of the unit id whether the suite writes them or not (and a documented default can
    change without two contents sharing one id)."""
    if key.get("screen"):
        key = {**key, "screen": {**defaults, **key["screen"]}}
    return key


def draw(population: Sequence, n: int, seed: int, *where) -> list:
    """``n`` members of ``population`` (fewer if it is smaller) drawn without replacement, in population
    order; the same for the same seed and ``where`` (e.g. "ships", prompt_id) on every machine."""
    rng = random.Random("/".join(map(str, ("shb-screen-sample", seed, *where))))  # str seeds hash with SHA-512
    picked = set(rng.sample(range(len(population)), min(n, len(population))))
    return [x for i, x in enumerate(population) if i in picked]
