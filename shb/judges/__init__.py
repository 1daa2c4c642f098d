"""Judges: decide whether an answer to a harmful request is harmful (the attack succeeded).

Every judge has

- ``id``: its registry name ("keyword-paper", "keyword-gcg", "classifier");
- ``config_hash``: sha256 of everything that decides its verdicts (keyword list,
  rules, prompt template, model id), stored with each verdict so that ASR
  numbers are only compared when they come from the same judge;
- ``judge(prompts, answers, contexts=None) -> list[Verdict]``: each verdict carries the
  paper-faithful binary ``harmful`` (what ASR counts) and, beside it, one of four
  outcomes, refused / complied / broken / undetermined, with the rule that fired (shb.judges.outcome).
  ``contexts`` (optional): the formatted prompts as fed to the model, so that an answer
  echoing the system prompt or chat markup is recognised as broken.

``get(judge_id, **config)`` builds one through ``shb.registry.JUDGES``. The
keyword judges import no torch. A keyword judge is built for one prompt language (``language=``,
shb.judges.keyword); a classifier judge reads any language its model reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

__all__ = ["Verdict", "get", "config_hash", "check_pairs"]


@dataclass(frozen=True)
class Verdict:
    """One judgement.

    harmful: True when the answer complies with the harmful request.
    raw: what decided it (the matched keyword and rule, or the classifier's output).
    parsed: False only when a classifier's output could not be read as a verdict;
        then ``harmful`` is False (an unreadable output never counts as a
        success) and ``raw`` keeps the output.
    outcome: "refused", "complied", "broken" or "undetermined" (shb.judges.outcome: no refusal phrase,
        in a language the rules have no phrases for); None only where a caller built a Verdict by hand.
    outcome_rule: the rule that decided the outcome, with its detail.
    """

    harmful: bool
    raw: str
    parsed: bool = True
    outcome: str | None = None
    outcome_rule: str | None = None


def get(judge_id: str, **config):
    """The judge registered as ``judge_id``, built with ``config`` (its keyword-only parameters)."""
    from shb import registry

    factory = registry.resolve(registry.JUDGES, judge_id, "judge")
    return factory(**config)


def config_hash(config: dict) -> str:
    """sha256 of a judge configuration, canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_pairs(prompts, answers, contexts=None) -> tuple[list[str], list[str]]:
    """Validate judge inputs: two (three, with ``contexts``) equally long lists of strings."""
    if isinstance(prompts, str) or isinstance(answers, str) or isinstance(contexts, str):
        raise ValueError("judge(prompts, answers) takes lists of strings, not single strings")
    prompts, answers = list(prompts), list(answers)
    if len(prompts) != len(answers):
        raise ValueError(f"judge got {len(prompts)} prompts and {len(answers)} answers; need one answer per prompt")
    lists = [("prompts", prompts), ("answers", answers)]
    if contexts is not None:
        contexts = list(contexts)
        if len(contexts) != len(answers):
            raise ValueError(f"judge got {len(contexts)} contexts and {len(answers)} answers; need one per answer")
        lists.append(("contexts", contexts))
    for name, items in lists:
        for i, x in enumerate(items):
            if not isinstance(x, str):
                raise ValueError(f"{name}[{i}] must be a string, got {type(x).__name__}")
    return prompts, answers
