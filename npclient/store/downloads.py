"""Which downloaded export files a mirror has imported: what `np-mirror cache prune` may delete.

A sync records every export batch it took in `export_files` (key, size, etag, status; see
`importer.py`). Only a file recorded `imported` is wholly in the mirror: a `failed` one is
tried again by the next sync, and a `partial` one (imported for a `--range`) still holds rows
the mirror lacks. This module answers that question and nothing else; deciding which bytes on
disk match a record is `npclient.exports.prune`'s job (no SQL there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from . import Store

__all__ = ["DownloadRecord", "IMPORTED", "recorded_downloads"]

#: The status of a file whose rows are all in the mirror.
IMPORTED = "imported"

_QUERY = "SELECT key, size, etag, status FROM export_files ORDER BY key"


@dataclass(frozen=True)
class DownloadRecord:
    """One export file as the mirror recorded it: its bucket key, the size and ETag it had."""

    key: str
    size: Optional[int]
    etag: Optional[str]
    status: str

    @property
    def imported(self) -> bool:
        return self.status == IMPORTED


def recorded_downloads(store: "Store") -> list[DownloadRecord]:
    """Every export file the mirror behind `store` recorded, by key (any status)."""
    return [DownloadRecord(r["key"], None if r["size"] is None else int(r["size"]), r["etag"], r["status"])
            for r in store.rows(_QUERY)]
