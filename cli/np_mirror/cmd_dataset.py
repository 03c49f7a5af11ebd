"""`np-mirror dataset`: the shared Parquet dataset (`npclient.dataset`, docs/dataset.md)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import check_client_options, open_mirror
from .errors import EXIT_FAILURES
from .options import BaseUrlOpt, ConcurrencyOpt, DbOpt, Format, FormatOpt, RateOpt
from .output import hint, rows_out

dataset_app = typer.Typer(help="The shared, hive-partitioned Parquet dataset: write, check, read in place.",
                          no_args_is_help=True, add_completion=False)

DatasetArg = Annotated[str, typer.Argument(metavar="DATASET", help="A dataset folder, or s3://BUCKET/PREFIX.",
                                           show_default=False)]
COLUMNS = ["table", "model", "source", "units", "rows", "feature_count", "uncommitted", "missing"]


def _report(report, fmt: Format, what: str) -> None:  # noqa: ANN001 - a DatasetReport
    rows_out(report.partitions, fmt, COLUMNS)
    for note in report.notes:
        hint(f"  note: {note}")
    for problem in report.problems:
        hint(f"  problem: {problem}")
    if report.problems:
        hint(f"np-mirror: {report.url}: {len(report.problems)} problem(s) found by {what}")
        raise typer.Exit(EXIT_FAILURES)


@dataset_app.command("status")
def status(dataset: DatasetArg, fmt: FormatOpt = Format.table) -> None:
    """Per table and source: committed units and rows, files without a marker, markers without a file.

    Reads listings and markers only. Exit 1 when a committed file is missing or its size differs.
    """
    from npclient.dataset import open_location
    from npclient.dataset import status as dataset_status

    _report(dataset_status(open_location(dataset)), fmt, "status")


@dataset_app.command("verify")
def verify(dataset: DatasetArg, fmt: FormatOpt = Format.table) -> None:
    """Status, plus every committed file read back (size, sha256, rows) and no overlapping units;
    writes DATASET/_np/manifest.json. Exit 1 on any problem."""
    from npclient.dataset import open_location
    from npclient.dataset import verify as dataset_verify

    report = dataset_verify(open_location(dataset))
    _report(report, fmt, "verify")
    hint(f"verified: manifest written to {dataset.rstrip('/')}/_np/manifest.json")


@dataset_app.command("write")
def write(
    dataset: DatasetArg,
    ids: Annotated[Optional[list[str]], typer.Argument(metavar="MODEL/SOURCE", help="Sources to write (default: all the mirror holds).", show_default=False)] = None,
    unit_features: Annotated[int, typer.Option("--unit-features", min=1, help="Features per unit of work (one file per table each).")] = 4096,
    job_id: Annotated[Optional[str], typer.Option("--job-id", help="This job's id (temp names carry it; default: random).", show_default=False)] = None,
    rewrite: Annotated[bool, typer.Option("--rewrite", help="Write committed units again too.")] = False,
    db: DbOpt = None,
) -> None:
    """Write the mirror's sources into DATASET as units with commit markers (no cluster needed).

    Units already committed with the same rows are skipped, so a rerun after a crash finishes
    the job and a rerun after a further sync writes what changed; each unit's file is replaced
    whole, in the same place, so a retry never duplicates a row.
    """
    from npclient import SourceId
    from npclient.dataset import open_location, write_from_mirror

    sources = [SourceId.parse(i) for i in ids] if ids else None
    loc = open_location(dataset)
    with open_mirror(db, read_only=True) as mirror:
        report = write_from_mirror(mirror, loc, sources, unit_features=unit_features, job_id=job_id, rewrite=rewrite)
    rows = ", ".join(f"{n} {t}" for t, n in report.rows.items())
    hint(f"job {report.job_id}: {len(report.written)} units written ({rows}), {len(report.skipped)} already committed"
         + (f", {len(report.swept)} stale temp files removed" if report.swept else ""))


@dataset_app.command("attach")
def attach(dataset: DatasetArg, db: DbOpt = None) -> None:
    """Create views ds_features, ds_activations, ds_explanations in the mirror over a local
    DATASET, read in place (no copy): `np-mirror sql "SELECT count(*) FROM ds_features"`."""
    from npclient.dataset import open_location
    from npclient.dataset.mirror_io import persist_views

    loc = open_location(dataset)
    with open_mirror(db, read_only=False) as mirror:
        names = persist_views(mirror, loc)
    hint(f"views {', '.join(names)} read {loc.url}")


@dataset_app.command("sweep")
def sweep(dataset: DatasetArg) -> None:
    """Remove temp files whose job's lease has ended (never a live job's file in progress)."""
    from npclient.dataset import open_location
    from npclient.dataset import sweep as dataset_sweep

    removed = dataset_sweep(open_location(dataset))
    hint(f"{len(removed)} stale temp files removed")


class SyncEngine(str, enum.Enum):
    """Where a dataset sync runs its units of work: this process, or a Ray cluster."""

    local = "local"
    ray = "ray"


@dataset_app.command("sync")
def sync(
    dataset: DatasetArg,
    ids: Annotated[Optional[list[str]], typer.Argument(metavar="MODEL/SOURCE", help="Sources whose exports to convert.", show_default=False)] = None,
    all_sources: Annotated[bool, typer.Option("--all", help="Every source in the exports bucket.")] = False,
    models: Annotated[Optional[str], typer.Option("--models", help="Every source of these models (comma-separated).", show_default=False)] = None,
    engine: Annotated[SyncEngine, typer.Option("--engine", help="local: this process (the reference); ray: one Ray task per export file.")] = SyncEngine.local,
    address: Annotated[Optional[str], typer.Option("--address", help="The Ray cluster: auto (the one running on this machine), host:port, or none for a new local one.", show_default=False)] = None,
    exports_url: Annotated[Optional[str], typer.Option("--exports-url", help="Bucket root of the exports [default: $NP_MIRROR_EXPORTS_URL or Neuronpedia's public bucket].", show_default=False)] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Where each node keeps downloaded export files [default: the export cache].", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Local engine: units at once [default: the CPU count].", show_default=False)] = None,
    download_slots: Annotated[int, typer.Option("--download-slots", min=1, help="Downloads at once per node.")] = 4,
    unit_features: Annotated[int, typer.Option("--unit-features", min=1, help="Features per unit of the reduced features/explanations files.")] = 4096,
    job_id: Annotated[Optional[str], typer.Option("--job-id", help="This job's id (temp names carry it; default: random).", show_default=False)] = None,
    rewrite: Annotated[bool, typer.Option("--rewrite", help="Convert and write committed units again too.")] = False,
    exports_only: Annotated[bool, typer.Option("--exports-only", help="No API requests: what the exports lack stays missing.")] = False,
    base_url: BaseUrlOpt = None,
    rate: RateOpt = None,
    concurrency: ConcurrencyOpt = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Convert Neuronpedia's bulk exports straight into DATASET (no mirror file needed).

    One unit of work per export file (download, verify, convert with the importer's reader,
    write, commit), then one reduce per source for the columns that span export batches
    (n_explanations, top_explanation). What the exports lack (features in no batch, activations
    export-data.py never wrote) comes from the API, asked by this process only: the whole
    cluster shares its one budget (Neuronpedia allows 25,000 requests an hour per IP). A rerun
    skips committed units, so after a crash it finishes the job. Exit 1 if an export file or a
    feature failed (rerun to retry it).
    """
    from npclient import SourceId
    from npclient.dataset.sync import dataset_sync

    from .progress import SyncDisplay

    check_client_options(rate, concurrency)
    sources = [SourceId.parse(i) for i in ids or []]
    model_list = [m.strip() for m in (models or "").split(",") if m.strip()]
    display = SyncDisplay(enabled=not quiet)
    with display:
        summary = dataset_sync(dataset, sources=sources, models=model_list, all_sources=all_sources,
                               engine=engine.value, address=address, exports_url=exports_url, cache=cache,
                               workers=workers, download_slots=download_slots, unit_features=unit_features,
                               job_id=job_id, rewrite=rewrite, progress=display.update, api=not exports_only,
                               base_url=base_url, rate=rate, concurrency=concurrency)
    display.summary(summary)
    hint(f"job {summary.job_id} ({summary.engine}): {summary.units} export files ({summary.skipped} already committed, "
         f"{summary.downloaded_bytes:,} bytes downloaded), reduce: {summary.reduce_written} units written, "
         f"{summary.reduce_skipped} unchanged" + (f", {len(summary.swept)} stale temp files removed" if summary.swept else ""))
    raise typer.Exit(summary.exit_code)
