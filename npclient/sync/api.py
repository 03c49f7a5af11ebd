"""Filling a source's gaps through the API: what is missing, fetched in batches, written as it comes.

Only what the mirror lacks is asked for (a rerun resumes); a feature that stayed 404 is not
asked for again unless `retry_failed`; features stream from the client into transactions of
`batch_features` (or every `flush_s`), so an interrupt keeps every batch already fetched. The
client does the HTTP, the store (`writer`, `catalog`) the SQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Optional

from ..errors import NotFound, NPError
from ..http.client import NeuronpediaClient
from ..ids import FeatureId
from ..models import Feature
from ..store import catalog
from ..store.database import Database
from ..store.writer import FailureRow, FeatureRow, write_batch
from .summary import ProgressFn, SourceSummary, SyncProgress

if TYPE_CHECKING:
    from .plan import SourcePlan, SyncOptions

__all__ = ["PROGRESS_TICK_S", "sync_source", "failure_row"]

#: How often a sync reports progress while no feature arrives (`run_sync` passes
#: `npclient.sync.PROGRESS_TICK_S`, so that is the one to change).
PROGRESS_TICK_S = 2.0


async def sync_source(
    plan: "SourcePlan",
    part: SourceSummary,
    *,
    db: Database,
    client: NeuronpediaClient,
    options: "SyncOptions",
    run_id: int,
    progress: Optional[ProgressFn],
    refetch: Collection[int] = frozenset(),
    tick_s: float = PROGRESS_TICK_S,
) -> None:
    """Fetch what `plan`'s range lacks (and `refetch`: imported features to fetch again whole)."""
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
            await asyncio.sleep(tick_s)
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
                failures.append(failure_row(fid, result))
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


def failure_row(fid: FeatureId, error: NPError) -> FailureRow:
    """The `failures` row of a feature the API did not give: a reason, and 404s as permanent."""
    status = getattr(error, "status_code", None)
    reason = {404: "not_found", 429: "rate_limited"}.get(status or 0) or (
        f"http_{status}" if status else type(error).__name__
    )
    return FailureRow(fid, reason, status, str(error), permanent=isinstance(error, NotFound))
