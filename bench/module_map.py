"""shb's module map: lines per module, import edges (module level and inside functions), cycles.

    python bench/module_map.py            # a table, then totals and the cycles
    python bench/module_map.py --json     # the same as JSON (to diff before/after a refactor)

Reads the source with ``ast`` (imports nothing of shb). An edge a -> b is ``import b`` / ``from b import x``
in a (``from b import c`` where b.c is a module counts as a -> b.c). A cycle is a strongly connected set of
modules in the graph of module-level imports (those run at import time); function-level imports are
counted separately, since they do not make import-time circles.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "shb"


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _target(name: str, known: dict) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(root: Path = ROOT) -> dict[str, dict[str, set]]:
    """module -> {"top": targets imported at module level, "inner": targets imported inside functions}."""
    known = modules(root)
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = {"top": set(), "inner": set()}
        inner_nodes = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner_nodes |= {id(n) for n in ast.walk(node) if n is not node}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            where = "inner" if id(node) in inner_nodes else "top"
            for t in targets:
                if t.split(".")[0] != "shb":
                    edges[where].add("ext:" + t.split(".")[0])
                    continue
                resolved = _target(t, known)
                if resolved and resolved != name:
                    edges[where].add(resolved)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def module_cycles(root: Path = ROOT, which: str = "top") -> list[list[str]]:
    """Import cycles among shb modules; ``which``: "top" (module level), "all" (functions too).

    A package's ``__init__`` importing its own submodules is how Python packages work and is left out
    (importing ``a.b`` runs ``a`` first, so ``a -> a.b`` cannot deadlock)."""
    graph = imports(root)
    flat = {}
    for name, edges in graph.items():
        targets = edges["top"] | (edges["inner"] if which == "all" else set())
        flat[name] = {t for t in targets if not t.startswith("ext:") and not t.startswith(name + ".")}
    return cycles(flat)


def summary(root: Path = ROOT) -> dict:
    known = modules(root)
    graph = imports(root)
    rows = {}
    for name, path in known.items():
        edges = graph[name]
        rows[name] = {"lines": len(path.read_text().splitlines()),
                      "imports_top": sorted(t for t in edges["top"] if not t.startswith("ext:")),
                      "imports_inner": sorted(t for t in edges["inner"] if not t.startswith("ext:"))}
    src = "\n".join(p.read_text() for p in known.values())
    tree_counts = {"top": 0, "inner": 0}
    for path in known.values():
        tree = ast.parse(path.read_text())
        inner = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner |= {id(n) for n in ast.walk(node) if n is not node}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", None) != "__future__":
                tree_counts["inner" if id(node) in inner else "top"] += 1
    return {"modules": rows, "n_modules": len(rows), "lines": sum(r["lines"] for r in rows.values()),
            "edges_top": sum(len(r["imports_top"]) for r in rows.values()),
            "edges_inner": sum(len(r["imports_inner"]) for r in rows.values()),
            "import_statements": tree_counts, "cycles_top": module_cycles(root, "top"),
            "cycles_all": module_cycles(root, "all"),
            "private_imports": src.count("from shb.run import _")}


def main() -> None:
    data = summary()
    if "--json" in sys.argv:
        print(json.dumps(data, indent=1))
        return
    for name, row in data["modules"].items():
        print(f"{row['lines']:5d}  {name:34s} top {len(row['imports_top']):2d}  inner {len(row['imports_inner']):2d}")
    print(f"\n{data['n_modules']} modules, {data['lines']} lines; shb->shb edges: {data['edges_top']} module-level, "
          f"{data['edges_inner']} in functions; import statements: {data['import_statements']}")
    print(f"cycles (module level): {data['cycles_top']}")
    print(f"cycles (counting imports in functions): {data['cycles_all']}")
    print(f"'from shb.run import _': {data['private_imports']}")


if __name__ == "__main__":
    main()
