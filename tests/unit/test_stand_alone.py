"""The repository stands alone: no shipped suite, bench script or test reads a file outside it.
Benchmarks come from upstream (or the $SHB_DATA_MIRROR folder), checked by their pinned sha256."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITES = sorted((REPO / "suites").glob("*.json"))
PATH_KEYS = {"path", "gguf_file", "file", "dir", "directory"}
# What a file outside the repository looks like in source: the folder beside it, or a parent of the root.
OUTSIDE = re.compile(r"\.\./|REPO\.parent|shared[\"' ]*/[\"' ]*data|SHB_SHARED_DATA")
PARENTS = re.compile(r"parents\[(\d+)\]")


def _strings(node, pointer=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{pointer}/{i}")
    elif isinstance(node, str):
        yield pointer, node


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_shipped_suites_name_no_file_outside_the_repository(path):
    assert SUITES, "no shipped suites found"
    for pointer, value in _strings(json.loads(path.read_text())):
        assert "../" not in value and "..\\" not in value, f"{path.name}{pointer}: {value!r} leaves the repository"
        if pointer.rsplit("/", 1)[-1] in PATH_KEYS:
            assert not PurePosixPath(value).is_absolute() and not value.startswith("~"), \
                f"{path.name}{pointer}: {value!r} is a machine-specific path"
            assert ".." not in PurePosixPath(value).parts, f"{path.name}{pointer}: {value!r}"


def test_suite_files_that_ship_are_in_the_repository():
    """A dataset `path` of a shipped suite is a file the repository holds, or one the suite's description
    tells the user to supply (paper-table1's Alpaca, git-ignored)."""
    for path in SUITES:
        data = json.loads(path.read_text())
        for entry in data.get("datasets", []):
            if "path" in entry:
                target = (path.parent / entry["path"]).resolve()   # relative to the suite file
                assert target.is_relative_to(REPO), f"{path.name}: {entry['id']}"
                assert target.is_file() or entry["path"] in data.get("description", ""), \
                    f"{path.name}: dataset {entry['id']!r} names {entry['path']}, which is neither shipped nor documented"


@pytest.mark.parametrize("folder", ["bench", "tests", "shb"])
def test_code_reads_nothing_beside_the_repository(folder):
    me = Path(__file__).resolve()
    offenders = []
    for source in sorted((REPO / folder).rglob("*")):
        if source.suffix not in (".py", ".sh", ".json") or source.resolve() == me:
            continue
        depth = len(source.relative_to(REPO).parts)  # Path(__file__).parents[depth - 1] is the root
        for number, line in enumerate(source.read_text(errors="replace").splitlines(), start=1):
            if OUTSIDE.search(line) or any(int(k) >= depth for k in PARENTS.findall(line)):
                offenders.append(f"{source.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "reads outside the repository:\n" + "\n".join(offenders)
