"""Exports first: list a source's dump, decide what the sync takes from it, download, import.

A source with no export, or an unreachable bucket, is not an error: the API fills it all.
Without a range the whole export is used; with one, only the export files that hold it are
considered, and only when they cost less than the API requests the range needs. A failed
activations batch sends the features it would have covered to the API; a failed explanations
batch leaves the source's explanations incomplete and is retried on the next run.

Which files hold a range (written by Neuronpedia's
`utils/neuronpedia-utils/neuronpedia_utils/export-data.py`; see docs/neuronpedia.md, "Bulk
exports"), three series of batch files:

- features: `ORDER BY index LIMIT 1024 OFFSET n*1024` on a TEXT index, so batch n holds the
  indices at positions n*1024.. of the *text* order ("0", "1", "10", "100", ...);
- activations: batch n holds indices n*1024 .. n*1024+1023 (numeric; sized by the feature
  count, assuming indices 0..count-1);
- explanations: 1,024 explanation *rows* a batch in text order, so where a feature's rows
  fall depends on how many rows every earlier feature has: only all the files are sure to
  hold a range's explanations.

For a range, `plan_export` predicts the feature and activation files that hold it from the
feature count, assuming indices 0..count-1 (holes only move an index to an earlier position,
and whatever the prediction misses the API fetches afterwards: the sync asks the API for every
feature of the range that is not present). Then it weighs the bytes of the needed files not
yet on disk against the API requests the missing features cost, at `BYTES_PER_REQUEST`.
A POST /api/features answer carries every part of 25 features, and writing it replaces
whatever the export gave those features, so the choice is per source, all or nothing: export
files for some parts and the API for the others would pay for both.

The same layout gives a source's feature count when nothing else does (`export_feature_count`):
1,024 features a feature file, so the count is 1,024 x the last file's batch number + the
records in that last file, which is the only one downloaded for it.

The store does the SQL (`catalog`, `importer`), the bucket's client (`npclient.http.s3`) and
`npclient.exports` (download, layout) the HTTP and the files.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from ..errors import NPError
from ..exports.download import DownloadReport, download, is_complete
from ..exports.files import PART_KINDS
from ..exports.layout import activation_spans, local_path, parse_key, source_prefix
from ..http.s3 import ExportBucket, S3Object
from ..ids import SourceId
from ..models import SourceInfo
from ..store import catalog
from ..store.database import Database
from ..store.importer import ImportReport, import_source_dir, imported_files, record_failed_download
from .summary import SourceSummary

if TYPE_CHECKING:
    from .plan import SourcePlan, SyncOptions

log = logging.getLogger("npclient.exports")

__all__ = [
    "BYTES_PER_REQUEST",
    "FEATURES_PER_POST",
    "FEATURES_PER_FILE",
    "ExportPlan",
    "plan_export",
    "guess_batch_size",
    "text_positions",
    "ExportOutcome",
    "sync_source_export",
    "sync_export",
    "activation_gaps",
    "export_feature_count",
]

#: The exchange rate between the two costs: one API request is worth this many bytes of export
#: download. A request spends 1/25,000 of the hourly budget Neuronpedia shares per IP and takes
#: ~150 ms or more; 4 MiB from S3 takes about as long on a 200 Mbit/s line and spends nothing.
BYTES_PER_REQUEST = 4 * 2**20
#: Features a POST /api/features request carries (the client's batch).
FEATURES_PER_POST = 25
#: export-data.py: FEATURES_EXPLANATIONS_BATCH_SIZE (= ACTIVATIONS_BATCH_SIZE).
FEATURES_PER_FILE = 1024
#: export-data.py's batch, and 128: the batch of the sources converted from dashboards.
_KNOWN_BATCH_SIZES = (FEATURES_PER_FILE, 128)
#: A source is assumed to miss at most this share of 0..count-1 (holes) when a batch size is checked.
_MAX_HOLES = 0.5

Kind = Literal["features", "activations", "explanations"]


# --------------------------------------------------------------------------- the plan


@dataclass
class ExportPlan:
    """The files one source's sync would take from its export, and the choice made."""

    start: int
    stop: int
    count: Optional[int]
    ranged: bool
    parts: tuple[str, ...]
    #: "exports" or "api"
    use: str = "exports"
    #: why: "whole source", "forced", "cheaper" or "nothing missing"
    reason: str = ""
    metadata: list[S3Object] = field(default_factory=list)
    needed: dict[str, list[S3Object]] = field(default_factory=dict)
    listed: dict[str, int] = field(default_factory=dict)
    batch_size: Optional[int] = None
    bytes: int = 0
    missing: int = 0
    requests: int = 0

    def objects(self) -> list[S3Object]:
        """What to download when the exports are used: metadata, then the needed batches."""
        if self.use != "exports":
            return []
        return self.metadata + [o for kind in ("features", "activations", "explanations") for o in self.needed.get(kind, [])]

    def files_text(self) -> str:
        names = {"features": "feature", "activations": "activation", "explanations": "explanation"}
        return ", ".join(
            f"{len(self.needed.get(kind, []))} of {self.listed.get(kind, 0)} {names[kind]} files"
            for kind in ("features", "activations", "explanations") if kind in self.parts
        )

    def note(self) -> str:
        """One line for the summary, with the numbers the choice was made on."""
        mb = f"{self.bytes / 1e6:.1f} MB"
        req = f"{self.requests} request{'s' if self.requests != 1 else ''}"
        if self.use == "api":
            if self.reason == "nothing missing":
                return f"exports: none needed, nothing of {self.start}:{self.stop} is missing"
            return f"API: {req} instead of {self.files_text()} ({mb})"
        if not self.ranged:
            return f"exports: {self.files_text()} (whole source, {mb} to download)"
        why = "forced by --exports-only" if self.reason == "forced" else f"instead of {req}"
        return f"exports: {self.files_text()} ({mb} {why})"


def text_positions(count: int) -> dict[int, int]:
    """Position of each index 0..count-1 in the text order export-data.py pages features in."""
    return {i: p for p, i in enumerate(sorted(range(count), key=str))}


def guess_batch_size(count: int, files: list[S3Object]) -> int:
    """The rows a batch of this series holds: 1024 (or 128) when the number of files fits the
    count, else an estimate from the count and the files' sizes (the last file is partial)."""
    n = len(files)
    if n <= 1:
        return max(count, 1)
    for bs in _KNOWN_BATCH_SIZES:
        if math.ceil(count * (1 - _MAX_HOLES) / bs) <= n <= math.ceil(count / bs):
            return bs
    full = [o.size for o in files[:-1] if o.size > 0]
    frac = min(1.0, files[-1].size / (sum(full) / len(full))) if full else 1.0
    return max(1, round(count / (n - 1 + frac)))


def _batches(objects: Iterable[S3Object]) -> tuple[list[S3Object], dict[str, list[tuple[int, S3Object]]]]:
    meta: list[S3Object] = []
    series: dict[str, list[tuple[int, S3Object]]] = {"features": [], "activations": [], "explanations": []}
    for o in objects:
        f = parse_key(o.key)
        if f is None:
            continue
        if f.kind == "metadata":
            meta.append(o)
        elif f.batch is not None:
            series[f.kind].append((f.batch, o))
    for v in series.values():
        v.sort(key=lambda t: t[0])
    return meta, series


def plan_export(
    objects: Iterable[S3Object],
    *,
    start: int,
    stop: int,
    count: Optional[int],
    ranged: bool,
    parts: Collection[str],
    missing: int,
    method: str = "post",
    have: Collection[str] = (),
    pending: bool = False,
    force: Optional[str] = None,
    bytes_per_request: Optional[int] = None,
) -> ExportPlan:
    """Plan one source: which files hold [start, stop) of the wanted `parts`, and exports or API.

    `count`: the source's feature count (None: estimated from the files). `missing`: features
    of the range the API would have to fetch. `have`: keys already downloaded (they cost no
    bytes). `pending`: an export file of the source failed before and must be tried again.
    `force`: "exports" (`--exports-only`). Without a range the whole source comes from its
    export, unless nothing is missing and nothing is pending.
    """
    meta, series = _batches(objects)
    plan = ExportPlan(start, stop, count, ranged, tuple(p for p in ("features", "activations", "explanations") if p in parts))
    plan.metadata = meta
    plan.listed = {k: len(v) for k, v in series.items()}
    plan.missing = max(0, missing)
    plan.requests = plan.missing if method == "get" else math.ceil(plan.missing / FEATURES_PER_POST)
    feats = [o for _, o in series["features"]]
    # Without a feature count nothing can be predicted: every file of each wanted part.
    bs = plan.batch_size = guess_batch_size(count, feats) if ranged and count else None
    for kind in plan.parts:
        files = series[kind]
        if bs is None or kind == "explanations":
            plan.needed[kind] = [o for _, o in files]
            continue
        if kind == "features":
            pos = text_positions(count or 0)
            wanted = {pos[i] // bs for i in range(start, min(stop, count or 0))}
        else:
            wanted = set(range(start // bs, (max(stop, start + 1) - 1) // bs + 1))
        plan.needed[kind] = [o for n, o in files if n in wanted]
    have_set = set(have)
    plan.bytes = sum(o.size for kind in plan.needed for o in plan.needed[kind] if o.key not in have_set)
    rate = BYTES_PER_REQUEST if bytes_per_request is None else bytes_per_request
    if force == "exports":
        plan.use, plan.reason = "exports", "forced"
    elif plan.missing == 0 and not pending:
        plan.use, plan.reason = "api", "nothing missing"
    elif not ranged:
        plan.use, plan.reason = "exports", "whole source"
    elif plan.bytes <= plan.requests * rate:
        plan.use, plan.reason = "exports", "cheaper"
    else:
        plan.use, plan.reason = "api", "cheaper"
    return plan


# --------------------------------------------------------------------------- the count


async def export_feature_count(bucket: ExportBucket, sid: SourceId, cache_root: Path) -> Optional[int]:
    """The feature count of `sid` as its export tells it, or None (no export, bucket not
    reachable, or the last feature file cannot be had).

    Feature files hold 1,024 features each but the last, so the count is 1,024 x the last file's
    batch number + the records of that last file: only that one (small) file is downloaded, into
    the export cache, where the sync's own download finds it later. Sources converted from
    dashboards were written 128 a file; the files' sizes tell the two apart.
    """
    try:
        objects = await bucket.list_source(sid)
    except NPError as exc:
        log.warning("%s: exports not reachable for a feature count (%s)", sid, str(exc).splitlines()[0][:200])
        return None
    _, series = _batches(objects)
    files = series["features"]
    if not files:
        return None
    last_batch, last = files[-1]
    report = await download(bucket, [last], Path(cache_root))
    if report.failed:
        log.warning("%s: cannot count features from the export: %s", sid, report.failed[last.key])
        return None
    try:
        records = await asyncio.to_thread(_count_records, local_path(Path(cache_root), last.key))
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        log.warning("%s: cannot count features from the export: %s: %s", sid, last.key, exc)
        return None
    per_file = _features_per_file([o for _, o in files], records)
    if per_file is None:
        log.warning("%s: the export's last feature file holds %d records, more than a batch", sid, records)
        return None
    return per_file * last_batch + records


def _count_records(path: Path) -> int:
    """JSONL records in a gzip file (a JSON record never holds a raw newline)."""
    with gzip.open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _features_per_file(files: list[S3Object], last_records: int) -> Optional[int]:
    """1,024, or 128 where the full files are ~8x smaller than 1,024 records of the last file's
    size per record would make them; None when the last file holds more than any batch."""
    sizes = [bs for bs in _KNOWN_BATCH_SIZES if bs >= last_records]
    if not sizes:
        return None
    full = [o.size for o in files[:-1] if o.size > 0]
    if len(sizes) == 1 or not full or last_records == 0 or files[-1].size <= 0:
        return FEATURES_PER_FILE
    estimate = (sum(full) / len(full)) / (files[-1].size / last_records)
    return min(sizes, key=lambda bs: abs(math.log(max(estimate, 1e-9) / bs)))


# --------------------------------------------------------------------------- the import


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
    `force="exports"` skips the cost comparison (`exports_only`). `method`, `refresh` and
    `retry_failed` are the API side's, for counting the requests it would send; `api_features`
    overrides the count of features it would fetch (`scores` refetches present ones too).
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
                       pending=unknown or bool(catalog.failed_export_kinds(db, sid) & set(parts)),
                       force=force, bytes_per_request=BYTES_PER_REQUEST)
    outcome.plan = plan
    if plan.use != "exports":
        return outcome
    before = len(catalog.present_indices(db, sid, start, stop))
    # A batch already imported whole, with the size and ETag listed now, has its rows in the
    # mirror: not downloaded again (the importer would skip it anyway), also after `cache prune`.
    done = imported_files(db, sid)
    fetch = [o for o in plan.objects() if "/batch-" not in o.key or done.get(o.key) != (o.size, o.etag)]
    outcome.download = await download(bucket, fetch, root)
    outcome.failed_files.update(outcome.download.failed)
    sizes = {o.key: o for o in objects}
    for key, reason in outcome.download.failed.items():
        if key in sizes:
            record_failed_download(db, sid, key, sizes[key].size, sizes[key].etag, reason)
    folder = root / source_prefix(sid)
    etags = {o.key: o.etag for o in objects}
    batch_files = [local_path(root, o.key) for o in fetch if "/batch-" in o.key and o.key not in outcome.download.failed]
    outcome.imported = import_source_dir(
        db, folder, sid, etags=etags, run_id=run_id, parts=parts, files=batch_files,
        index_range=(start, stop) if ranged else None,
    )
    outcome.failed_files.update(outcome.imported.failed)
    outcome.imported_features = len(catalog.present_indices(db, sid, start, stop)) - before
    if "activations" in parts:
        outcome.refetch = activation_gaps(db, sid, start, stop)
    return outcome


async def sync_export(
    plan: "SourcePlan", part: SourceSummary, *, db: Database, bucket: ExportBucket, cache: Optional[Path],
    run_id: int, options: "SyncOptions",
) -> set[int]:
    """Import what `plan`'s source's export holds of its range and parts into `part`'s summary;
    return imported features the API must fetch again whole.

    With a range, only the export files that hold it are downloaded, and only when they cost
    less than the API requests the range needs; `exports_only` forces the exports, `parts`
    leaves out the files of the other parts.
    """
    from ..paths import exports_dir

    scores = options.scores  # the API GETs every feature not fetched by GET
    outcome = await sync_source_export(
        bucket, db, plan.source, cache or exports_dir(), run_id=run_id, start=plan.start, stop=plan.stop,
        info=plan.info, ranged=options.range is not None, parts=options.parts,
        method="get" if scores else options.method, refresh=options.refresh, retry_failed=options.retry_failed,
        api_features=plan.scores_needed if scores else None,
        force="exports" if options.exports_only else None,
    )
    part.export_note = outcome.note
    part.export_failed = dict(outcome.failed_files)
    part.imported = outcome.imported_features
    return outcome.refetch


def _complete(root: Path, obj: S3Object) -> bool:
    try:
        return is_complete(local_path(root, obj.key), obj)
    except NPError:
        return False


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
    candidates = catalog.export_features_without_activations(db, sid, start, stop)
    if not candidates:
        return set()
    files = catalog.export_file_rows(db, sid)
    feature_files = [f for f in files if f[0] == "features"]
    whole = feature_files and all(f[2] == "imported" for f in feature_files) and \
        sorted(f[1] for f in feature_files) == list(range(len(feature_files)))
    stored = sum(f[3] or 0 for f in feature_files) if whole else None
    batches = {f[1]: (f[4], f[5]) if f[2] in ("imported", "partial") and f[4] is not None else None
               for f in files if f[0] == "activations"}
    spans = activation_spans(batches, stored)
    return {i for i in candidates if not any(lo <= i <= hi for lo, hi in spans)}
