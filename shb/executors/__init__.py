"""Executors: where a run's chunks are computed. The driver (shb.run) plans, and alone writes the database.

Both run the same unit runner (shb.runner) and follow the same metric declarations (what a chunk
reads, what it waits for; shb.metrics.base), so they give the same tables and a run started with
one resumes with the other.
``local``: one runner in this process (shb.executors.local).
``ray``: one runner in each Ray actor, which returns rows; the driver commits them chunk by chunk in
the same transactions as a local run (shb.executors.ray_executor). ``ray`` is an optional
dependency (``pip install 'shb[ray]'``), imported only when this executor is chosen.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from shb.errors import UsageError

EXECUTORS = ("local", "ray")
RAY_MISSING = ("the Ray executor needs the `ray` package, which is not installed: pip install 'shb[ray]' "
               "(or pip install 'ray>=2.9'), or run with --executor local")


@dataclass(frozen=True)
class ExecutorOptions:
    name: str = "local"
    address: str | None = None      # an existing cluster ("auto", "ray://host:10001", "host:6379"); None: start one
    num_gpus: float | None = None   # GPUs per actor (fractional: several actors share a GPU); None: 1 if any, else 0
    workers: int | None = None      # actors at most; None: as many as the cluster's GPUs (or CPUs) allow
    retries: int = 3                # restarts of a dead worker per chunk before its unit is marked failed

    def device_label(self, device: str, request: str | None) -> str:
        """``runs.device``: the local run's device, or ``ray:`` and the device asked of the workers (each
        resolves "auto" itself: cuda:0 is its own GPU)."""
        return device if self.name == "local" else f"ray:{request or 'auto'}"


def resolve_executor(name: str | None, options: dict | None, suite) -> ExecutorOptions:
    """The executor from the flag, else the suite's ``defaults.executor`` / ``defaults.ray``, else local.
    Checks that ray is importable when it is chosen, so a missing extra fails before any work."""
    defaults = suite.defaults if suite is not None else {}
    name = name or defaults.get("executor") or "local"
    if name not in EXECUTORS:
        raise UsageError(f"unknown executor '{name}'; known: {', '.join(EXECUTORS)}")
    merged = {**(defaults.get("ray") or {}), **{k: v for k, v in (options or {}).items() if v is not None}}
    unknown = set(merged) - {"address", "num_gpus", "workers", "retries"}
    if unknown:
        raise UsageError(f"unknown executor option(s) {sorted(unknown)}; known: address, num_gpus, workers, retries")
    if merged.get("num_gpus") is not None and merged["num_gpus"] < 0:
        raise UsageError(f"--num-gpus {merged['num_gpus']}: must be >= 0 (GPUs per worker; fractions share a GPU)")
    if merged.get("workers") is not None and merged["workers"] < 1:
        raise UsageError(f"--workers {merged['workers']}: must be >= 1")
    if merged.get("retries") is not None and merged["retries"] < 0:
        raise UsageError(f"retries {merged['retries']}: must be >= 0")
    if name == "local":
        ignored = [k for k, v in (options or {}).items() if v is not None]
        if ignored:
            raise UsageError(f"{', '.join('--' + k.replace('_', '-') for k in ignored)} only apply to --executor ray")
        return ExecutorOptions()
    require_ray()
    check_address(merged.get("address"))
    return ExecutorOptions(name=name, **merged)


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A cluster address that cannot be reached fails now, with its name (ray.init would retry for minutes)."""
    if not address or address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address} ({exc}): start it with `ray start --head` "
                         "on that machine, or check --address") from None


def require_ray():
    """Import ray, or fail with how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray
