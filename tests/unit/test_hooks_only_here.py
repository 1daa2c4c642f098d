"""One way to reach inside a model: only shb/hooks/raw.py registers torch hooks or swaps submodules.

Read from the source with ``ast`` (no torch): a call or reference to a hook-registering method, the
hook dictionaries, ``setattr``/``add_module`` (a submodule swap) or an item assignment into a layer list
anywhere else in shb is reported with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOOK_MODULE = "shb/hooks/raw.py"
HOOK_PACKAGE = "shb/hooks/"  # may set attributes (stand-ins, the attention setting) but registers nothing itself
REGISTER = {"register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
            "register_full_backward_pre_hook", "register_backward_hook", "register_module_forward_hook",
            "register_module_forward_pre_hook", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks"}
SWAPS = {"setattr", "add_module", "register_module"}
LAYER_LISTS = {"layers", "h", "blocks", "layer_list"}


def _name(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def violations(root: Path) -> list[str]:
    found = []
    for path in sorted((root / "shb").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == HOOK_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and node.attr in REGISTER:
                found.append(f"{where}: .{node.attr} (hooks are attached by {HOOK_MODULE} only)")
            elif isinstance(node, ast.Call) and _name(node.func) in SWAPS and not rel.startswith(HOOK_PACKAGE):
                found.append(f"{where}: {_name(node.func)}(...) (a submodule swap: use shb.hooks)")
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Subscript) and _name(t.value) in LAYER_LISTS:
                        found.append(f"{where}: {_name(t.value)}[...] = ... (a layer swap: use shb.hooks)")
    return found


def test_only_the_hook_module_attaches_hooks_or_swaps_modules():
    assert violations(REPO) == []


def test_the_check_finds_each_kind_of_reach(tmp_path):
    """The check above can fail: a module that hooks, swaps a layer and sets a submodule is reported three times."""
    package = tmp_path / "shb"
    (package / "hooks").mkdir(parents=True)
    (package / "hooks" / "raw.py").write_text("def pre(m, f):\n    return m.register_forward_pre_hook(f)\n")
    (package / "reach.py").write_text(
        "def reach(model, layers, f):\n"
        "    model.lm_head.register_forward_hook(f)\n"
        "    layers[0] = layers[1]\n"
        "    setattr(model, 'norm', None)\n")
    found = violations(tmp_path)
    assert len(found) == 3 and all(f.startswith("shb/reach.py:") for f in found), found
