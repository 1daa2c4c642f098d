"""``shb report runs``: provenance of every run: when, what suite, which versions, git commit and
device, how many units it left in each status and how many chunks and seconds of work it committed.

A unit row records the last run that touched it (units.run_id); a chunk row records the run that
committed it (chunks.run_id), so a resumed unit's work is split correctly between its runs.
No torch here.
"""

from __future__ import annotations

import polars as pl

from shb.reports.render import require, where


def runs(store, suite=None, run_id=None) -> pl.DataFrame:
    body, params = where(**{"r.suite_name": suite, "r.run_id": run_id})
    frame = store.query(f"""
        WITH unit_counts AS (
            SELECT run_id, count(*) AS units,
                   count(*) FILTER (WHERE status = 'done') AS done,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status NOT IN ('done', 'failed')) AS unfinished,
                   sum(seconds) AS unit_seconds
            FROM units GROUP BY run_id),
        chunk_counts AS (
            SELECT run_id, count(*) AS chunks, sum(seconds) AS chunk_seconds FROM chunks GROUP BY run_id)
        SELECT r.run_id, r.suite_name, r.status, r.started_at, r.ended_at,
               date_diff('second', r.started_at, r.ended_at) AS wall_seconds,
               coalesce(u.units, 0) AS units, coalesce(u.done, 0) AS done, coalesce(u.failed, 0) AS failed,
               coalesce(u.unfinished, 0) AS unfinished, coalesce(c.chunks, 0) AS chunks,
               c.chunk_seconds, r.shb_version, r.torch_version, r.transformers_version, r.python_version,
               r.git_commit, r.device, r.dtype, r.hostname, r.suite_path, r.suite_sha256
        FROM runs r LEFT JOIN unit_counts u USING (run_id) LEFT JOIN chunk_counts c USING (run_id)
        WHERE {body}
        ORDER BY r.started_at, r.run_id""", params)
    return require(frame, "runs", "run a suite first (e.g. `shb run suites/demo.json`)", [suite, run_id])
