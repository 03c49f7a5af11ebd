"""Units of work: one (table, model, source, index range) becomes one file and one commit marker.

A unit's file path depends only on the unit, never on the worker or the attempt, and its rows
are sorted before writing, so a retried unit rewrites the same file in the same place: a retry
never adds a row. The file appears whole (`Location.write_whole`), then the marker
`_np/commits/<table>/model=../source=../<part>.json` (key, size, sha256, ETag on S3 when known,
rows, index range, code version) says the unit is done. A process killed between the two leaves
a whole file without a marker: the unit is simply not done, and its retry rewrites the file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import __version__, faults
from ..errors import InvalidOptionError
from .location import TEMP_NAME, Location, lease_until

__all__ = ["Unit", "partition", "TABLES", "SORT_KEYS", "encode", "is_committed", "write_unit", "commit_file", "read_marker", "markers", "sweep", "new_job_id",
           "DEFAULT_LEASE_S", "CODE_VERSION"]

TABLES = ("features", "activations", "explanations", "neighbors")
#: The tables a mirror's sources are written as and read back from; `neighbors` is a result
#: (`np-mirror geometry allpairs --dataset`), checked like the others but never imported.
MIRROR_TABLES = ("features", "activations", "explanations")
#: The order rows are written in: a retried unit writes the same rows in the same order.
SORT_KEYS = {"features": ("index",), "activations": ("index", "rank"), "explanations": ("index", "rank"),
             "neighbors": ("index", "rank")}
#: Columns the hive path carries (`model=`, `source=`), never the files: both are VARCHAR.
PARTITION_COLUMNS = ("model", "source")
CODE_VERSION = f"np-mirror {__version__}"
#: How long a job's temp file is protected from sweeps (a unit takes seconds; a lease is an hour).
DEFAULT_LEASE_S = 3600.0
COMMITS = "_np/commits"


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def _partition_value(value: str, what: str) -> str:
    if not value or "/" in value or "=" in value or value.startswith((".", "_")):
        raise InvalidOptionError(f"{what} {value!r} cannot name a hive partition (no '/', '=', or leading '.'/'_')",
                                 option=what)
    return value


def partition(model: str, source: str) -> str:
    """A source's Hive partition in every table and bookkeeping folder: `model=M/source=S`
    (the values as they are: `source=5` is the neurons set, a string)."""
    return f"model={model}/source={source}"


@dataclass(frozen=True, order=True)
class Unit:
    """Features `start` (inclusive) to `stop` (exclusive) of one source, in one table."""

    table: str
    model: str
    source: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise InvalidOptionError(f"table must be one of {', '.join(TABLES)} (got {self.table!r})", option="table")
        _partition_value(self.model, "model")
        _partition_value(self.source, "source")
        if not 0 <= self.start < self.stop:
            raise InvalidOptionError(f"a unit covers 0 <= start < stop (got {self.start}..{self.stop})", option="range")

    @property
    def part(self) -> str:
        return f"part-{self.start:010d}-{self.stop:010d}"

    @property
    def partition(self) -> str:
        return partition(self.model, self.source)

    @property
    def data_key(self) -> str:
        return f"{self.table}/{self.partition}/{self.part}.parquet"

    @property
    def marker_key(self) -> str:
        return f"{COMMITS}/{self.table}/{self.partition}/{self.part}.json"

    @classmethod
    def from_data_key(cls, key: str) -> "Unit":
        """The unit whose file is `key` (`<table>/model=M/source=S/part-A-B.parquet`)."""
        return cls.from_marker_key(f"{COMMITS}/{key[: -len('.parquet')]}.json")

    @classmethod
    def from_marker_key(cls, key: str) -> "Unit":
        """The unit a marker's key names (`_np/commits/<table>/model=M/source=S/part-A-B.json`)."""
        table, model, source, part = key[len(COMMITS) + 1:].split("/")
        _, start, stop = part[: -len(".json")].split("-")
        return cls(table, model.split("=", 1)[1], source.split("=", 1)[1], int(start), int(stop))


def _sorted(unit: Unit, rows: pa.Table) -> pa.Table:
    """The unit's rows in their one order, without the partition columns; refused if any row
    lies outside the unit (it would be a duplicate of another unit's row)."""
    drop = [c for c in (*PARTITION_COLUMNS, "model_id") if c in rows.column_names]
    rows = rows.drop_columns(drop)
    if rows.num_rows:
        index = rows.column("index")
        low, high = pc.min(index).as_py(), pc.max(index).as_py()
        if low < unit.start or high >= unit.stop:
            raise InvalidOptionError(f"{unit.data_key}: rows with index {low}..{high} lie outside "
                                     f"{unit.start}..{unit.stop - 1}", option="range")
    return rows.sort_by([(k, "ascending") for k in SORT_KEYS[unit.table]])


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def encode(unit: Unit, rows: pa.Table) -> bytes:
    """The unit's file, byte for byte: the same rows always give the same bytes."""
    return parquet_bytes(_sorted(unit, rows))


def write_unit(loc: Location, unit: Unit, rows: pa.Table, *, job_id: str, lease_s: float = DEFAULT_LEASE_S,
               extra: Optional[dict[str, Any]] = None, data: Optional[bytes] = None) -> dict[str, Any]:
    """Write one unit's file, whole, then its commit marker; returns the marker. `data` is the
    file already encoded (`encode(unit, rows)`), when the caller has it."""
    data = encode(unit, rows) if data is None else data
    fields = {"table": unit.table, "model": unit.model, "source": unit.source,
              "index_range": [unit.start, unit.stop], "rows": rows.num_rows, **(extra or {})}
    return commit_file(loc, unit.data_key, unit.marker_key, data, fields, job_id=job_id, lease_s=lease_s)


def commit_file(loc: Location, data_key: str, marker_key: str, data: bytes, fields: dict[str, Any], *,
                job_id: str, lease_s: float = DEFAULT_LEASE_S) -> dict[str, Any]:
    """`data` at `data_key`, whole, then the marker at `marker_key` (key, size, sha256, ETag,
    code version, job, time and `fields`): the one way a dataset file is committed, for a
    table's unit and for the sync's intermediate files alike (`exports_units.py`)."""
    until = lease_until(lease_s)
    loc.write_whole(data_key, data, job_id=job_id, lease_until=until)
    faults.point("dataset.before_marker")
    marker: dict[str, Any] = {
        "key": data_key,
        **{k: v for k, v in fields.items() if k in ("table", "model", "source", "index_range", "rows")},
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "etag": _etag(loc, data_key),
        "code_version": CODE_VERSION,
        "job_id": job_id,
        "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **{k: v for k, v in fields.items() if k not in ("table", "model", "source", "index_range", "rows")},
    }
    loc.write_whole(marker_key, orjson.dumps(marker, option=orjson.OPT_INDENT_2), job_id=job_id, lease_until=until)
    return marker


def is_committed(loc: Location, unit: Unit, data: bytes) -> bool:
    """True when the unit's marker names exactly these bytes and its file is in place."""
    marker = read_marker(loc, unit)
    if marker is None or marker.get("size") != len(data) or marker.get("sha256") != hashlib.sha256(data).hexdigest():
        return False
    info = loc.fs.get_file_info(loc.path(unit.data_key))
    return info.type == pafs.FileType.File and info.size == len(data)


def _etag(loc: Location, key: str) -> Optional[str]:
    """The object's ETag on S3 (pyarrow does not report one; botocore may be absent): None then."""
    if not loc.is_s3:
        return None
    try:
        import boto3  # noqa: PLC0415 - optional, only to record the ETag
    except ImportError:
        return None
    import os

    bucket, _, path = loc.path(key).partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    try:
        head = boto3.client("s3", endpoint_url=endpoint).head_object(Bucket=bucket, Key=path)
    except Exception:  # noqa: BLE001 - the ETag is a convenience; size and sha256 are the check
        return None
    return str(head.get("ETag", "")).strip('"') or None


def read_marker(loc: Location, unit: Unit) -> Optional[dict[str, Any]]:
    """The unit's commit marker, or None when the unit is not done."""
    if not loc.exists(unit.marker_key):
        return None
    return orjson.loads(loc.read(unit.marker_key))  # type: ignore[no-any-return]


def markers(loc: Location, table: Optional[str] = None) -> dict[Unit, dict[str, Any]]:
    """Every commit marker (of `table`, or of all tables), by unit."""
    out: dict[Unit, dict[str, Any]] = {}
    prefix = f"{COMMITS}/{table}" if table else COMMITS
    for info in loc.files(prefix):
        key = loc.key(info.path)
        if key.endswith(".json") and not info.base_name.startswith("."):
            out[Unit.from_marker_key(key)] = orjson.loads(loc.read(key))
    return out


def sweep(loc: Location, *, now: Optional[float] = None, job_id: Optional[str] = None) -> list[str]:
    """Remove temp files whose lease ended before `now` (default: the clock), and those of
    `job_id` (a job restarting clears its own leftovers); a live lease of another job is never
    touched. Returns the keys removed."""
    import time

    moment = time.time() if now is None else now
    removed = []
    for info in loc.files():
        found = TEMP_NAME.match(info.base_name)
        if found and (int(found["until"]) < moment or found["job"] == job_id):
            loc.fs.delete_file(info.path)
            removed.append(loc.key(info.path))
    return removed
