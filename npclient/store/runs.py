"""The `sync_runs` table: one row a sync, opened before its first request and closed at its end."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Optional

import orjson

from .database import Database

__all__ = ["start_run", "finish_run"]


def start_run(db: Database, targets: str, options: Mapping[str, Any]) -> int:
    """A new `running` row naming this process (pid and host), with the options as JSON."""
    with db.transaction() as cur:
        run_id = cur.execute("SELECT nextval('sync_run_ids')").fetchall()[0][0]
        cur.execute(
            "INSERT INTO sync_runs (run_id, targets, options, status, pid, host) VALUES (?, ?, ?, 'running', ?, ?)",
            [run_id, targets, orjson.dumps(dict(options), default=str).decode(), os.getpid(), socket.gethostname()],
        )
    return int(run_id)


def finish_run(db: Database, run_id: Optional[int], *, status: str, fetched: int, present: int, failed: int,
               requests: int) -> None:
    with db.transaction() as cur:
        cur.execute(
            """UPDATE sync_runs SET finished_at = current_timestamp, status = ?, fetched = ?, present = ?,
                   failed = ?, requests = ? WHERE run_id = ?""",
            [status, fetched, present, failed, requests, run_id],
        )
