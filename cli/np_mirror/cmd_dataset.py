"""`np-mirror dataset`: the shared Parquet dataset (`npclient.dataset`, docs/dataset.md)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import open_mirror
from .errors import EXIT_FAILURES
from .options import DbOpt, Format, FormatOpt
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
