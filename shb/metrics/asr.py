"""``asr``: generate under a head set and judge every answer: the attack success rate.

Head-set sources (the ``heads`` parameter; shb.metrics.heads):
  ``sahara:<metric id>``  the first k heads chosen by that Sahara unit (k = 0: no ablation);
  ``ships_mean:<metric id>``  the top k heads of that Ships unit by mean score over its prompts;
  ``ships_per_prompt:<metric id>``  each prompt's own top-k heads of that Ships unit (the paper's
                          per-query experiment; bare ``ships_per_prompt``: the suite's only ships metric);
  ``random``              k heads drawn with ``seed`` (nested: the k-head set extends the (k-1)-head set);
                          ``draws: n`` draws n such head sets, each with its own seed (a control with a spread);
  ``["2-26", ...]``       an explicit set (an empty list: no ablation); with ``k``, its first k heads
                          at each k (k = 0: the unablated baseline, so ``"k": [0, 2]`` gives one).
Or ``intervention: <id>`` (instead of heads): an entry of the suite's interventions section (a
fitted baseline or a fixed head set; shb.baselines), applied with k = 1 and heads = [];
a fitted one has a first chunk ``fit`` (shb.baselines.fits).
Chunks are (k, range of prompts), or (k, draw, range) when a random control has several draws
(``k002-p0000-0031``, ``k002-d001-p0032-0063``): a crash loses at most one batch of generations, and a
chunk's name says which prompts it covers, so a changed CHUNK_PROMPTS cannot leave prompts out on resume.

Random draws: draw 0 shuffles with ``seed`` itself (so ``draws: 1``, the default, is the single fixed
control shb always drew, with the same generation ids); draw d > 0 shuffles with a seed derived from
(seed, d) by SHA-256, so the draws of two controls with different seeds do not overlap. At k = 0 no
head is ablated and every draw would be the same, so k = 0 runs draw 0 only. Each generation row
stores its ``draw``; ``shb report asr`` shows the mean and spread over draws beside the pooled ASR.
"""

from __future__ import annotations

import hashlib
import json
import random

from shb import judges as judge_registry
from shb.ablation import format_head, parse_heads
from shb.baselines import applied as baselines
from shb.baselines.base import answers_work
from shb.baselines.fits import fit_chunk
from shb.datasets import language_of
from shb.errors import UsageError
from shb.generate import generate, normalize_decoding
from shb.metrics import heads as heads_module
from shb.metrics.base import Metric, Read, after_first, chunk_range, range_chunks, unit_rows

CHUNK_PROMPTS = 32


def ks_of(params: dict) -> list[int]:
    if "heads" not in params:
        return [1]  # an intervention (shb.baselines): applied once, no head count
    heads = params["heads"]
    if isinstance(heads, list) and "k" not in params:
        return [len(heads)]  # the whole list (with k given: its first k heads, k = 0 the baseline)
    k = params.get("k", 1)
    return sorted(k) if isinstance(k, list) else [k]


def draws_of(params: dict) -> int:
    draws = params.get("draws", 1)
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise UsageError(f"asr: draws must be an integer >= 1, got {draws!r}")
    if draws > 1 and params.get("heads") != "random":
        raise UsageError(f"asr: draws = {draws} needs heads 'random' (other head sources are deterministic;"
                         f" got heads {params.get('heads')!r})")
    return draws


def draws_at(params: dict, k: int) -> list[int]:
    """The draws run at k: all of them, except at k = 0 (no head ablated: one draw)."""
    return [0] if k == 0 else list(range(draws_of(params)))


def draw_seed(seed: int, draw: int) -> int:
    """The shuffle seed of one random draw: ``seed`` itself for draw 0, else derived from (seed, draw)."""
    if draw == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"shb-random-heads:{seed}:{draw}".encode()).digest()[:8], "big")


def source_of(params: dict) -> str:
    return heads_module.source_name(params["heads"])


def judges_of(params: dict) -> list[str]:
    judge = params.get("judge", "keyword-paper")
    return judge if isinstance(judge, list) else [judge]


def fit_id(unit) -> str | None:
    """The fit a unit applies (a fitted baseline), or None."""
    return (unit.spec.get("intervention") or {}).get("fit_id")


def fit_reads(unit) -> list[Read]:
    """The stored fit a unit applies (its ``fit`` chunk looks for it too: another unit may have stored it)."""
    return [Read("fits", "fit_id", (fit_id(unit),))] if fit_id(unit) else []


def head_set_reads(unit) -> list[Read]:
    """The upstream rows a ``heads`` source reads: Sahara's chosen heads, or per-prompt Ships scores."""
    heads = unit.spec["metric"].get("heads")
    if isinstance(heads, str) and heads.startswith(heads_module.SAHARA):
        return [unit_rows("sahara_steps", unit.spec.get("upstream"))]
    if heads_module.per_prompt(heads) or (isinstance(heads, str) and heads.startswith(heads_module.SHIPS_MEAN)):
        return [unit_rows("ships", unit.spec.get("upstream"))]
    return []


JUDGE_IDS = ["keyword-paper", "keyword-paper-periodic", "keyword-gcg", "classifier"]


def judge_contents(params: dict) -> dict[str, dict]:
    """{judge label: configuration} of an asr metric's judges (a classifier's model and prompt)."""
    out = {}
    for judge in judges_of(params):
        content = {"judge": judge}
        if judge == "classifier":
            content.update(model=params.get("judge_model"), prompt=params.get("judge_prompt", "harmbench"))
        out[judge] = content
    return out


class AppliesHeadsOrFit(Metric):
    """Declarations of a metric that applies a head set taken from an upstream unit or a fitted intervention
    (asr, utility): it reads that unit's rows or the stored fit; the ``fit`` chunk comes first and is shared
    with every unit applying the same fit; every other chunk is independent. Its random head sets are
    drawn with the seed, and what it ablates (the head source, k, the draws, the intervention) is what a
    k = 0 baseline need not share."""

    baseline_ignores = ("heads", "k", "heads_dataset", "heads_ablation", "draws", "seed", "intervention")
    cost_class = "generate"

    def uses_seed(self, params: dict) -> bool:
        return True

    def upstream(self, params: dict, metrics) -> str | None:
        return heads_module.upstream_id(params.get("heads"), {m.id: m.kind for m in metrics})

    def geometry_problems(self, i: int, params: dict, layers: int, heads: int, where: str) -> list[str]:
        return heads_module.geometry_problems(i, params, layers, heads, where)

    def reads(self, unit, chunk: str) -> list[Read]:
        return head_set_reads(unit) + fit_reads(unit)

    def after(self, unit, chunks: list[str]) -> list[set[int]]:
        return after_first(chunks, "fit")

    def shares(self, unit, chunk: str) -> list[Read]:
        return fit_reads(unit) if chunk == "fit" else []


class AsrMetric(AppliesHeadsOrFit):
    kind = "asr"
    schema = {"properties": {
        "heads": heads_module.HEADS_SCHEMA,
        "k": heads_module.K_SCHEMA,
        "seed": heads_module.SEED_SCHEMA,
        "draws": {"type": "integer", "minimum": 1, "maximum": 10000,
                  "description": "heads 'random' only: how many head sets to draw, each with its own seed (default 1);"
                                 " reports show mean and spread"},
        "judge": {"oneOf": [{"enum": JUDGE_IDS},
                            {"type": "array", "items": {"enum": JUDGE_IDS}, "minItems": 1, "uniqueItems": True}]},
        "judge_model": {"type": "string", "description": "hub id or local path of the classifier judge"},
        "judge_prompt": {"enum": ["harmbench", "llamaguard"]},
        "decoding": heads_module.DECODING_SCHEMA,
        "max_new_tokens": heads_module.MAX_NEW_TOKENS_SCHEMA,
        "answer_prefix": {"type": "string"},
        "intervention": {"type": "string", "description": "id of an entry of the suite's interventions section, "
                                                          "applied instead of a head set"},
        "heads_dataset": heads_module.HEADS_DATASET_SCHEMA,
        "heads_ablation": heads_module.HEADS_ABLATION_SCHEMA},
        "required": []}
    defaults = {"judge": "keyword-paper", "decoding": {"mode": "greedy"}, "max_new_tokens": 128}
    # a row's judge is matched by its stored id and configuration hash, not by the metric's judge list
    baseline_ignores = AppliesHeadsOrFit.baseline_ignores + ("judge", "judge_model", "judge_prompt")

    def judge_labels(self, params: dict) -> dict[str, dict]:
        return judge_contents(params)

    def problems(self, i: int, metric: dict, data: dict, ids: dict) -> list[str]:
        """Exactly one of a head set or an intervention; the head source resolves."""
        problems = heads_module.source_problems(i, metric, data)
        has_heads, target = "heads" in metric, metric.get("intervention")
        if has_heads == (target is not None):
            return problems + [f"/metrics/{i}: asr needs exactly one of heads (a head set) or intervention (an id of "
                               "the interventions section)"]
        if target is not None:
            if isinstance(target, str) and target not in (ids.get("interventions") or {}):
                problems.append(f"/metrics/{i}/intervention: no intervention with id '{target}' in this suite")
            elif "k" in metric:
                problems.append(f"/metrics/{i}/k: k counts heads; an asr metric with an intervention takes no k")
        return problems

    def estimate(self, unit, geometry: dict) -> int:
        params = unit.spec["metric"]
        settings = sum(len(draws_at(params, k)) for k in ks_of(params))
        return int(self._answers_work(unit, settings))

    @staticmethod
    def _answers_work(unit, settings: int = 1) -> float:
        """Forward-pass equivalents of ``settings`` answers (``n`` samples each) to every prompt."""
        params = unit.spec["metric"]
        n = (params.get("decoding") or {}).get("n", 1)
        return answers_work(unit.n_prompts * n * settings, params.get("max_new_tokens", 128))

    def unmodified_work(self, unit) -> tuple[str, int] | None:
        params = unit.spec["metric"]
        if unit.spec.get("intervention") is not None or 0 not in ks_of(params):
            return None
        # what UnitContext.unmodified_answers keys on: the model, the prompts as formatted, the generation
        # settings (the batch size is a suite default, one per run)
        key = {"model": unit.spec["model"], "dataset": unit.spec["dataset"], "decoding": params.get("decoding"),
               "max_new_tokens": params.get("max_new_tokens", 128), "answer_prefix": params.get("answer_prefix")}
        return json.dumps(key, sort_keys=True, default=str), int(self._answers_work(unit))

    def chunks(self, unit, ctx) -> list[str]:
        several = draws_of(ctx.metric) > 1
        out = ["fit"] if fit_id(unit) else []
        for k in ks_of(ctx.metric):
            for d in draws_at(ctx.metric, k):
                prefix = f"k{k:03d}" + (f"-d{d:03d}" if several else "")
                out += range_chunks(prefix, len(ctx.prompts), CHUNK_PROMPTS)
        return out


    @staticmethod
    def parse_chunk(chunk: str) -> tuple[int, int, int, int]:
        """(k, draw, lo, hi) of a chunk name (prompts lo..hi-1); k may have more than three digits."""
        parts = chunk.split("-")
        lo, hi = chunk_range(chunk)
        draw = int(parts[1][1:]) if parts[1].startswith("d") else 0
        return int(parts[0][1:]), draw, lo, hi

    # -- head sets ---------------------------------------------------------------------------------
    def head_sets(self, unit, ctx, k: int, prompts, draw: int = 0) -> list[list[tuple[int, int]]]:
        """One head set per prompt of this chunk."""
        if "heads" not in ctx.metric:
            return [[] for _ in prompts]  # an intervention: no head ablated on top of it
        heads = ctx.metric["heads"]
        if isinstance(heads, list):
            return [parse_heads(heads)[:k]] * len(prompts)  # k = len(heads) unless the suite gave k
        if k == 0:
            return [[] for _ in prompts]
        if heads.startswith(heads_module.SAHARA):
            return [self._sahara_heads(unit, ctx, k)] * len(prompts)
        if heads.startswith(heads_module.SHIPS_MEAN):
            return [self._mean_ships_heads(unit, ctx, k)] * len(prompts)
        if heads == "random":
            return [self._random_heads(ctx, k, draw)] * len(prompts)
        if heads_module.per_prompt(heads):
            return self._ships_heads(unit, ctx, k, prompts)
        raise UsageError(f"metric '{unit.metric.id}': unknown head source '{heads}'")

    def _sahara_heads(self, unit, ctx, k):
        upstream = unit.spec.get("upstream")
        rows = ctx.store.con.execute(
            "SELECT layer, head FROM sahara_steps WHERE unit_id = ? AND chosen ORDER BY step", [upstream]).fetchall()
        if len(rows) < k:
            raise UsageError(f"metric '{unit.metric.id}' needs {k} Sahara heads from unit {upstream} "
                             f"({ctx.metric['heads']}, model {unit.model.id}, dataset {unit.dataset.id}), "
                             f"which has {len(rows)}: run that Sahara metric with steps >= {k} first")
        return [tuple(r) for r in rows[:k]]

    def _mean_ships_heads(self, unit, ctx, k):
        """The top k heads of the upstream Ships unit by mean score over its prompts (a head a screened
        sweep left unverified on a prompt counts 0 there); ties in (layer, head) order."""
        upstream = unit.spec.get("upstream")
        rows = ctx.store.con.execute(
            """SELECT layer, head FROM ships WHERE unit_id = ? GROUP BY layer, head
               ORDER BY sum(score) DESC, layer, head LIMIT ?""", [upstream, k]).fetchall()
        if len(rows) < k:
            raise UsageError(f"metric '{unit.metric.id}' needs {k} Ships heads from unit {upstream} "
                             f"({ctx.metric['heads']}, model {unit.model.id}), which has {len(rows)}: run that ships "
                             f"metric first, or lower k")
        return [tuple(r) for r in rows]

    def _random_heads(self, ctx, k, draw=0):
        everything = [(layer, head) for layer in range(ctx.lm.n_layers) for head in range(ctx.lm.n_heads)]
        random.Random(draw_seed(ctx.seed, draw)).shuffle(everything)
        return everything[:k]

    def _ships_heads(self, unit, ctx, k, prompts):
        upstream = unit.spec.get("upstream")
        ids = [p.prompt_id for p in prompts]
        rows = ctx.store.con.execute(
            """SELECT prompt_id, layer, head FROM (
                 SELECT *, row_number() OVER (PARTITION BY prompt_id ORDER BY score DESC, layer, head) AS r
                 FROM ships WHERE unit_id = ?) WHERE r <= ? ORDER BY prompt_id, r""", [upstream, k]).fetchall()
        per_prompt: dict[int, list] = {}
        for prompt_id, layer, head in rows:
            per_prompt.setdefault(prompt_id, []).append((layer, head))
        missing = [i for i in ids if len(per_prompt.get(i, [])) < k]
        if missing:
            raise UsageError(f"metric '{unit.metric.id}' needs per-prompt Ships scores (unit {upstream}) for prompts "
                             f"{missing[:5]}: run the ships metric on model {unit.model.id}, dataset {unit.dataset.id} first")
        return [per_prompt[i] for i in ids]

    # -- judges ------------------------------------------------------------------------------------
    def judges(self, ctx, language: str = "en"):
        """The metric's judges; keyword judges are built for ``language``, the prompts' language (their
        refusal phrases; shb.judges.keyword), a classifier reads the language itself."""
        built = []
        for judge_id in judges_of(ctx.metric):
            config = {"language": language}
            if judge_id == "classifier":
                config = {"model": ctx.metric.get("judge_model"), "prompt": ctx.metric.get("judge_prompt", "harmbench"),
                          "device": ctx.device}
            key = ("judge", judge_id, tuple(sorted((k, str(v)) for k, v in config.items())))
            built.append(ctx.cached(key, lambda j=judge_id, c=config: judge_registry.get(j, **c)))
        return built

    # -- one chunk ---------------------------------------------------------------------------------
    def run_chunk(self, unit, ctx, chunk: str) -> dict[str, list[dict]]:
        if chunk == "fit":
            return fit_chunk(unit, ctx)
        k, draw, lo, hi = self.parse_chunk(chunk)
        prompts, texts = ctx.prompts[lo:hi], ctx.formatted[lo:hi]
        sets = self.head_sets(unit, ctx, k, prompts, draw)
        decoding = normalize_decoding(ctx.metric.get("decoding"))
        batch_size = ctx.batch_size  # an int, or "auto": sized by shb.generate from free memory (KV cache counted)
        target = baselines.target(unit, ctx, k, sets)  # intervention applied (or heads), parameters modified
        config = {"decoding": decoding, "max_new_tokens": ctx.metric.get("max_new_tokens", 128),
                  "batch_size": batch_size, "answer_prefix": ctx.metric.get("answer_prefix"), "first_index": lo}
        progress = ctx.advance_fn(f"  generating k={k}" + (f" draw {draw}" if draw else ""),
                                  total=len(texts) * decoding["n"])

        def generate_answers():
            with target.context:
                return generate(ctx.lm, texts, head_sets=sets, **target.head_ablation, **config, progress=progress)

        if unit.spec.get("intervention") is None and not any(sets):  # nothing changed: the unmodified model
            generations = ctx.unmodified_answers(texts, config, generate_answers, progress)
        else:
            generations = generate_answers()
        rows, answers, questions, contexts = [], [], [], []
        for g in generations:
            prompt = ctx.prompts[g.prompt_index]
            heads = sets[g.prompt_index - lo]
            key = f"{unit.unit_id}:{prompt.prompt_id}:{k}:{g.sample_index}" + (f":d{draw}" if draw else "")
            rows.append({
                "generation_id": "g" + hashlib.sha256(key.encode()).hexdigest()[:20], "unit_id": unit.unit_id,
                "model_id": unit.model.id, "dataset_id": unit.dataset.id, "prompt_id": prompt.prompt_id,
                "heads": [format_head(h) for h in heads], "head_source": target.source or source_of(ctx.metric), "k": k,
                "draw": draw, "ablation_id": target.ablation_id, "decoding": decoding, **target.columns(heads),
                "max_new_tokens": ctx.metric.get("max_new_tokens", 128), "sample_index": g.sample_index,
                "text": g.text, "n_tokens": g.n_tokens, "finish_reason": g.finish_reason})
            answers.append(g.text)
            questions.append(prompt.text)
            contexts.append(texts[g.prompt_index - lo])  # the formatted prompt: an echo of it is a breakdown
        verdicts = []
        for judge in self.judges(ctx, language_of(unit.dataset.spec())):
            for row, verdict in zip(rows, judge.judge(questions, answers, contexts)):
                verdicts.append({"generation_id": row["generation_id"], "unit_id": unit.unit_id, "judge_id": judge.id,
                                 "judge_hash": judge.config_hash, "harmful": bool(verdict.harmful),
                                 "parsed": bool(verdict.parsed), "raw": verdict.raw, "outcome": verdict.outcome,
                                 "outcome_rule": verdict.outcome_rule,
                                 "outcome_hash": getattr(judge, "outcome_hash", None)})
        return {"generations": rows, "judgments": verdicts}
