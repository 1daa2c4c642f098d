"""What a Ray actor runs: the unit runner (shb.runner), as the local executor runs it in-process. No Ray
here, so the same code runs (and is tested) without it.

A worker never writes: it returns the chunk's rows and the driver commits them with the chunk's done
mark (shb.run.RunWriter). Every task names its unit, so a restarted actor (which starts empty) loads
the right model again.
"""

from __future__ import annotations

import os
import time

from shb.runner import ChunkResult, UnitRunner, format_error

# A test hook (off unless the variable is set): a file ``crash-<chunk>`` in this directory makes the
# worker that takes it (atomic rename) exit hard inside that chunk, once; ``fail-<chunk>`` raises every time.
FAULT_DIR_ENV = "SHB_FAULT_DIR"


class WorkerHost:
    """One actor's runner. ``runner_args`` as shb.runner.UnitRunner takes them (by value)."""

    def __init__(self, runner_args: dict):
        args = dict(runner_args)
        if (args.get("device") or "").startswith("cuda"):
            args["device"] = "cuda"  # Ray shows each actor only its own GPU(s), as cuda:0
        self.runner = UnitRunner(**args)

    def plan(self, unit) -> ChunkResult:
        return _portable(self.runner.plan(unit))

    def run_chunk(self, unit, chunk: str, tables: dict | None) -> ChunkResult:
        try:
            _maybe_fault(chunk)
        except RuntimeError as exc:  # an injected failure is the chunk's, as a metric's exception would be
            return ChunkResult(unit.unit_id, chunk, error=format_error(exc), pid=os.getpid())
        return _portable(self.runner.run_chunk(unit, chunk, tables))


def _portable(result: ChunkResult) -> ChunkResult:
    result.exception = None  # the traceback text travels; the exception object may not pickle
    return result


def _maybe_fault(chunk: str) -> None:
    folder = os.environ.get(FAULT_DIR_ENV)
    if not folder or not chunk:
        return
    crash = os.path.join(folder, f"crash-{chunk}")
    try:
        os.rename(crash, crash + ".taken")  # one worker wins, once
    except OSError:
        pass
    else:
        time.sleep(0.05)
        os._exit(17)
    if os.path.exists(os.path.join(folder, f"fail-{chunk}")):
        raise RuntimeError(f"injected failure in chunk {chunk} ({FAULT_DIR_ENV})")
