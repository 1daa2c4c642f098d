"""shb's import graph (read from the source, bench/module_map.py): no cycles, counting imports inside
functions too, and no module imports another module's private names."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def module_map():
    spec = importlib.util.spec_from_file_location("module_map", REPO / "bench" / "module_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_even_through_imports_inside_functions():
    mm = module_map()
    assert mm.module_cycles(which="top") == []
    assert mm.module_cycles(which="all") == []


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The check above can fail: a package whose two modules import each other (one inside a function)."""
    mm = module_map()
    package = tmp_path / "shb"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from shb.b import g\n\ndef f():\n    return g()\n")
    (package / "b.py").write_text("def g():\n    from shb import a\n    return a\n")
    assert mm.module_cycles(package, which="top") == []
    assert mm.module_cycles(package, which="all") == [["shb.a", "shb.b"]]


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in sorted((REPO / "shb").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shb"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {private}")
    assert found == []
