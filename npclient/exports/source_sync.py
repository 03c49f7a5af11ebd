"""Exports first: list a source's dump, download what the sync needs, import it, and say what the API must fill.

A source with no export, or an unreachable bucket, is not an error: the API fills it all.
With a range, only the export files that hold it are considered, and only when they cost
less than the API requests the range needs (see `plan.py`); without one, the whole export
is used. A failed activations batch sends the features it would have covered to the API; a
failed explanations batch leaves the source's explanations incomplete and is retried next run.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import NPError
from ..ids import SourceId
from ..models import SourceInfo
from ..store import catalog
from ..store.database import Database
from . import plan as _plan
from .download import DownloadReport, download, is_complete
from ..store.importer import ImportReport, import_source_dir, record_failed_download
from .files import PART_KINDS
from .layout import local_path, source_prefix
from .plan import ExportPlan, plan_export
from .s3 import ExportBucket

log = logging.getLogger("npclient.exports")

__all__ = ["ExportOutcome", "sync_source_export", "activation_gaps"]


@dataclass
class ExportOutcome:
    source: SourceId
    found: bool = False
    reason: str = ""
    plan: Optional[ExportPlan] = None
    download: Optional[DownloadReport] = None
    imported: Optional[ImportReport] = None
    failed_files: dict[str, str] = field(default_factory=dict)
    #: features of [start, stop) that this import added to the mirror
    imported_features: int = 0
    #: imported features the API must fetch again whole (no activations batch covered them)
    refetch: set[int] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.found and not self.failed_files

    @property
    def note(self) -> str:
        """The summary's line: why not, or what was chosen (with its numbers) and downloaded."""
        if self.reason:
            return self.reason
        text = self.plan.note() if self.plan is not None else ""
        if self.download is not None and (self.plan is None or self.plan.use == "exports"):
            text = f"{text}; {self.download.summary()}" if text else self.download.summary()
        return text


def _count_of(db: Database, sid: SourceId, info: Optional[SourceInfo]) -> Optional[int]:
    if info is not None and info.d_sae:
        return info.d_sae
    return catalog.stored_feature_count(db, sid)


async def sync_source_export(
    bucket: ExportBucket,
    db: Database,
    sid: SourceId,
    cache_root: Path,
    *,
    run_id: Optional[int] = None,
    start: int = 0,
    stop: Optional[int] = None,
    info: Optional[SourceInfo] = None,
    ranged: bool = False,
    parts: Collection[str] = PART_KINDS,
    method: str = "post",
    refresh: bool = False,
    retry_failed: bool = False,
    api_features: Optional[int] = None,
    force: Optional[str] = None,
) -> ExportOutcome:
    """List `sid`'s export, plan, download and import what [start, stop) of `parts` needs.

    `ranged`: the sync asked for a range (else the whole source comes from the export).
    `force="exports"` skips the cost comparison (`--exports-only`). `method`, `refresh` and
    `retry_failed` are the API side's, for counting the requests it would send; `api_features`
    overrides the count of features it would fetch (`--scores` refetches present ones too).
    """
    outcome = ExportOutcome(sid)
    try:
        objects = await bucket.list_source(sid)
    except NPError as exc:
        outcome.reason = f"exports not reachable ({str(exc).splitlines()[0][:200]})"
        log.warning("%s: %s; using the API", sid, outcome.reason)
        return outcome
    if not any("/batch-" in o.key for o in objects):
        outcome.reason = "no export for this source"
        return outcome
    outcome.found = True
    count = _count_of(db, sid, info)
    unknown = stop is None and count is None  # nothing says what is missing: take the whole export
    stop = stop if stop is not None else (count if count is not None else start)
    ranged = ranged and not (start == 0 and count is not None and stop >= count)
    missing = api_features if api_features is not None else _missing(db, sid, start, stop, refresh, retry_failed)
    root = Path(cache_root)
    have = {o.key for o in objects if _complete(root, o)}
    plan = plan_export(objects, start=start, stop=stop, count=count, ranged=ranged, parts=parts,
                       missing=missing, method=method, have=have,
                       pending=unknown or _failed_before(db, sid, parts),
                       force=force, bytes_per_request=_plan.BYTES_PER_REQUEST)
    outcome.plan = plan
    if plan.use != "exports":
        return outcome
    before = len(catalog.present_indices(db, sid, start, stop))
    outcome.download = await download(bucket, plan.objects(), root)
    outcome.failed_files.update(outcome.download.failed)
    sizes = {o.key: o for o in objects}
    for key, reason in outcome.download.failed.items():
        if key in sizes:
            record_failed_download(db, sid, key, sizes[key].size, sizes[key].etag, reason)
    folder = root / source_prefix(sid)
    etags = {o.key: o.etag for o in objects}
    batch_files = [local_path(root, o.key) for o in plan.objects() if "/batch-" in o.key and o.key not in outcome.download.failed]
    outcome.imported = import_source_dir(
        db, folder, sid, etags=etags, run_id=run_id, parts=parts, files=batch_files,
        index_range=(start, stop) if ranged else None,
    )
    outcome.failed_files.update(outcome.imported.failed)
    outcome.imported_features = len(catalog.present_indices(db, sid, start, stop)) - before
    if "activations" in parts:
        outcome.refetch = activation_gaps(db, sid, start, stop)
    return outcome


def _complete(root: Path, obj: object) -> bool:
    try:
        return is_complete(local_path(root, obj.key), obj)  # type: ignore[attr-defined, arg-type]
    except NPError:
        return False


def _failed_before(db: Database, sid: SourceId, parts: Collection[str]) -> bool:
    """Whether an export file of a wanted part failed in an earlier run (it is retried)."""
    with db.connect() as cur:
        kinds = cur.execute(
            "SELECT DISTINCT kind FROM export_files WHERE model_id = ? AND source = ? AND status = 'failed'",
            [sid.model_id, sid.source],
        ).fetchall()
    return any(k[0] in parts for k in kinds)


def _missing(db: Database, sid: SourceId, start: int, stop: int, refresh: bool, retry_failed: bool) -> int:
    """Features of [start, stop) the API would be asked for: not present, not a known 404."""
    if stop <= start:
        return 0
    if refresh:
        return stop - start
    present = catalog.present_indices(db, sid, start, stop)
    dead = set() if retry_failed else catalog.permanent_failures(db, sid, start, stop)
    return (stop - start) - len(present | dead)


def activation_gaps(db: Database, sid: SourceId, start: int, stop: int) -> set[int]:
    """Imported features of [start, stop) that no imported activations batch covers: the API
    fetches them whole.

    An activations batch covers the numeric range its records span, widened to meet its
    imported neighbours (a dead feature at the edge of a batch has no record, yet is covered)
    and, for the last batch, up to the last index export-data.py gave batches to: it sizes them
    by the *count* of features, assuming indices 0..count-1, so with holes the highest indices
    are in no batch at all (utils/neuronpedia-utils/neuronpedia_utils/export-data.py). That
    count is known when every feature file was imported whole.
    """
    with db.connect() as cur:
        files = cur.execute(
            """SELECT kind, batch, status, rows_imported, min_index, max_index FROM export_files
               WHERE model_id = ? AND source = ? AND kind IN ('features', 'activations')""",
            [sid.model_id, sid.source],
        ).fetchall()
        candidates = [r[0] for r in cur.execute(
            """SELECT "index" FROM features WHERE model_id = ? AND source = ? AND origin = 'export'
                 AND "index" >= ? AND "index" < ? AND coalesce(n_activations, 0) = 0""",
            [sid.model_id, sid.source, start, stop],
        ).fetchall()]
    if not candidates:
        return set()
    feature_files = [f for f in files if f[0] == "features"]
    whole = feature_files and all(f[2] == "imported" for f in feature_files) and \
        sorted(f[1] for f in feature_files) == list(range(len(feature_files)))
    stored = sum(f[3] or 0 for f in feature_files) if whole else None
    acts = {f[1]: f for f in files if f[0] == "activations"}
    last_batch = max(acts, default=-1)
    covered = {n: (f[4], f[5]) for n, f in acts.items() if f[2] in ("imported", "partial") and f[4] is not None}
    spans = []
    for n, (lo, hi) in sorted(covered.items()):
        if n == 0:
            lo = 0
        elif n - 1 in covered:
            lo = covered[n - 1][1] + 1
        if n + 1 in covered:
            hi = covered[n + 1][0] - 1
        elif n == last_batch and stored is not None:
            hi = max(hi, stored - 1)
        spans.append((lo, hi))
    return {i for i in candidates if not any(lo <= i <= hi for lo, hi in spans)}
