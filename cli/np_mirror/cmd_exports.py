"""`np-mirror import` and `np-mirror export`: bulk dumps in, Parquet out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import open_mirror
from .errors import EXIT_FAILURES
from .options import DbOpt, OutDirOpt
from .output import hint


def import_(
    path: Annotated[Optional[Path], typer.Argument(metavar="PATH", help="A dump on disk: one source folder (whatever its name: the source is read from its source.jsonl or its records), or a tree of models and sources (as `aws s3 sync --no-sign-request s3://neuronpedia-datasets/v1 DIR` leaves it).", show_default=False)] = None,
    db: DbOpt = None,
    from_dataset: Annotated[Optional[str], typer.Option("--from-dataset", metavar="DATASET", help="Copy sources (given as the arguments, MODEL/SOURCE ...) from a Parquet dataset (folder or s3://) instead.", show_default=False)] = None,
    sources: Annotated[Optional[list[str]], typer.Argument(metavar="MODEL/SOURCE", help="With --from-dataset: the sources to copy.", show_default=False)] = None,
) -> None:
    """Import Neuronpedia bulk-export batches already on disk, at disk speed.

    Each source folder is imported under the id its own files give (`source.jsonl`'s `modelId`
    and `id`, else the first record's `modelId` and `layer`), not its folder names. Batches
    already imported are skipped; a corrupt batch is reported and commits nothing.
    """
    from npclient.errors import InvalidPathError
    from npclient.exports.files import find_source_dirs

    if from_dataset is not None:
        _import_from_dataset(from_dataset, [str(path)] if path is not None else [], sources or [], db)
        return
    if path is None:
        raise InvalidPathError("give a dump folder to import, or --from-dataset DATASET and sources", option="path")
    if sources:
        raise InvalidPathError(f"import takes one dump folder (got also {' '.join(sources)})", option="path")
    if not path.exists():
        raise InvalidPathError(f"no such file or folder: {path}", option="path")
    find_source_dirs(path)  # nothing to import: exit 2 before opening the mirror
    with open_mirror(db, read_only=False) as mirror:
        reports = mirror.import_(path)
    for report in reports:
        rows = ", ".join(f"{report.rows[k]} {k}" for k in report.rows)
        hint(f"{report.source}: {sum(report.imported.values())} batches imported ({rows}), {report.skipped} already imported")
        for key, reason in report.failed.items():
            hint(f"  failed: {key}: {reason}")
    if any(r.failed for r in reports):
        raise typer.Exit(EXIT_FAILURES)


def _import_from_dataset(dataset: str, first: list[str], rest: list[str], db: Optional[Path]) -> None:
    """`import --from-dataset DATASET SRC...`: the sources' committed rows copied into the mirror."""
    from npclient import SourceId
    from npclient.dataset import import_from_dataset, open_location
    from npclient.errors import InvalidOptionError

    ids = first + rest
    if not ids:
        raise InvalidOptionError("name the sources to copy from the dataset (MODEL/SOURCE ...)", option="from_dataset")
    sids = [SourceId.parse(i) for i in ids]
    loc = open_location(dataset)
    with open_mirror(db, read_only=False) as mirror:
        written = import_from_dataset(mirror, loc, sids)
    hint(", ".join(f"{n} {t}" for t, n in written.items()) + f" copied from {loc.url}")


def export(
    parquet: OutDirOpt,
    ids: Annotated[Optional[list[str]], typer.Argument(metavar="MODEL/SOURCE", help="Sources to export (default: all).", show_default=False)] = None,
    db: DbOpt = None,
) -> None:
    """Write the mirror as a hive-partitioned Parquet dataset that DuckDB, Polars or Spark read as is.

    A source the mirror does not hold, or a folder that cannot be written, is refused (exit 2)
    before anything is written.
    """
    from npclient import SourceId

    sources = [SourceId.parse(i) for i in ids] if ids else None
    with open_mirror(db, read_only=True) as mirror:
        written = mirror.export_parquet(parquet, sources)
    hint(", ".join(f"{n} {t}" for t, n in written.items()) + f" written to {parquet}")
