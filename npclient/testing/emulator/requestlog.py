"""The emulator's request log: every /api request as it was seen, thread-safe."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["RequestRecord", "RequestLog"]


@dataclass(slots=True)
class RequestRecord:
    """One request as the emulator saw it (mutable only while it is in flight)."""

    t: float  # time.monotonic() at arrival
    method: str
    path: str
    query: str
    body: bytes
    json: Any
    client: str
    status: int | None = None  # None: no status line was sent (e.g. reset)
    fault: str | None = None
    limited: bool = False
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t, "method": self.method, "path": self.path, "query": self.query,
            "body": self.body.decode("utf-8", "replace"), "json": self.json, "client": self.client,
            "status": self.status, "fault": self.fault, "limited": self.limited, "done": self.done,
        }


class RequestLog:
    """Thread-safe append-only log of every /api request."""

    def __init__(self) -> None:
        self._items: list[RequestRecord] = []
        self._lock = threading.Lock()

    def add(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self._items.append(record)
        return record

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def matching(self, path_prefix: str = "", method: str | None = None) -> list[RequestRecord]:
        return [
            r for r in self.snapshot()
            if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
        ]
