"""What a sync reports: per source, for the whole run, and while it runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from ..ids import SourceId

__all__ = ["SourceSummary", "SyncSummary", "SyncProgress", "ProgressFn"]


@dataclass
class SourceSummary:
    source: SourceId
    wanted: int = 0
    already_present: int = 0
    skipped_failed: int = 0
    fetched: int = 0
    imported: int = 0
    export_note: str = ""
    export_failed: dict[str, str] = field(default_factory=dict)
    failed: Counter = field(default_factory=Counter)
    #: features of the range stored before this run's export import (None: no export step)
    present_before: Optional[int] = None

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


@dataclass
class SyncSummary:
    run_id: Optional[int]
    sources: list[SourceSummary]
    requests: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def fetched(self) -> int:
        return sum(s.fetched for s in self.sources)

    @property
    def failed(self) -> int:
        return sum(s.failed_total for s in self.sources)

    @property
    def exit_code(self) -> int:
        broken_exports = any(s.export_failed for s in self.sources)
        return 1 if (self.failed or self.interrupted or broken_exports) else 0


@dataclass(frozen=True)
class SyncProgress:
    source: SourceId
    done: int
    total: int
    fetched: int
    failed: int
    #: requests the client may still send in its budget window (`budget_window_s` seconds)
    budget_remaining: Optional[int]
    budget_window_s: Optional[float] = None
    #: wall-clock time (time.time()) until which the budget or a 429 cooldown holds requests back
    waiting_until: Optional[float] = None
    waiting_reason: str = ""


ProgressFn = Callable[[SyncProgress], None]
