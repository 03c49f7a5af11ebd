"""The `sync_runs` table: one row a sync, opened before its first request and closed at its end.

A run row names its process (`pid`, `host`), so a row left `running` by a process that was
killed can be told apart from a sync that is still going: `mark_interrupted` (called when a
sync starts) marks `interrupted` only the rows of this host whose process is gone. A second
live sync keeps its `running`; a row from another host is left as it is (its pid means
nothing here). `options` holds the run's options as JSON.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Optional

import orjson

from .database import Database

__all__ = ["start_run", "finish_run", "mark_interrupted", "process_alive"]


def _process_started(pid: int) -> Optional[float]:
    """When process `pid` started (epoch seconds), from /proc; None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith(b"btime"))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def process_alive(pid: int, started_at: Optional[float] = None) -> bool:
    """Whether process `pid` of this host still runs (and, given `started_at` in epoch seconds,
    is the one that started then: a process that started later only reuses the number)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    except OSError:
        return False
    if _is_zombie(pid):  # killed, not yet reaped by its parent
        return False
    if started_at is not None:
        began = _process_started(pid)
        if began is not None and began > started_at + 2.0:  # clock ticks and rounding: 2 s of slack
            return False
    return True


def start_run(db: Database, targets: str, options: Mapping[str, Any]) -> int:
    """A new `running` row naming this process (pid and host), with the options as JSON."""
    with db.transaction() as cur:
        run_id = cur.execute("SELECT nextval('sync_run_ids')").fetchall()[0][0]
        cur.execute(
            "INSERT INTO sync_runs (run_id, targets, options, status, pid, host) VALUES (?, ?, ?, 'running', ?, ?)",
            [run_id, targets, orjson.dumps(dict(options), default=str).decode(), os.getpid(), socket.gethostname()],
        )
    return int(run_id)


def mark_interrupted(db: Database) -> list[int]:
    """Mark `interrupted` the `running` rows of this host whose process is gone; return their ids.

    Rows of live processes (another sync now running, this process) and rows of other hosts
    are left alone.
    """
    host = socket.gethostname()
    with db.connect() as cur:
        rows = cur.execute(
            "SELECT run_id, pid, epoch(started_at) FROM sync_runs WHERE status = 'running' AND host = ?", [host]
        ).fetchall()
    gone = [int(run_id) for run_id, pid, started in rows
            if pid is not None and pid != os.getpid() and not process_alive(int(pid), started)]
    if gone:
        with db.transaction() as cur:
            cur.execute(
                f"UPDATE sync_runs SET status = 'interrupted' WHERE status = 'running' AND run_id IN "
                f"({', '.join('?' * len(gone))})",
                gone,
            )
    return gone


def finish_run(db: Database, run_id: Optional[int], *, status: str, fetched: int, present: int, failed: int,
               requests: int) -> None:
    with db.transaction() as cur:
        cur.execute(
            """UPDATE sync_runs SET finished_at = current_timestamp, status = ?, fetched = ?, present = ?,
                   failed = ?, requests = ? WHERE run_id = ?""",
            [status, fetched, present, failed, requests, run_id],
        )
