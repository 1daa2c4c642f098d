"""The local and Ray executors on one suite, side by side: wall time, model loads, identical tables.

Run by hand (needs `pip install 'shb[ray]'`; not part of the tests):

    . .venv/bin/activate && python bench/executors.py suites/demo.json --cpus 2
    python bench/executors.py suites/paper-mini.json --cpus 2 --threads 1

Each executor runs the whole suite into a fresh database in a temporary folder. The Ray instance
is started (and timed) before either run, so the Ray wall time includes starting its actors and
loading their models but not starting Ray itself. Model loads: the local loop's calls to
shb.runner.load_resolved; for Ray, the loads its actors reported (a restarted actor loads again).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The same comparison the executor tests make (every table's rows, without timings and batch sizes).
from tests.integration.test_executor_worker import tables  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance (one per actor)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the local run (Ray actors get 1)")
    args = parser.parse_args()

    import ray
    import torch

    import shb.run
    import shb.runner
    from shb.suite import load

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray_start = time.perf_counter() - started
    loads = []
    real_load = shb.runner.load_resolved
    shb.runner.load_resolved = lambda *a, **k: loads.append(a[0].get("kind")) or real_load(*a, **k)
    quiet = {"log": lambda *a, **k: None}
    with tempfile.TemporaryDirectory() as folder:
        results = {}
        for executor in ("local", "ray"):
            db = Path(folder) / f"{executor}.duckdb"
            t0 = time.perf_counter()
            counts = shb.run.run_suite(load(args.suite), db, executor=executor,
                                       executor_options={"workers": args.workers}, **quiet)
            results[executor] = (time.perf_counter() - t0, counts)
        same = tables(Path(folder) / "local.duckdb") == tables(Path(folder) / "ray.duckdb")
    ray.shutdown()
    local_s, local_counts = results["local"]
    ray_s, ray_counts = results["ray"]
    print(f"suite {args.suite}: {local_counts['done']} unit(s); ray.init {ray_start:.1f} s (not counted)")
    print(f"  local (1 process, {args.threads} torch thread(s)): {local_s:7.1f} s, {len(loads)} model load(s)")
    print(f"  ray ({ray_counts['workers']} CPU actor(s), 1 thread each):  {ray_s:7.1f} s, "
          f"{ray_counts['model_loads']} model load(s); local/ray = {local_s / ray_s:.2f}x")
    print(f"  tables identical: {same}")


if __name__ == "__main__":
    main()
