"""Fill the mirror: resumable, batched, polite; exports first, then the API for the gaps.

    plan.py       targets -> sources and index ranges (`plan_sync`), options (`SyncOptions`)
    exports.py    what a source's bulk export gives: the range/cost plan, download, import
    api.py        what is still missing, through the API, in batched transactions
    summary.py    what a run reports (`SyncSummary`, `SourceSummary`, `SyncProgress`)

The plan comes first, so a bad target fails before any feature request. No SQL and no HTTP
live here: the store (`catalog`, `writer`, `importer`, `runs`) and the clients
(`npclient.http`) do that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import UnknownSourceError
from ..http.client import NeuronpediaClient
from ..metacache import MetaCache
from ..store import catalog, runs
from ..store.database import Database
from .api import PROGRESS_TICK_S, sync_source
from .exports import sync_export
from .plan import FROM_CONFIG, FROM_EXPORT, SourcePlan, SyncOptions, Target, parse_range, plan_sync  # noqa: F401
from .summary import ProgressFn, SourceSummary, SyncProgress, SyncSummary

if TYPE_CHECKING:
    from ..http.s3 import ExportBucket

__all__ = ["SyncOptions", "SourcePlan", "SourceSummary", "SyncSummary", "SyncProgress", "plan_sync", "run_sync",
           "UnknownSourceError"]
# Also importable from here, as before this was a package: Target, ProgressFn, parse_range and
# PROGRESS_TICK_S (which `run_sync` reads here on each call: set it here to change the tick).


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
    the API only fills the gaps (and a source whose feature count nothing else knows is counted
    from its export listing); without it, the API does everything. `on_plan` sees the plan
    before any feature request (the CLI prints what `scores` will cost there).
    """
    plans = await plan_sync(targets, db=db, client=client, options=options, meta=meta,
                            exports=exports, exports_cache=exports_cache)
    if on_plan is not None:
        on_plan(plans)
    started = time.monotonic()
    requests_before = client.requests_sent
    models = {p.model.id: p.model for p in plans if p.model is not None}
    if models:
        catalog.save_models(db, list(models.values()))
    for plan in plans:
        # a count that a source set's config or its export listing gave is kept (a range is not a count)
        known = plan.count_origin in (FROM_CONFIG, FROM_EXPORT) and plan.feature_count
        catalog.save_source(db, plan.source, plan.info, plan.feature_count if known else None,
                            plan.count_origin if known else None)
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
                refetch = await sync_export(plan, part, db=db, bucket=exports, cache=exports_cache, run_id=run_id,
                                            options=options)
            if not options.exports_only:
                await sync_source(plan, part, db=db, client=client, options=options, run_id=run_id,
                                  progress=progress, refetch=refetch, tick_s=PROGRESS_TICK_S)
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary.interrupted = True
        raise
    finally:
        summary.requests = client.requests_sent - requests_before
        summary.seconds = time.monotonic() - started
        _finish_run(db, summary)
    return summary


def _start_run(db: Database, targets: Sequence[Target], options: SyncOptions) -> int:
    runs.mark_interrupted(db)  # rows left `running` by killed syncs of this host (live ones stay)
    return runs.start_run(db, " ".join(str(t) for t in targets), asdict(options))


def _finish_run(db: Database, summary: SyncSummary) -> None:
    status = "interrupted" if summary.interrupted else ("failures" if summary.failed else "ok")
    runs.finish_run(db, summary.run_id, status=status, fetched=summary.fetched,
                    present=sum(s.already_present for s in summary.sources), failed=summary.failed,
                    requests=summary.requests)
