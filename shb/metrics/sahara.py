"""``sahara``: greedy head-set search (Zhou et al. 2025, Algorithm 1), every candidate stored.

Chunk = (step, layer): the candidates G + {h} for the heads h of one layer, scored against the
unablated model. The last chunk of a step reads the step's rows from the store, picks the best
candidate (ties: first in (layer, head) order, as ``shb.search.best``) and re-emits its row with
``chosen = true`` (the store upserts on (unit_id, step, layer, head)). A step reads G, the heads
chosen by earlier steps, from the store, so a resumed run continues where it stopped.

Screened (``screen: {"top": M, "directions": K}``, score ships_dataset): one chunk per step. Every
candidate is estimated from one linearised pass (shb.scorers.subspace_attribution), the top M are
scored exactly, and so are ``sample`` others drawn at random (shb.screen_check: the step measures its
own recall, shb.reports.screen_recall). The best verified candidate, top or sampled, is chosen: a
sampled candidate's exact score is as real as a top one's, and where it beats them all the greedy step
must take it (the report says so). Only verified candidates get rows in ``sahara_steps`` (exact
scores); every estimate goes to ``sahara_estimates`` with a ``verified`` flag and ``verified_as``
('top', 'sample' or NULL).
"""

from __future__ import annotations

from shb import screen_check
from shb.errors import UsageError
from shb.metrics.base import STRATEGY_SCHEMA, Metric, heads_work, subspace_rank, swept_layers, unit_rows
from shb.search import SCORES, best, sahara_step_layer, screened_sahara_step

SCREEN_DEFAULTS = {"directions": 8, "sample": screen_check.SAMPLE}


def step_chunk(step: int, layer: int) -> str:
    return f"step-{step:02d}-layer-{layer:03d}"


def screen_chunk(step: int) -> str:
    return f"step-{step:02d}-screen"


def chunk_step(chunk: str) -> int:
    """The step of a chunk, exact (``step-SS-layer-LLL``) or screened (``step-SS-screen``)."""
    return int(chunk.split("-")[1])


def chunk_step_layer(chunk: str) -> tuple[int, int]:
    _, step, _, layer = chunk.split("-")
    return int(step), int(layer)


def _params(ctx, unit) -> tuple[int, str, int]:

    steps, score = ctx.metric.get("steps", 5), ctx.metric.get("score", "ships_dataset")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UsageError(f"metric '{unit.metric.id}': steps must be a positive integer, got {steps!r}")
    if score not in SCORES:
        raise UsageError(f"metric '{unit.metric.id}': score must be one of {', '.join(SCORES)}, got {score!r}")
    return steps, score, subspace_rank(ctx.metric, len(ctx.formatted), unit.metric.id)


class SaharaMetric(Metric):
    kind = "sahara"
    schema = {"properties": {
        "strategy": STRATEGY_SCHEMA,
        "steps": {"type": "integer", "minimum": 1},
        "score": {"enum": ["ships_dataset", "ships_mean"]},
        "r": {"type": "integer", "minimum": 1},
        "screen": {
            "type": "object",
            "description": "each step estimates every candidate from one linearised pass "
                           "(shb.scorers.subspace_attribution) and scores the top candidates exactly; only verified "
                           "candidates get rows in `sahara_steps` (score ships_dataset only)",
            "properties": {
                "top": {"type": "integer", "minimum": 1, "description": "candidates verified exactly per step (M)"},
                "directions": {"type": "integer", "minimum": 1, "maximum": 4096,
                               "description": "singular directions of the hidden-state matrix the estimate keeps "
                                              "(default 8; one backward pass each)"},
                "sample": screen_check.SAMPLE_SCHEMA},
            "required": ["top"], "additionalProperties": False}},
        "required": []}
    defaults = {"steps": 5, "score": "ships_dataset", "r": 1}

    def uses_seed(self, params: dict) -> bool:
        """A screen that samples (candidates verified at random beside the top M) draws with the seed."""
        screen = params.get("screen")
        return bool(screen) and screen.get("sample", screen_check.SAMPLE) > 0

    def identity(self, params: dict, suite_defaults: dict) -> dict:
        return screen_check.with_screen_defaults(super().identity(params, suite_defaults), SCREEN_DEFAULTS)

    def geometry_problems(self, i: int, params: dict, layers: int, heads: int, where: str) -> list[str]:
        swept = params.get("layers")
        n_candidates = (len(set(swept)) if isinstance(swept, list) and swept else layers) * heads
        steps = params.get("steps")
        if isinstance(steps, int) and steps > n_candidates:
            return [f"/metrics/{i}/steps: {steps} exceeds the {n_candidates} candidate heads: {where}"]
        return []

    def estimate(self, unit, geometry: dict) -> int:
        steps = unit.metric.get("steps", 5)
        screen = unit.metric.get("screen")
        if screen:
            # Per step: M_G, the clean pass with grad, the all-heads pass, a backward (about two forwards)
            # per direction, then M verified and the sampled candidates (counted as full forwards: an upper bound).
            screen = {**SCREEN_DEFAULTS, **screen}
            return unit.n_prompts * (steps * (3 + 2 * screen["directions"] + screen["top"] + screen["sample"]) + 1)
        # Per step every candidate once (the engine starts it at its own layer on G's cached states), and
        # from the second step on one pass of G to fill that cache (at most a whole forward).
        return unit.n_prompts * round(1 + steps * heads_work(unit, geometry) + (steps - 1))

    def chunks(self, unit, ctx) -> list[str]:
        steps, _, _ = _params(ctx, unit)
        layers = swept_layers(ctx.metric, ctx.lm.n_layers, unit.metric.id)
        if steps > len(layers) * ctx.lm.n_heads:
            raise UsageError(f"metric '{unit.metric.id}': steps={steps} exceeds the {len(layers) * ctx.lm.n_heads} candidate heads")
        if self._screen(ctx, unit):
            return [screen_chunk(s) for s in range(steps)]
        return [step_chunk(s, layer) for s in range(steps) for layer in layers]

    def reads(self, unit, chunk: str) -> list:
        return [unit_rows("sahara_steps", unit.unit_id)]  # the heads chosen so far; the step's other layers

    def after(self, unit, chunks: list[str]) -> list[set[int]]:
        """The layers of one step run together; the step's last layer (it picks the winner from the others'
        rows) waits for them, and the next step waits for that winner."""
        steps = [chunk_step(c) for c in chunks]
        members: dict[int, list[int]] = {}
        for i, step in enumerate(steps):
            members.setdefault(step, []).append(i)
        ordered = sorted(members)
        deps = []
        for i, step in enumerate(steps):
            position = ordered.index(step)
            wait = {members[ordered[position - 1]][-1]} if position else set()
            if i == members[step][-1]:
                wait |= set(members[step][:-1])
            deps.append(wait)
        return deps

    @staticmethod
    def _screen(ctx, unit) -> dict | None:
        screen = ctx.metric.get("screen")
        if not screen:
            return None
        _, score, _ = _params(ctx, unit)
        if score != "ships_dataset":
            raise UsageError(f"metric '{unit.metric.id}': screen estimates score ships_dataset only, got {score!r};"
                             " drop `screen` for the exact search")
        n = len(swept_layers(ctx.metric, ctx.lm.n_layers, unit.metric.id)) * ctx.lm.n_heads
        screen = {**SCREEN_DEFAULTS, **screen}
        if screen["top"] > n:
            raise UsageError(f"metric '{unit.metric.id}': screen.top = {screen['top']} exceeds the {n} candidate heads;"
                             " lower it, or drop `screen` for the exact search")
        return screen

    def _screened(self, unit, ctx, step: int) -> dict[str, list[dict]]:
        _, _, r = _params(ctx, unit)
        unit_id = ctx.ids["unit_id"]
        screen = self._screen(ctx, unit)
        chosen = self._chosen(ctx, unit_id, step)
        found = screened_sahara_step(ctx.engine(), chosen, r=r,
                                     layers=swept_layers(ctx.metric, ctx.lm.n_layers, unit.metric.id),
                                     top=screen["top"], directions=screen["directions"], sample=screen["sample"],
                                     seed=ctx.seed if screen["sample"] else 0, step=step)
        how = {**{h: "top" for h, _ in found["verified"]}, **{h: "sample" for h, _ in found["sampled"]}}
        checked, winner = found["verified"] + found["sampled"], found["chosen"]
        steps = [{"unit_id": unit_id, "step": step, "layer": l, "head": h, "score": float(v),
                  "chosen": (l, h) == winner} for (l, h), v in checked]
        estimates = [{"unit_id": unit_id, "step": step, "layer": l, "head": h, "estimate": float(v),
                      "verified": (l, h) in how, "verified_as": how.get((l, h))} for (l, h), v in found["estimates"]]
        return {"sahara_steps": steps, "sahara_estimates": estimates}

    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        if chunk.endswith("-screen"):
            return self._screened(unit, ctx, int(chunk.split("-")[1]))
        step, layer = chunk_step_layer(chunk)
        _, score, r = _params(ctx, unit)
        unit_id = ctx.ids["unit_id"]
        chosen = self._chosen(ctx, unit_id, step)
        results = sahara_step_layer(ctx.engine(), chosen, layer, score=score, r=r)
        rows = [{"unit_id": unit_id, "step": step, "layer": l, "head": h, "score": float(v), "chosen": False}
                for (l, h), v in results]
        layers = swept_layers(ctx.metric, ctx.lm.n_layers, unit.metric.id)
        if layer == layers[-1]:  # the step is complete: mark its best candidate
            earlier = ctx.store.query(
                "SELECT layer, head, score FROM sahara_steps WHERE unit_id = ? AND step = ? AND layer <> ?",
                [unit_id, step, layer]).rows()
            everything = [((int(l), int(h)), float(v)) for l, h, v in earlier] + [((l, h), v) for (l, h), v in results]
            (bl, bh), bv = best(everything)
            winner = {"unit_id": unit_id, "step": step, "layer": bl, "head": bh, "score": bv, "chosen": True}
            if bl == layer:
                rows = [winner if (row["layer"], row["head"]) == (bl, bh) else row for row in rows]
            else:
                rows.append(winner)
        return {"sahara_steps": rows}

    @staticmethod
    def _chosen(ctx, unit_id: str, step: int) -> list[tuple[int, int]]:
        """G: the heads chosen by steps 0..step-1, read from the store."""
        found = ctx.store.query(
            "SELECT step, layer, head FROM sahara_steps WHERE unit_id = ? AND chosen AND step < ? ORDER BY step",
            [unit_id, step]).rows()
        if [s for s, _, _ in found] != list(range(step)):
            raise RuntimeError(f"sahara unit {unit_id}: step {step} needs the chosen heads of steps 0..{step - 1}, "
                               f"the store has them for steps {[s for s, _, _ in found]}")
        return [(int(l), int(h)) for _, l, h in found]
