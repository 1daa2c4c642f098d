"""Fixtures shared by the Ray executor tests (test_ray_executor, test_same_tables)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    """The local Ray instance; its workers inherit SHB_FAULT_DIR (the crash/fail hook's folder)."""
    import ray

    from shb.executors.worker import FAULT_DIR_ENV

    folder = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_DIR_ENV, str(folder))
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            yield folder
        finally:
            ray.shutdown()
