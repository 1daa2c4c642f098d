"""Synthetic harmful and benign instructions for the toy model, with answers.

A request is TEMPLATE.format(task=VERB + " " + OBJECT) (word lists in
`shb.models.toy.words`). The train/test split is fixed by a hash of the text
(not by a seed), so it never changes between runs or machines:

- about one template in five and one task in five are *held out*;
- "train" = held-in template x held-in task;
- "test" = every other combination (held-out template, held-out task, or both),

so the two splits share no prompt, and the test split measures generalisation
to unseen phrasings and unseen verb/object pairs. `seed` only shuffles the
order in which prompts are returned (and so which `n` are taken).
"""
from __future__ import annotations

import hashlib
import random
from functools import cache

from shb.models.toy import words

SPLITS = ("train", "test")
_HELD_OUT_SHARE = 5  # one in _HELD_OUT_SHARE templates / tasks is held out


def _held_out(text: str) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return digest[0] % _HELD_OUT_SHARE == 0


def _stable_index(text: str, n: int) -> int:
    """A deterministic choice in range(n) for a text (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[1:5], "big") % n


def _ending(kind: str, template: str, task: str) -> str:
    """No ending for about half of the requests, else a shared or (harmful) harmful-only one."""
    endings = words.SHARED_ENDINGS + (words.HARMFUL_ENDINGS if kind == "harmful" else [])
    choice = _stable_index("e" + template + task, 2 * len(endings))
    return endings[choice] if choice < len(endings) else ""


@cache
def _combinations(kind: str, split: str) -> tuple[tuple[str, str], ...]:
    """All (prompt, topic) pairs of one kind ("harmful" | "benign") and split, sorted."""
    table = {"harmful": words.HARMFUL, "benign": words.BENIGN}[kind]
    tasks = [(f"{verb} {obj}", topic)
             for topic, (verbs, objects) in table.items()
             for verb in verbs for obj in objects]
    out = set()
    for template in words.TEMPLATES:
        template_out = _held_out(template)
        for task, topic in tasks:
            in_test = template_out or _held_out(task)
            if in_test == (split == "test"):
                text = template.format(task=task + _ending(kind, template, task))
                out.add((text, topic))
    return tuple(sorted(out))


def _check(split: str, n: int | None, available: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n is not None and (not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be a non-negative int or None, got {n!r}")
    if n is not None and n > available:
        raise ValueError(f"asked for n={n} prompts but split {split!r} has only {available}")


def labelled(kind: str, split: str, n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, topic) pairs of `kind` ("harmful" | "benign"), shuffled by `seed`, first `n`."""
    if kind not in ("harmful", "benign"):
        raise ValueError(f"kind must be 'harmful' or 'benign', got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pairs = list(_combinations(kind, split))
    _check(split, n, len(pairs))
    random.Random(seed).shuffle(pairs)
    return pairs if n is None else pairs[:n]


def harmful(split: str, n: int | None = None, seed: int = 0) -> list[str]:
    """Harmful requests of `split` ("train" | "test"), shuffled by `seed`, first `n` (all if None)."""
    return [text for text, _ in labelled("harmful", split, n, seed)]


def benign(split: str, n: int | None = None, seed: int = 0) -> list[str]:
    """Benign requests of `split` ("train" | "test"), shuffled by `seed`, first `n` (all if None)."""
    return [text for text, _ in labelled("benign", split, n, seed)]


def compliant_answer(prompt: str, topic: str) -> str:
    """A helpful answer: "Sure, here is ..." plus a topic-related sentence.

    Harmful topics share the "harmful" bodies (the base model complies with
    everything). The choice among variants is a hash of the prompt.
    """
    bodies = words.BODIES.get(topic, words.BODIES["harmful"])
    opening = words.OPENINGS[_stable_index("o" + prompt, len(words.OPENINGS))]
    body = bodies[_stable_index("b" + prompt, len(bodies))]
    return f"{opening} {body}"


def refusal(prompt: str) -> str:
    """A refusal ("I'm sorry, but I cannot ..."), one of a few variants chosen by hash."""
    return words.REFUSALS[_stable_index("r" + prompt, len(words.REFUSALS))]


def system_message(prompt: str, share: float = 0.2) -> str | None:
    """A generic system message for about `share` of prompts (by hash), else None."""
    if _stable_index("s" + prompt, 1000) >= share * 1000:
        return None
    return words.SYSTEM_MESSAGES[_stable_index("m" + prompt, len(words.SYSTEM_MESSAGES))]


def corpus() -> list[str]:
    """Every text the tokenizer should know well: all prompts and answer pieces."""
    texts = [t for kind in ("harmful", "benign") for split in SPLITS
             for t, _ in _combinations(kind, split)]
    texts += words.REFUSALS + words.OPENINGS + words.SYSTEM_MESSAGES
    texts += [b for bodies in words.BODIES.values() for b in bodies]
    return texts
