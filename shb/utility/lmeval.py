"""lm-evaluation-harness on the loaded model, under an intervention.

lm-eval (EleutherAI, https://github.com/EleutherAI/lm-evaluation-harness; the optional extra
``shb[utility]``) is imported only here. The model it evaluates is shb's in-memory model:
``HFLM(pretrained=lm.model, tokenizer=lm.tokenizer)`` wraps the very module objects that shb's
hooks are attached to, so ``with intervention.applied(lm): simple_evaluate(...)`` runs every
lm-eval forward pass with the intervention active. ``run_tasks`` checks that claim at run time
(lm-eval's model must be shb's object, and the number of forward passes it makes is counted).

Padding. For log-likelihood requests lm-eval batches (context + continuation) sequences with
*right* padding and calls ``model(input_ids)`` with no attention mask. With a causal model the
logits at a real position depend only on the tokens before it, so the padding appended after the
real tokens changes nothing that is scored; under ``undifferentiated`` ablation a flattened head
still attends uniformly over its causal prefix, which holds only real tokens. A test checks the
log-likelihoods against unpadded, one-sequence-at-a-time forwards with the hooks applied by hand.

Tasks: a registry name (``boolq``), a local YAML file (``path/to/task.yaml``: its directory is
included and its ``task:`` name evaluated) or a task that shb generates for the toy model
(``shb_toy_*``, see ``shb.utility.toytasks``). Per-document results are kept (lm-eval's
``log_samples``): one row per document and metric, with lm-eval's version and a hash of the task
configuration and of the documents evaluated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from shb.errors import ShbError, UsageError

INSTALL_HINT = "pip install 'shb[utility]' (lm-eval and accelerate)"


@dataclass(frozen=True)
class DocResult:
    task: str              # the task (or the subtask of a group) the document belongs to
    doc_id: int
    measure: str           # lm-eval metric name: acc, acc_norm, exact_match, ...
    value: float | None
    detail: dict


@dataclass
class TaskRun:
    requested: str                     # the task as the suite names it
    lm_eval_version: str
    task_hash: dict                    # task name -> sha256 of its config and documents
    num_fewshot: dict                  # task name -> shots used
    docs: list[DocResult] = field(default_factory=list)
    n_forwards: int = 0                # model forward passes made by lm-eval under the intervention


def available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("lm_eval", "accelerate"))


def require() -> None:
    if not available():
        raise UsageError(f"the utility metric's lm_eval part needs lm-evaluation-harness: {INSTALL_HINT}")


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("lm-eval")


def local_task_name(path: Path) -> str:
    """The ``task:`` (or ``group:``) name declared by a local lm-eval YAML file."""
    if not path.is_file():
        raise UsageError(f"lm-eval task file {path} not found (a task is a registry name, a .yaml path, "
                         "or shb_toy_*)")
    match = re.search(r"^(?:task|group):\s*['\"]?([^'\"\s#]+)", path.read_text(encoding="utf-8"), re.MULTILINE)
    if not match:
        raise UsageError(f"lm-eval task file {path} declares no 'task:' name")
    return match.group(1)


def resolve_tasks(tasks: list[str], *, docs: int = 48, seed: int = 0, cache=None):
    """(lm-eval task names, include paths, whether the registry is needed) for the suite's task list.

    Generated toy tasks are written under ``cache`` (default shb's cache), in a directory keyed by
    their content, so two runs share the files and lm-eval's datasets cache stays valid."""
    from shb.utility import toytasks

    names, include, registry = [], [], False
    toy = [t for t in tasks if toytasks.is_toy_task(t)]
    if toy:
        import shb

        key = hashlib.sha256(json.dumps([sorted(toy), docs, seed, [toytasks.TASKS[t][0](docs, seed) for t in toy
                                                                   if t in toytasks.TASKS]],
                                        sort_keys=True).encode()).hexdigest()[:16]
        directory = Path(cache or shb.cache_dir()) / "utility-tasks" / key
        toytasks.write(directory, toy, n=docs, seed=seed)
        include.append(str(directory))
    for task in tasks:
        if toytasks.is_toy_task(task):
            names.append(task)
        elif task.endswith((".yaml", ".yml")):
            path = Path(task).expanduser().resolve()
            names.append(local_task_name(path))
            if str(path.parent) not in include:
                include.append(str(path.parent))
        else:
            names.append(task)
            registry = True
    return names, include, registry


def task_manager(include: list[str], registry: bool):
    """An lm-eval TaskManager over the include paths (and the registry when a task needs it)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include or None, include_defaults=registry)


def hflm(lm, batch_size):
    """lm-eval's HF wrapper around shb's loaded model and tokenizer (no copy, no reload)."""
    from lm_eval.models.huggingface import HFLM

    with _quiet():
        wrapper = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
    if wrapper.model is not lm.model:
        raise ShbError("lm-eval wrapped a different model object than shb's: interventions would not apply")
    return wrapper


@contextlib.contextmanager
def _quiet():
    """lm-eval logs warnings and draws tqdm bars on stderr; keep them out of shb's progress display.
    What was written is kept and shown if lm-eval fails."""
    buffer = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(buffer):
            yield buffer
    except Exception as exc:
        tail = buffer.getvalue()[-2000:]
        if tail and hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"lm-eval output before the error:\n{tail}")
        raise
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_task(lm, wrapper, manager, requested: str, name: str, intervention, *, num_fewshot: int | None = 0,
             limit: int | None = None, apply_chat_template: bool = False) -> TaskRun:
    """Evaluate one task (or group) with ``intervention`` applied; per-document rows."""
    import lm_eval

    from shb import hooks

    calls = [0]

    def count(_args, _kwargs):
        calls[0] += 1

    with hooks.on_call(lm, before=count), _quiet(), intervention.applied(lm):
        results = lm_eval.simple_evaluate(
            model=wrapper, tasks=[name], task_manager=manager, num_fewshot=num_fewshot, limit=limit,
            apply_chat_template=apply_chat_template, log_samples=True, bootstrap_iters=0)
    if results is None:
        raise ShbError(f"lm-eval returned no results for task '{requested}'")
    if calls[0] == 0:
        raise ShbError(f"lm-eval made no forward pass through shb's model for task '{requested}'")
    run = TaskRun(requested, version(), {}, {}, n_forwards=calls[0])
    for task, samples in sorted(results.get("samples", {}).items()):
        config = results.get("configs", {}).get(task, {})
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        for sample in samples:
            digest.update(str(sample.get("doc_hash")).encode())
            for measure in sample.get("metrics", []):
                value, raw = _number(sample.get(measure))
                run.docs.append(DocResult(task, int(sample["doc_id"]), measure, value, {
                    "target": sample.get("target"), "resps": sample.get("filtered_resps"),
                    "doc_hash": sample.get("doc_hash"), **({"raw": raw} if raw is not None else {})}))
        run.task_hash[task] = digest.hexdigest()
        shots = results.get("n-shot", {}).get(task)
        run.num_fewshot[task] = int(shots) if isinstance(shots, (int, float)) else num_fewshot
    if not run.docs:
        raise ShbError(f"lm-eval evaluated no documents for task '{requested}'")
    return run


def _number(value):
    """(float value, raw) of a per-document metric: a number, or the first number of a tuple (perplexity
    metrics keep (log-likelihood, units) per document; the raw pair is stored too)."""
    if isinstance(value, bool):
        return float(value), None
    if isinstance(value, (int, float)):
        return float(value), None
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (int, float)):
        return float(value[0]), list(value)
    return None, value if value is None else str(value)
