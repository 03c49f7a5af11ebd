"""Exports first: list a source's dump, download what is missing, import it, and say what the API must fill.

A source with no export, or an unreachable bucket, is not an error: the API fills it all.
A failed activations batch sends the features it would have covered to the API; a failed
explanations batch leaves the source's explanations incomplete and is retried next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import NPError
from ..ids import SourceId
from ..store.database import Database
from .download import DownloadReport, download
from .importer import ImportReport, import_source_dir
from .layout import source_prefix
from .s3 import ExportBucket

log = logging.getLogger("npclient.exports")

__all__ = ["ExportOutcome", "sync_source_export"]


@dataclass
class ExportOutcome:
    source: SourceId
    found: bool = False
    reason: str = ""
    download: Optional[DownloadReport] = None
    imported: Optional[ImportReport] = None
    failed_files: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.found and not self.failed_files


async def sync_source_export(
    bucket: ExportBucket, db: Database, sid: SourceId, cache_root: Path, *, run_id: Optional[int] = None
) -> ExportOutcome:
    outcome = ExportOutcome(sid)
    try:
        objects = await bucket.list_source(sid)
    except NPError as exc:
        outcome.reason = f"exports not reachable ({str(exc).splitlines()[0][:200]})"
        log.warning("%s: %s; using the API", sid, outcome.reason)
        return outcome
    batches = [o for o in objects if "/batch-" in o.key]
    if not batches:
        outcome.reason = "no export for this source"
        return outcome
    outcome.found = True
    outcome.download = await download(bucket, objects, cache_root)
    outcome.failed_files.update(outcome.download.failed)
    folder = Path(cache_root) / source_prefix(sid)
    etags = {o.key: o.etag for o in objects}
    outcome.imported = import_source_dir(db, folder, sid, etags=etags, run_id=run_id)
    outcome.failed_files.update(outcome.imported.failed)
    return outcome


def activation_gaps(db: Database, sid: SourceId, start: int, stop: int) -> set[int]:
    """Imported features no imported activations batch covers: the API fetches them whole.

    Coverage comes from the index span each imported batch actually held, not from batch
    arithmetic; a dead feature inside a covered span legitimately has no activations.
    """
    with db.connect() as cur:
        rows = cur.execute(
            """SELECT f."index" FROM features f
               WHERE f.model_id = ? AND f.source = ? AND f.origin = 'export' AND f."index" >= ? AND f."index" < ?
                 AND coalesce(f.n_activations, 0) = 0
                 AND NOT EXISTS (
                     SELECT 1 FROM export_files e
                     WHERE e.model_id = f.model_id AND e.source = f.source AND e.kind = 'activations'
                       AND e.status = 'imported' AND f."index" BETWEEN e.min_index AND e.max_index)""",
            [sid.model_id, sid.source, start, stop],
        ).fetchall()
    return {r[0] for r in rows}
