"""`dataset sync`: Neuronpedia's bulk exports written straight into the shared Parquet dataset.

The driver lists the selected sources' exports, reads each source's feature count from its
`source.jsonl`, and hands out the units of work: one per export object (`exports_units.py`:
download, the importer's typed reader, commit), then one reduce per source whose objects are
all committed (`reduce.py`: the columns that span batches). `engine="local"` runs them in this
process (a thread pool: the reference); `engine="ray"` runs each as a Ray task
(`npclient.distributed.dataset_sync`), retried on worker loss. Both call the very same
functions with the same arguments, so their datasets are byte for byte the same.

A rerun skips what is committed: objects whose record names the listed size and ETag, and
reduced units whose bytes would not change. The job's own leftover temp files (a worker killed
mid-write) are swept at the start and at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import InvalidOptionError, UnknownSourceError
from ..exports.layout import exports_url as resolve_exports_url
from ..exports.layout import source_prefix
from ..ids import SourceId
from ..sync.summary import ProgressFn, SourceSummary, SyncProgress, SyncSummary
from .exports_units import DEFAULT_DOWNLOAD_SLOTS, ExportUnit, run_export_unit
from .location import open_location
from .reduce import DEFAULT_UNIT_FEATURES, reduce_source
from .units import DEFAULT_LEASE_S, new_job_id, sweep

__all__ = ["ENGINES", "DatasetSyncSummary", "SourceWork", "dataset_sync", "execute", "list_exports"]

ENGINES = ("local", "ray")
#: (what, keyword arguments) of one unit of work; `execute` runs it anywhere.
Call = tuple[str, dict[str, Any]]
#: How an engine runs calls: `run(calls, on_result)`, results (dicts) in completion order.
Runner = Callable[[list[Call], Callable[[dict[str, Any]], None]], None]


def execute(what: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one unit of work; the one entry point of both engines (results are plain dicts)."""
    if what == "unit":
        return {"what": what, **run_export_unit(**kwargs).as_dict()}
    if what == "reduce":
        return {"what": what, **reduce_source(**kwargs).as_dict()}
    raise InvalidOptionError(f"unknown unit of work {what!r}", option="what")


@dataclass
class SourceWork:
    """One source: its units and feature count (from the export's `source.jsonl`)."""

    source: SourceId
    units: list[ExportUnit]
    feature_count: Optional[int] = None


@dataclass
class DatasetSyncSummary(SyncSummary):
    """A `SyncSummary` (the local sync's, so the CLI prints both alike) plus the job's numbers."""

    job_id: str = ""
    engine: str = "local"
    units: int = 0
    skipped: int = 0
    downloaded_bytes: int = 0
    reduce_written: int = 0
    reduce_skipped: int = 0
    swept: list[str] = field(default_factory=list)
    workers: set[int] = field(default_factory=set)


async def _list(url: str, sources: Sequence[SourceId], models: Sequence[str], all_sources: bool,
                cache_root: Path) -> list[SourceWork]:
    from ..exports.download import download
    from ..exports.files import source_info
    from ..http.s3 import ExportBucket

    async with ExportBucket(url) as bucket:
        wanted = list(dict.fromkeys(sources))
        if all_sources:
            wanted = await bucket.list_sources()
        for model in models:
            found = await bucket.list_sources(model)
            if not found:
                raise UnknownSourceError(f"model {model} has no source in the exports at {url}")
            wanted += found
        out, unknown = [], []
        for sid in dict.fromkeys(wanted):
            objects = await bucket.list_source(sid)
            units = sorted(u for u in (ExportUnit.of(o) for o in objects) if u is not None)
            if not units:
                unknown.append(str(sid))
                continue
            meta = [o for o in objects if o.key == source_prefix(sid) + "source.jsonl"]
            info = None
            if meta and (await download(bucket, meta, cache_root)).ok:
                info = source_info(cache_root / source_prefix(sid))
            out.append(SourceWork(sid, units, info.d_sae if info is not None and info.d_sae else None))
    if unknown:
        raise UnknownSourceError(f"{', '.join(unknown)} {'has' if len(unknown) == 1 else 'have'} no export at {url}")
    return out


def list_exports(*, sources: Sequence[SourceId] = (), models: Sequence[str] = (), all_sources: bool = False,
                 exports_url: Optional[str] = None, cache: Optional[Path] = None) -> list[SourceWork]:
    """The selected sources and their units (exactly one of `sources`, `models`, `all_sources`)."""
    from ..paths import exports_dir

    chosen = sum((bool(sources), bool(models), bool(all_sources)))
    if chosen != 1:
        raise InvalidOptionError("name the sources to sync: sources, models or all (exactly one of them)",
                                 option="sources")
    root = Path(cache or exports_dir()).expanduser()
    return asyncio.run(_list(resolve_exports_url(exports_url), list(sources), list(models), all_sources, root))


def _local_runner(workers: int) -> Runner:
    def run(calls: list[Call], on_result: Callable[[dict[str, Any]], None]) -> None:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for future in as_completed([pool.submit(execute, what, kw) for what, kw in calls]):
                on_result(future.result())

    return run


def _runner(engine: str, address: Optional[str], workers: int) -> Runner:
    if engine == "local":
        return _local_runner(workers)
    if engine == "ray":
        from ..distributed.dataset_sync import ray_runner

        return ray_runner(address)
    raise InvalidOptionError(f"engine must be one of {', '.join(ENGINES)} (got {engine!r})", option="engine")


async def _fill_gaps(loc: Any, work: list[SourceWork], parts: dict[SourceId, SourceSummary], summary: DatasetSyncSummary,
                     *, job: str, lease_s: float, base_url: Optional[str], rate: Optional[float], concurrency: int) -> None:
    """The API for what each source's export lacks, through this process's one client (`gaps.py`)."""
    from ..http.client import NeuronpediaClient
    from ..http.pacing import DEFAULT_BUDGET, Budget
    from .gaps import fetch_gaps, find_gaps

    wanted = {w.source: find_gaps(loc, w.source.model_id, w.source.source, w.feature_count) for w in work}
    if not any(wanted.values()):
        return
    budget = Budget.per_second(rate) if rate is not None else DEFAULT_BUDGET
    async with NeuronpediaClient(base_url, budget=budget, concurrency=concurrency) as client:
        for sid, indices in wanted.items():
            if not indices:
                continue
            got = await fetch_gaps(loc, sid, indices, client, job_id=job, lease_s=lease_s)
            part = parts[sid]
            part.fetched += got.fetched
            part.skipped_failed += got.not_found
            for reason, n in got.failed.items():
                part.failed[reason] += n
        summary.requests += client.requests_sent


def dataset_sync(
    dataset: str,
    *,
    sources: Sequence[SourceId] = (),
    models: Sequence[str] = (),
    all_sources: bool = False,
    engine: str = "local",
    address: Optional[str] = None,
    exports_url: Optional[str] = None,
    cache: Optional[Path] = None,
    workers: Optional[int] = None,
    download_slots: int = DEFAULT_DOWNLOAD_SLOTS,
    unit_features: int = DEFAULT_UNIT_FEATURES,
    job_id: Optional[str] = None,
    rewrite: bool = False,
    lease_s: float = DEFAULT_LEASE_S,
    progress: Optional[ProgressFn] = None,
    runner: Optional[Runner] = None,
    api: bool = True,
    base_url: Optional[str] = None,
    rate: Optional[float] = None,
    concurrency: int = 8,
) -> DatasetSyncSummary:
    """Convert the selected sources' exports into the dataset at `dataset` (see the module).

    `runner` replaces the engine's way of running the units (e.g. `ray_runner(body=...)` with a
    task body of your own, as the node-loss test does); `engine` still names it in the summary.
    `api`: ask the API (`base_url`, at most `rate` requests a second, `concurrency` at once) for
    what the exports lack, from this process only: one client, one budget for the cluster."""
    from ..paths import exports_dir

    if engine not in ENGINES:
        raise InvalidOptionError(f"engine must be one of {', '.join(ENGINES)} (got {engine!r})", option="engine")
    for name, value in (("download_slots", download_slots), ("unit_features", unit_features)):
        if value < 1:
            raise InvalidOptionError(f"{name.replace('_', ' ')} must be >= 1 (got {value})", option=name)
    if workers is not None and workers < 1:
        raise InvalidOptionError(f"workers must be >= 1 (got {workers})", option="workers")
    started = time.monotonic()
    loc = open_location(dataset)
    url = resolve_exports_url(exports_url)
    root = Path(cache or exports_dir()).expanduser().absolute()
    runner = runner or _runner(engine, address, workers or os.cpu_count() or 1)  # no Ray, no cluster: said first
    work = list_exports(sources=sources, models=models, all_sources=all_sources, exports_url=url, cache=root)
    job = job_id or new_job_id()
    summary = DatasetSyncSummary(run_id=None, sources=[], job_id=job, engine=engine)
    summary.swept = sweep(loc, job_id=job)
    parts = {w.source: SourceSummary(w.source, wanted=w.feature_count or 0) for w in work}
    summary.sources = list(parts.values())
    done = {w.source: 0 for w in work}
    failed: dict[SourceId, int] = {w.source: 0 for w in work}
    counts = {w.source: w.feature_count for w in work}
    def on_unit(r: dict[str, Any]) -> None:
        sid = SourceId(r["model"], r["source"])
        summary.units += 1
        summary.workers.add(r["pid"])
        summary.downloaded_bytes += r["downloaded_bytes"]
        summary.skipped += int(r["skipped"])
        if r["failed"]:
            parts[sid].export_failed[r["key"]] = r["failed"]
            failed[sid] += 1
        elif r["kind"] == "features":
            done[sid] += r["rows"]
        if progress is not None:
            total = counts[sid] or done[sid]
            progress(SyncProgress(sid, done[sid], max(total, done[sid]), 0, failed[sid], None))

    common = {"dataset": dataset, "job_id": job, "lease_s": lease_s, "rewrite": rewrite}
    runner([("unit", {**common, "unit": u, "exports_url": url, "cache_root": str(root),
                      "download_slots": download_slots}) for w in work for u in w.units], on_unit)

    def on_reduce(r: dict[str, Any]) -> None:
        sid = SourceId(r["model"], r["source"])
        summary.reduce_written += len(r["written"])
        summary.reduce_skipped += len(r["skipped"])
        parts[sid].imported = r["rows"]["features"]

    complete = [w for w in work if not failed[w.source]]
    if api and complete:
        asyncio.run(_fill_gaps(loc, complete, parts, summary, job=job, lease_s=lease_s, base_url=base_url, rate=rate,
                               concurrency=concurrency))
    runner([("reduce", {**common, "model": w.source.model_id, "source": w.source.source,
                        "unit_features": unit_features, "feature_count": w.feature_count}) for w in complete],
           on_reduce)
    summary.swept += sweep(loc, job_id=job)  # a killed attempt's temp file; every task of the job is over
    for w in work:
        part = parts[w.source]
        converted = len(w.units) - failed[w.source]
        part.export_note = (f"exports: {converted} of {len(w.units)} files converted"
                            + ("" if w in complete else "; not reduced (a file failed: rerun to finish)"))
    summary.seconds = time.monotonic() - started
    return summary
