"""Multiple-choice tasks the toy model can answer, written as local lm-evaluation-harness tasks.

The toy model (shb.models.toy) was trained to answer a benign request with an opening ("Sure,
here is a short guide.") and a body sentence about the request's topic (cooking, travel, ...).
``shb_toy_topic`` asks for exactly that skill: for a held-out benign request, which of four
answers is the one about its topic? The four choices share one opening and differ in the body:
the right topic's body and three other topics' bodies, in an order fixed by a hash of the
request. A model that still answers benign requests sensibly scores far above chance (0.25);
one that has been broken scores near it. Nothing here is benchmark text: the requests and
answers come from shb's own word lists, so the task works offline and in the test suite.

Tasks are written at run time as JSON lines plus an lm-eval task YAML (``write(directory)``),
and are evaluated with lm-eval's own chat-template option (``apply_chat_template``), so the
context is the model's chat prompt and each choice is the assistant's answer. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

PREFIX = "shb_toy_"
N_CHOICES = 4
DEFAULT_DOCS = 48


def _index(text: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") % n


def topic_docs(n: int = DEFAULT_DOCS, seed: int = 0) -> list[dict]:
    """Documents of ``shb_toy_topic``: {prompt, choices (4 answers), label (index of the right one)}."""
    from shb.models.toy import prompts, words

    topics = sorted(t for t in words.BODIES if t != "harmful")
    docs = []
    for text, topic in prompts.labelled("benign", "test", n, seed):
        answer = prompts.compliant_answer(text, topic)       # opening + " " + this topic's body
        opening = answer[: answer.index(".") + 1]            # "Sure, here is a short guide."
        others = [t for t in topics if t != topic]
        start = _index("d" + text, len(others))
        distractors = [others[(start + 3 * i) % len(others)] for i in range(N_CHOICES - 1)]
        choices = [f"{opening} {words.BODIES[t][_index('b' + text + t, len(words.BODIES[t]))]}" for t in distractors]
        label = _index("l" + text, N_CHOICES)
        choices.insert(label, answer)
        docs.append({"prompt": text, "topic": topic, "choices": choices, "label": label})
    return docs


def benign_chats(n: int = DEFAULT_DOCS, seed: int = 0) -> list[str]:
    """Held-out benign conversations in the toy's chat format (request and compliant answer): a benign
    text set for ``benign_loss`` on the toy model (``suites/data/toy-benign-chats.jsonl``)."""
    import jinja2

    from shb.models.toy import prompts, tokenizer

    template = jinja2.Environment().from_string(tokenizer.CHAT_TEMPLATE)
    chats = []
    for text, topic in prompts.labelled("benign", "test", n, seed + 1):   # another shuffle than topic_docs uses
        messages = [{"role": "user", "content": text},
                    {"role": "assistant", "content": prompts.compliant_answer(text, topic)}]
        chats.append(template.render(messages=messages, bos_token=tokenizer.BOS, eos_token=tokenizer.EOS,
                                     add_generation_prompt=False))
    return chats


# task name -> (document generator, description)
TASKS = {
    "shb_toy_topic": (topic_docs, "which of 4 answers is about the benign request's topic (chance 0.25)"),
}


def is_toy_task(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def task_yaml(name: str, data_file: Path) -> str:
    """An lm-eval task config for one generated task (JSON lines at ``data_file``)."""
    return "\n".join([
        f"task: {name}",
        "dataset_path: json",
        f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data_file))}}}}}",
        "test_split: test",
        "output_type: multiple_choice",
        'doc_to_text: "{{prompt}}"',
        "doc_to_choice: choices",
        "doc_to_target: label",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "", ])


def write(directory, names, n: int = DEFAULT_DOCS, seed: int = 0) -> Path:
    """Write the generated tasks ``names`` (JSON lines + YAML) into ``directory``; returns it.

    Files are rewritten only when their content changes, so a directory shared between runs
    stays valid for lm-eval and the datasets cache."""
    from shb.errors import UsageError

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name not in TASKS:
            raise UsageError(f"unknown generated task '{name}'; shb generates: {', '.join(sorted(TASKS))}")
        docs = TASKS[name][0](n, seed)
        data = directory / f"{name}.jsonl"
        _write_if_changed(data, "".join(json.dumps(d, sort_keys=True) + "\n" for d in docs))
        _write_if_changed(directory / f"{name}.yaml", task_yaml(name, data.resolve()))
    return directory


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")  # one per process: Ray actors may write at once
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
