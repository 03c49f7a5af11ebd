"""Fill the mirror from the API: resumable, batched, and polite.

The plan comes first (which sources, how many features each, what is already stored), so
a bad target fails before any feature request. Then features stream from the client into
batched transactions; a rerun asks only for what is missing, and a feature that stayed
404 is not asked for again unless `retry_failed`. No SQL or HTTP lives here: the store and
the client do that.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Union


from .client import NeuronpediaClient
from .errors import APIStatusError, NotFound, NPError, UnknownSourceError
from .ids import FeatureId, SourceId, SourceSetId
from .metacache import MetaCache
from .models import Feature, ModelInfo, SourceInfo, SourceSetInfo
from .store import catalog, runs
from .store.database import Database
from .store.writer import PARTS, FailureRow, FeatureRow, write_batch

__all__ = ["SyncOptions", "SourcePlan", "SourceSummary", "SyncSummary", "SyncProgress", "plan_sync", "run_sync", "UnknownSourceError"]

if TYPE_CHECKING:
    from .exports.s3 import ExportBucket

Target = Union[SourceId, SourceSetId]


@dataclass(frozen=True)
class SyncOptions:
    """What to fetch and how; the repr goes into the run's log row."""

    range: Optional[tuple[int, int]] = None
    parts: tuple[str, ...] = PARTS
    max_acts: Optional[int] = None
    method: Literal["post", "get"] = "post"
    refresh: bool = False
    retry_failed: bool = False
    batch_features: int = 200
    flush_s: float = 2.0
    exports_only: bool = False
    #: fetch again by GET every feature in range whose explanations lack scores (imported from an
    #: export, or fetched by POST): one request per feature, printed before it starts
    scores: bool = False

    def __post_init__(self) -> None:
        if self.range is not None:
            start, stop = self.range
            if start < 0 or stop <= start:
                raise ValueError(f"--range must be a:b with 0 <= a < b, got {start}:{stop}")
        unknown = set(self.parts) - set(PARTS)
        if unknown or "features" not in self.parts:
            raise ValueError(f"--parts takes a subset of {','.join(PARTS)} that includes features")
        if self.max_acts is not None and self.max_acts < 1:
            raise ValueError("--max-acts must be >= 1")
        if self.scores and self.exports_only:
            raise ValueError("--scores needs the API (one GET per feature); it cannot go with --exports-only")


@dataclass(frozen=True)
class SourcePlan:
    source: SourceId
    start: int
    stop: int
    count_origin: str
    info: Optional[SourceInfo]
    #: with `scores`: features in range still lacking scores (one GET each), else None
    scores_needed: Optional[int] = None
    #: the model row the source-set listing carried (stored in the `models` table)
    model: Optional[ModelInfo] = None


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
#: How often a sync reports progress while no feature arrives.
PROGRESS_TICK_S = 2.0


def parse_range(text: str) -> tuple[int, int]:
    """`a:b`, half-open; `:b` means `0:b`."""
    try:
        left, right = text.split(":")
        start = int(left) if left.strip() else 0
        stop = int(right)
    except ValueError:
        raise ValueError(f"--range must look like a:b (half-open), got {text!r}") from None
    if start < 0 or stop <= start:
        raise ValueError(f"--range must be a:b with 0 <= a < b, got {text!r}")
    return start, stop


async def _source_set(client: NeuronpediaClient, meta: MetaCache, sid: SourceSetId, refresh: bool) -> Optional[SourceSetInfo]:
    async def fetch() -> Optional[dict]:
        found = await client.get_source_set(sid.model_id, sid.set_name)
        return found.model_dump(by_alias=True) if found is not None else None

    body = await meta.get_or_fetch(f"{client.base_url}|source-set|{sid}", fetch, refresh=refresh)
    return SourceSetInfo.model_validate(body) if body is not None else None


async def plan_sync(
    targets: Sequence[Target],
    *,
    db: Database,
    client: NeuronpediaClient,
    options: SyncOptions = SyncOptions(),
    meta: Optional[MetaCache] = None,
) -> list[SourcePlan]:
    """Resolve targets to sources with their index ranges; raise before any feature request."""
    meta = meta or MetaCache(enabled=False)
    plans: list[SourcePlan] = []
    seen: set[SourceId] = set()
    for target in targets:
        set_id = target if isinstance(target, SourceSetId) else target.set_id
        stored = catalog.stored_feature_count(db, target) if isinstance(target, SourceId) else None
        sset: Optional[SourceSetInfo] = None
        # A source whose size the mirror already knows needs no request at all.
        if not (isinstance(target, SourceId) and stored and not options.refresh):
            try:
                sset = await _source_set(client, meta, set_id, options.refresh)
            except APIStatusError as exc:
                if not (isinstance(target, SourceId) and options.range):
                    raise UnknownSourceError(f"cannot list {set_id} on {client.base_url}: {exc}") from None
            else:
                if sset is None:
                    raise UnknownSourceError(f"{set_id} is not a source set on {client.base_url}")
        infos = {s.id: s for s in (sset.sources if sset else [])}
        if isinstance(target, SourceSetId):
            if not infos:
                raise UnknownSourceError(f"{target} has no sources on {client.base_url}")
            members = [SourceId(target.model_id, s) for s in sorted(infos, key=_layer_order)]
        else:
            if sset is not None and target.source not in infos:
                raise UnknownSourceError(
                    f"{target} is not a source of {set_id} (it has: {', '.join(sorted(infos, key=_layer_order)[:8])})"
                )
            members = [target]
        for sid in members:
            if sid in seen:
                continue
            seen.add(sid)
            info = infos.get(sid.source)
            count, origin = (info.d_sae, "saelensConfig.d_sae") if info and info.d_sae else (None, "")
            if count is None:
                count = catalog.stored_feature_count(db, sid)
                origin = "mirror" if count else ""
            if options.range is not None:
                start, stop = options.range
                if count is not None:
                    stop = min(stop, count)
                if count is None:
                    origin = "--range"
            elif count:
                start, stop = 0, count
            else:
                raise UnknownSourceError(f"the feature count of {sid} is unknown here; pass --range a:b")
            needed = None
            if options.scores:
                scored = catalog.origin_indices(db, sid, start, stop, "get")
                dead = set() if options.retry_failed else catalog.permanent_failures(db, sid, start, stop)
                needed = (stop - start) - len(scored | dead)
            plans.append(SourcePlan(sid, start, stop, origin, info, needed, sset.model if sset else None))
    return plans


def _layer_order(source: str) -> tuple[int, str]:
    head = source.split("-", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, source)


async def run_sync(
    targets: Sequence[Target],
    *,
    db: Database,
    client: NeuronpediaClient,
    options: SyncOptions = SyncOptions(),
    meta: Optional[MetaCache] = None,
    progress: Optional[ProgressFn] = None,
    exports: Optional["ExportBucket"] = None,
    exports_cache: Optional[Path] = None,
    on_plan: Optional[Callable[[list[SourcePlan]], None]] = None,
) -> SyncSummary:
    """Sync `targets` into `db`; Ctrl-C keeps every batch committed so far and ends the run cleanly.

    With `exports` (a bucket), each source's bulk export is downloaded and imported first and
    the API only fills the gaps; without it, the API does everything. `on_plan` sees the plan
    before any feature request (the CLI prints what `scores` will cost there).
    """
    plans = await plan_sync(targets, db=db, client=client, options=options, meta=meta)
    if on_plan is not None:
        on_plan(plans)
    started = time.monotonic()
    requests_before = client.requests_sent
    models = {p.model.id: p.model for p in plans if p.model is not None}
    if models:
        catalog.save_models(db, list(models.values()))
    for plan in plans:
        catalog.save_source(
            db, plan.source, plan.info,
            plan.info.d_sae if plan.info and plan.info.d_sae else None,
            "saelensConfig.d_sae" if plan.info and plan.info.d_sae else None,
        )
    run_id = _start_run(db, targets, options)
    summary = SyncSummary(run_id=run_id, sources=[])
    try:
        for plan in plans:
            part = SourceSummary(plan.source)
            summary.sources.append(part)
            refetch: set[int] = set()
            if exports is not None:
                # "already present" means present before this run, not what its export just imported
                part.present_before = len(catalog.present_indices(db, plan.source, plan.start, plan.stop))
                refetch = await _sync_export(plan, part, db=db, bucket=exports, cache=exports_cache, run_id=run_id,
                                             options=options)
            if not options.exports_only:
                await _sync_source(plan, part, db=db, client=client, options=options, run_id=run_id,
                                   progress=progress, refetch=refetch)
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary.interrupted = True
        raise
    finally:
        summary.requests = client.requests_sent - requests_before
        summary.seconds = time.monotonic() - started
        _finish_run(db, summary)
    return summary


async def _sync_source(
    plan: SourcePlan,
    part: SourceSummary,
    *,
    db: Database,
    client: NeuronpediaClient,
    options: SyncOptions,
    run_id: int,
    progress: Optional[ProgressFn],
    refetch: set[int] = frozenset(),  # type: ignore[assignment]
) -> None:
    sid = plan.source
    wanted = range(plan.start, plan.stop)
    part.wanted = len(wanted)
    if options.refresh:
        present: set[int] = set()
    elif options.scores:  # only features fetched by GET carry scores and Neuronpedia's order
        present = catalog.origin_indices(db, sid, plan.start, plan.stop, "get")
    else:
        present = catalog.present_indices(db, sid, plan.start, plan.stop) - set(refetch)
    dead = set() if options.retry_failed else catalog.permanent_failures(db, sid, plan.start, plan.stop)
    part.already_present = len(present) if part.present_before is None else min(len(present), part.present_before)
    part.skipped_failed = len(dead - present)
    todo = [FeatureId(sid.model_id, sid.source, i) for i in wanted if i not in present and i not in dead]
    done = len(wanted) - len(todo)

    def report() -> None:
        if progress is not None:
            waiting = client.waiting()
            progress(SyncProgress(
                sid, done, len(wanted), part.fetched, part.failed_total,
                client.pacer.remaining if client.pacer else None,
                client.pacer.budget.window_s if client.pacer else None,
                waiting[0] if waiting else None, waiting[1] if waiting else "",
            ))

    report()
    if not todo:
        return

    async def tick() -> None:
        """Report while nothing arrives too (a spent budget can hold requests for minutes)."""
        while True:
            await asyncio.sleep(PROGRESS_TICK_S)
            report()

    ticker = asyncio.create_task(tick()) if progress is not None else None
    rows: list[FeatureRow] = []
    failures: list[FailureRow] = []
    last_flush = time.monotonic()
    method = "get" if options.scores else options.method
    origin = "get" if method == "get" else "post"

    def flush() -> None:
        nonlocal rows, failures, last_flush
        if rows or failures:
            write_batch(db, rows, failures, parts=options.parts, run_id=run_id)
            part.fetched += len(rows)
            for f in failures:
                part.failed[f.reason] += 1
        rows, failures = [], []
        last_flush = time.monotonic()

    try:
        async for fid, result in client.iter_features(todo, method=method, max_acts=options.max_acts):
            if isinstance(result, Feature):
                # POST answers carry no relations; GET answers do. Either way the origin says which.
                rows.append(FeatureRow(result, "get" if result.model is not None else origin))
            else:
                failures.append(_failure(fid, result))
            done += 1
            if len(rows) + len(failures) >= options.batch_features or time.monotonic() - last_flush >= options.flush_s:
                flush()
                report()
    finally:
        if ticker is not None:
            ticker.cancel()
        # What was fetched before an interrupt is already whole: keep it.
        flush()
        report()


async def _sync_export(
    plan: SourcePlan, part: SourceSummary, *, db: Database, bucket: "ExportBucket", cache: Optional[Path], run_id: int,
    options: Optional[SyncOptions] = None,
) -> set[int]:
    """Import what the source's export holds of the plan's range and parts; return imported
    features the API must fetch again whole.

    With `--range`, only the export files that hold the range are downloaded, and only when
    they cost less than the API requests the range needs (`exports/plan.py`); `--exports-only`
    forces the exports, `--parts` leaves out the files of the other parts.
    """
    from .exports.source_sync import sync_source_export
    from .paths import exports_dir

    opts = options or SyncOptions()
    scores = getattr(opts, "scores", False)  # --scores: the API GETs every feature not fetched by GET
    outcome = await sync_source_export(
        bucket, db, plan.source, cache or exports_dir(), run_id=run_id, start=plan.start, stop=plan.stop,
        info=plan.info, ranged=opts.range is not None, parts=opts.parts,
        method="get" if scores else opts.method, refresh=opts.refresh, retry_failed=opts.retry_failed,
        api_features=getattr(plan, "scores_needed", None) if scores else None,
        force="exports" if opts.exports_only else None,
    )
    part.export_note = outcome.note
    part.export_failed = dict(outcome.failed_files)
    part.imported = outcome.imported_features
    return outcome.refetch


def _failure(fid: FeatureId, error: NPError) -> FailureRow:
    status = getattr(error, "status_code", None)
    reason = {404: "not_found", 429: "rate_limited"}.get(status or 0) or (
        f"http_{status}" if status else type(error).__name__
    )
    return FailureRow(fid, reason, status, str(error), permanent=isinstance(error, NotFound))


def _start_run(db: Database, targets: Sequence[Target], options: SyncOptions) -> int:
    from dataclasses import asdict

    return runs.start_run(db, " ".join(str(t) for t in targets), asdict(options))


def _finish_run(db: Database, summary: SyncSummary) -> None:
    status = "interrupted" if summary.interrupted else ("failures" if summary.failed else "ok")
    runs.finish_run(db, summary.run_id, status=status, fetched=summary.fetched,
                    present=sum(s.already_present for s in summary.sources), failed=summary.failed,
                    requests=summary.requests)
