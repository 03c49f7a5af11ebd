"""Between a local mirror and a dataset: write a mirror's sources as units, read a dataset
in place (the `ds_*` views), and copy a subset of a dataset into a mirror.

Units written from a mirror carry every column the mirror holds, including those that span
export batches (`n_explanations`, `top_explanation`): the mirror already reduced them. Rows
read from a dataset come from committed units only (a file without a marker is not done).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import orjson
import pyarrow as pa
import pyarrow.dataset as pads

from ..errors import UnknownSourceError
from ..ids import SourceId
from ..store import dataset_views
from ..store.dataset_views import RAW_COLUMN
from ..store.writer import arrow_schema
from .check import source_record_key, source_records
from .location import Location, lease_until
from .units import DEFAULT_LEASE_S, MIRROR_TABLES, Unit, encode, is_committed, markers, new_job_id, sweep, write_unit

if TYPE_CHECKING:
    from ..mirror import Mirror

__all__ = ["WriteReport", "write_from_mirror", "read_rows", "arrow_datasets", "views_for", "import_from_dataset", "persist_views",
           "DEFAULT_UNIT_FEATURES"]

#: Features per unit when writing from a mirror (a few MB of activations a file).
DEFAULT_UNIT_FEATURES = 4096
#: The hive partitions, both VARCHAR: `source=5` is the neurons set "5", not the integer 5.
PARTITIONING = pads.partitioning(pa.schema([("model", pa.string()), ("source", pa.string())]), flavor="hive")


@dataclass
class WriteReport:
    job_id: str
    written: list[Unit] = field(default_factory=list)
    skipped: list[Unit] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MIRROR_TABLES, 0))
    swept: list[str] = field(default_factory=list)


def _sources(mirror: "Mirror", sources: Optional[Sequence[SourceId]]) -> list[tuple[str, str, Optional[int], int]]:
    held = dataset_views.held_sources(mirror.store.db)
    if not sources:
        return held
    by_id = {(m, s): row for row in held for m, s in [row[:2]]}
    missing = [str(s) for s in sources if (s.model_id, s.source) not in by_id]
    if missing:
        raise UnknownSourceError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in the mirror "
                                 "(`np-mirror status` lists what is)")
    return [by_id[(s.model_id, s.source)] for s in sources]


def write_from_mirror(mirror: "Mirror", loc: Location, sources: Optional[Sequence[SourceId]] = None, *,
                      unit_features: int = DEFAULT_UNIT_FEATURES, job_id: Optional[str] = None,
                      rewrite: bool = False, lease_s: float = DEFAULT_LEASE_S) -> WriteReport:
    """Write the mirror's sources (default: all) as units with commit markers.

    A unit whose marker names exactly the bytes it would write is skipped (unless `rewrite`);
    any other (never written, killed before its marker, or changed in the mirror since, e.g. a
    source synced further) is written again in the same place. Ranges in which the mirror
    holds no feature write nothing. A sweep first removes expired temp files and this job's own.
    """
    job = job_id or new_job_id()
    report = WriteReport(job, swept=sweep(loc, job_id=job))
    for model, source, count, extent in _sources(mirror, sources):
        record = {"model": model, "source": source, "feature_count": count}
        loc.write_whole(source_record_key(model, source), orjson.dumps(record), job_id=job,
                        lease_until=lease_until(lease_s))
        top = max(count or 0, extent)
        for start in range(0, top, unit_features):
            stop = min(start + unit_features, top)
            tables = {t: dataset_views.unit_rows(mirror.store.db, t, model, source, start, stop) for t in MIRROR_TABLES}
            if not tables["features"].num_rows:
                continue
            for table in MIRROR_TABLES:
                unit = Unit(table, model, source, start, stop)
                data = encode(unit, tables[table])
                if not rewrite and is_committed(loc, unit, data):
                    report.skipped.append(unit)
                    continue
                write_unit(loc, unit, tables[table], job_id=job, lease_s=lease_s, data=data)
                report.written.append(unit)
                report.rows[table] += tables[table].num_rows
    return report


def _committed_paths(loc: Location, table: str, sources: Optional[Sequence[SourceId]] = None) -> list[str]:
    wanted = None if sources is None else {(s.model_id, s.source) for s in sources}
    return [loc.path(u.data_key) for u in sorted(markers(loc, table))
            if wanted is None or (u.model, u.source) in wanted]


def arrow_datasets(loc: Location, sources: Optional[Sequence[SourceId]] = None) -> dict[str, pads.Dataset]:
    """Per table, a pyarrow dataset of the committed files, hive partitions read as strings."""
    out = {}
    for table in MIRROR_TABLES:
        paths = _committed_paths(loc, table, sources)
        if paths:
            out[table] = pads.dataset(paths, filesystem=loc.fs, format="parquet", partitioning=PARTITIONING,
                                      partition_base_dir=loc.path(table))
    return out


def read_rows(loc: Location, table: str, sources: Optional[Sequence[SourceId]] = None) -> pa.Table:
    """The committed rows of `table` (of `sources`, default all) with the mirror's columns and
    types (features also keep `raw_json`, the fetched bodies, when the files carry it)."""
    schema = arrow_schema(table)
    found = arrow_datasets(loc, sources).get(table)
    if found is None:
        return schema.empty_table()
    data = found.to_table()
    columns = {f.name: (data.column("model") if f.name == "model_id" else data.column(f.name)).cast(f.type)
               for f in schema}
    if RAW_COLUMN in data.column_names:
        schema = schema.append(pa.field(RAW_COLUMN, pa.string()))
        columns[RAW_COLUMN] = data.column(RAW_COLUMN).cast(pa.string())
    return pa.table(columns, schema=schema)


def views_for(loc: Location) -> dataset_views.DatasetViews:
    """What `Mirror(dataset=...)` registers: `read_parquet` over a local folder, pyarrow datasets on S3."""
    _require_folder(loc)
    return dataset_views.DatasetViews(datasets=arrow_datasets(loc)) if loc.is_s3 \
        else dataset_views.DatasetViews(root=loc.root)


def import_from_dataset(mirror: "Mirror", loc: Location, sources: Sequence[SourceId]) -> dict[str, int]:
    """Copy `sources` from the dataset into the mirror file (their rows replace the mirror's)."""
    records = source_records(loc)
    held = {(u.model, u.source) for u in markers(loc, "features")}
    missing = [str(s) for s in sources if (s.model_id, s.source) not in held]
    if missing:
        raise UnknownSourceError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in the dataset "
                                 f"{loc.url} (`np-mirror dataset status` lists what is)")
    tables = {t: read_rows(loc, t, sources) for t in MIRROR_TABLES}
    counts: list[tuple[Any, Optional[int]]] = [
        (s, records.get((s.model_id, s.source), {}).get("feature_count")) for s in sources]
    return dataset_views.import_rows(mirror.store.db, tables, counts)


def persist_views(mirror: "Mirror", loc: Location) -> list[str]:
    """Store the `ds_*` views of a local dataset in the mirror file, so every later command sees
    them; an S3 dataset needs its pyarrow datasets registered per connection (`Mirror(dataset=)`)."""
    from ..errors import InvalidOptionError

    if loc.is_s3:
        raise InvalidOptionError(f"{loc.url}: DuckDB reads s3:// only through its httpfs extension, which np-mirror "
                                 "never downloads; attach it in Python with Mirror(dataset=...) instead",
                                 option="dataset")
    _require_folder(loc)
    return dataset_views.persist_views(mirror.store.db, loc.root)


def _require_folder(loc: Location) -> None:
    """A local dataset must exist: views over a mistyped folder would quietly be empty."""
    import os

    from ..errors import InvalidPathError

    if not loc.is_s3 and not os.path.isdir(loc.root):
        raise InvalidPathError(f"no dataset at {loc.root} (`np-mirror dataset write` makes one)", option="dataset")
