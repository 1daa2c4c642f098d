"""One run at a time per database, and runs whose process is gone.

The runner does not hold its DuckDB connection between commits (see shb.store), so DuckDB's own file
lock does not stop a second writer: ``run_lock`` holds an flock on ``<db>.run.lock`` for the length of
a run. A run recorded ``running`` while nobody holds that lock (or whose pid on this host is gone) was
killed; ``shb run`` and ``shb report runs`` mark it so.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from shb.errors import DatabaseBusy, UsageError
from shb.store import READ_WAIT_S, Store, db_path


def lock_path(path=None) -> Path:
    p = db_path(path)
    return p.with_name(p.name + ".run.lock")


@contextmanager
def run_lock(path=None):
    """Hold ``<db>.run.lock`` for the length of a run: a second ``shb run`` on the database fails at once.

    (The run's DuckDB connection is not held between commits, so the file lock alone would not stop a
    second writer.) Without fcntl (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    target = lock_path(path)
    if not target.parent.is_dir():
        raise UsageError(f"cannot create database {db_path(path)}: directory {target.parent} does not exist; create it"
                         " or choose another --db PATH")
    try:
        handle = open(target, "a+")
    except OSError as exc:
        raise UsageError(f"cannot create {target} ({exc.strerror}): is the database directory writable?") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DatabaseBusy(f"{db_path(path)} is in use by another process (a running `shb run`); wait for it to"
                               " finish, or use another database with --db PATH") from None
        yield
    finally:
        handle.close()  # closing releases the lock


def run_active(path=None) -> bool | None:
    """Whether a ``shb run`` holds the database's run lock now (None: cannot tell)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return None
    target = lock_path(path)
    if not target.exists():
        return False
    try:
        with open(target, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            return False
    except OSError:
        return None


def pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError):
        return True
    return True


def dead_runs(store: "Store", lock_free: bool | None, exclude: str | None = None) -> list[str]:
    """Runs recorded ``running`` whose process is gone: all of them when no run holds the lock, else those
    started on this host whose pid no longer exists."""
    import socket

    rows = store.con.execute("SELECT run_id, hostname, pid FROM runs WHERE status = 'running'").fetchall()
    host = socket.gethostname()
    return [run_id for run_id, hostname, pid in rows if run_id != exclude
            and (lock_free or (hostname == host and pid is not None and not pid_alive(pid)))]


def reap_dead_runs(path=None) -> list[str]:
    """For readers (``shb report runs``): mark runs whose process is gone ``killed``. Best effort: a database
    that cannot be written here is left as it is."""
    p = db_path(path)
    if not p.is_file():
        return []
    try:
        with Store(p, read_only=True) as reader:
            if not reader.version() or "pid" not in {r[0] for r in reader.con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'").fetchall()}:
                return []
            dead = dead_runs(reader, run_active(p) is False)
        if dead:
            with Store(p, hold=False, wait=READ_WAIT_S) as writer:
                writer.mark_killed(dead)
        return dead
    except (UsageError, DatabaseBusy, OSError):
        return []
