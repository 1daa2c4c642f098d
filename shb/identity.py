"""Labels are suite-local names: one database holds one content per model or dataset label.

Suite ids (``toy``, ``harm``) are names for people; reports show them and group by them. Two
suites that reuse a label for different content (other weights, dtype, prompts or format) in
one database would have their rows merged under one name, so ``shb run`` refuses that before
writing anything (docs/design.md, "Identity"). No torch here.
"""

from __future__ import annotations

import hashlib
import json

from shb.errors import UsageError


def content_identity(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def label_rows(contents: dict[tuple[str, str], dict], run_id: str) -> list[dict]:
    """Rows of the ``labels`` table for a suite's label contents (see shb.plan.label_contents)."""
    return [{"kind": kind, "label": label, "identity": content_identity(content), "content": content, "run_id": run_id}
            for (kind, label), content in contents.items()]


# Keys a newer shb records in a label's content that an older one left implicit, by label kind (a
# screened Ships sweep's seed, issue 32; a screen's defaults, issue 31, keys inside ``screen``): a
# database written before holds the label without them. That is not another content under one label:
# the unit ids differ (the units run again, with the key recorded) and the label's row takes the new
# content.
LATER_KEYS = {"metric": frozenset({"seed", "screen.sample", "screen.pool", "screen.estimator", "screen.tokens",
                                   "screen.directions"})}


_MISSING = object()


def _at(content: dict, path: str):
    """The value at a dotted ``path`` of ``content``, or _MISSING."""
    for key in path.split("."):
        if not isinstance(content, dict) or key not in content:
            return _MISSING
        content = content[key]
    return content


def _without(content: dict, path: str) -> dict:
    head, _, rest = path.partition(".")
    if head not in content:
        return content
    if not rest:
        return {k: v for k, v in content.items() if k != head}
    return {**content, head: _without(content[head], rest)} if isinstance(content[head], dict) else content


def only_later_keys(conflict: dict) -> bool:
    """Whether a label conflict is only keys of LATER_KEYS that the stored content lacks (keys it has
    must be unchanged)."""
    added = sorted(LATER_KEYS.get(conflict["kind"], frozenset()))
    old, new = conflict["old"], conflict["new"]
    gained = False
    for path in added:
        was, now = _at(old, path), _at(new, path)
        if was is not _MISSING and was != now:
            return False
        gained = gained or (was is _MISSING and now is not _MISSING)
        old, new = _without(old, path), _without(new, path)
    return gained and old == new


def check_labels(store, contents: dict[tuple[str, str], dict], prompt_hashes: dict[str, str]) -> None:
    """Raise UsageError naming every label of this suite that ``store`` holds for different content.

    ``prompt_hashes`` ({dataset label: content hash of its prompts}) also catches databases written
    before the ``labels`` table existed, whose prompts are keyed by label alone."""
    conflicts = [c for c in store.label_conflicts({key: (content_identity(c), c) for key, c in contents.items()})
                 if not only_later_keys(c)]
    lines = [_describe(c) for c in conflicts]
    seen = {(c["kind"], c["label"]) for c in conflicts}
    stored = store.prompt_hashes()
    for label, digest in prompt_hashes.items():
        others = stored.get(label, set()) - {digest}
        if others and ("dataset", label) not in seen:
            lines.append(f"  dataset '{label}': the database holds prompts with content hash {sorted(others)[0][:16]}, "
                         f"this suite's prompts hash to {digest[:16]}")
    if lines:
        raise UsageError(
            f"{store.path} already uses {len(lines)} of this suite's label(s) for different content; nothing was "
            "written:\n" + "\n".join(lines) + "\n  Labels are names, not content: rename the id in this suite "
            "(e.g. 'toy-bf16') so both results stay apart, or use another database with --db PATH.")


def _describe(conflict: dict) -> str:
    old, new = conflict["old"], conflict["new"]
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    diff = "; ".join(f"{k}: {_short(old.get(k))} in the database, {_short(new.get(k))} in this suite" for k in keys)
    return f"  {conflict['kind']} '{conflict['label']}' (stored by run {conflict['old_run']}): {diff}"


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
