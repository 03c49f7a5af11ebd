"""The map step of a sync from the bulk exports: one export object in, its rows committed out.

One unit of work per batch object of a source's export (`features/`, `activations/`,
`explanations*/batch-N.jsonl.gz`, written by Neuronpedia's
`utils/neuronpedia-utils/neuronpedia_utils/export-data.py`): download it (the exports'
resumable, size- and ETag-checked downloader, a per-node cap on downloads at once), read it
with the importer's own typed reader (`store.importer.read_export_batch`), commit its rows.

Where the rows go depends on the kind, because only activations batches hold whole features
of one numeric index range:

- activations: straight into the dataset as a unit of the `activations` table, its range the
  file's own index span (batches cover disjoint numeric ranges, so units never overlap);
- features (text order of index: a batch's indices are spread over the whole source) and
  explanations (1,024 *rows* a batch: a feature may straddle two batches, and one row may be
  in both): into an intermediate file `_np/stage/<kind>/model=M/source=S/<folder>-batch-N.parquet`
  that the reduce (`reduce.py`) turns into the tables' units.

Every path depends only on the export object, never on the worker or the attempt. The last
write is the object's record `_np/exports/model=M/source=S/<folder>/batch-N.json` (its key,
size and ETag, the rows, the files it made): a rerun skips an object whose record names the
listed size and ETag, so it neither downloads nor converts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ExportError, NPError
from ..exports.layout import local_path, parse_key
from ..http.s3 import S3Object
from .location import Location, lease_until, open_location
from .units import CODE_VERSION, DEFAULT_LEASE_S, Unit, commit_file, parquet_bytes, partition, read_marker, write_unit

__all__ = ["ExportUnit", "UnitResult", "run_export_unit", "download_slot", "STAGE", "RECORDS",
           "DEFAULT_DOWNLOAD_SLOTS", "stage_keys", "read_record"]

STAGE = "_np/stage"
RECORDS = "_np/exports"
#: Downloads at once on one node (every worker process of the node shares these slots).
DEFAULT_DOWNLOAD_SLOTS = 4
_SLOT_WAIT_S = 0.05


@dataclass(frozen=True, order=True)
class ExportUnit:
    """One batch object of one source's export, as listed (key, size, ETag)."""

    model: str
    source: str
    kind: str
    folder: str
    batch: int
    key: str
    size: int
    etag: str

    @classmethod
    def of(cls, obj: S3Object) -> Optional["ExportUnit"]:
        f = parse_key(obj.key)
        if f is None or f.batch is None:
            return None
        return cls(f.model_id, f.source, f.kind, f.folder, f.batch, obj.key, obj.size, obj.etag)

    @property
    def partition(self) -> str:
        return partition(self.model, self.source)

    @property
    def stage_key(self) -> str:
        return f"{STAGE}/{self.kind}/{self.partition}/{self.folder}-batch-{self.batch:06d}.parquet"

    @property
    def record_key(self) -> str:
        return f"{RECORDS}/{self.partition}/{self.folder}/batch-{self.batch:06d}.json"

    def s3_object(self) -> S3Object:
        return S3Object(key=self.key, size=self.size, etag=self.etag)


@dataclass
class UnitResult:
    """What one unit did: `skipped` (committed before, same object), or its rows and files."""

    key: str
    model: str
    source: str
    kind: str
    rows: int = 0
    skipped: bool = False
    failed: str = ""
    downloaded_bytes: int = 0
    files: list[str] = field(default_factory=list)
    pid: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_record(loc: Location, unit: ExportUnit) -> Optional[dict[str, Any]]:
    if not loc.exists(unit.record_key):
        return None
    return orjson.loads(loc.read(unit.record_key))  # type: ignore[no-any-return]


def _done(loc: Location, unit: ExportUnit) -> Optional[dict[str, Any]]:
    """The object's record when it names this very object and every file it made is committed."""
    record = read_record(loc, unit)
    if record is None or record.get("export_key") != unit.key or record.get("export_size") != unit.size \
            or record.get("export_etag") != unit.etag:
        return None
    for key in record.get("files", []):
        if key.startswith(STAGE):
            if not loc.exists(key):
                return None
        elif read_marker(loc, Unit.from_data_key(key)) is None or not loc.exists(key):
            return None
    return record


@contextlib.contextmanager
def download_slot(cache_root: Path, slots: int) -> Iterator[int]:
    """Hold one of `slots` download slots of this node (lock files in the node's cache folder,
    named by host): the per-node cap on downloads at once. A lock dies with its process, so a
    killed worker never keeps a slot."""
    folder = Path(cache_root) / ".np-download-slots" / socket.gethostname()
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for n in range(max(1, slots)):
            fd = os.open(folder / f"slot-{n}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield n
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(_SLOT_WAIT_S)


async def _download(exports_url: str, unit: ExportUnit, cache_root: Path) -> tuple[int, str]:
    from ..exports.download import download
    from ..http.s3 import ExportBucket

    async with ExportBucket(exports_url) as bucket:
        report = await download(bucket, [unit.s3_object()], cache_root, concurrency=1)
    return report.bytes, report.failed.get(unit.key, "")


def _index_span(rows: pa.Table) -> tuple[int, int]:
    index = rows.column("index")
    return int(pc.min(index).as_py()), int(pc.max(index).as_py())


def _check_source(unit: ExportUnit, rows: pa.Table) -> None:
    if not rows.num_rows:
        return
    strays = pc.sum(pc.or_kleene(pc.not_equal(rows.column("model_id"), unit.model),
                                 pc.not_equal(rows.column("source"), unit.source))).as_py()
    if strays:
        raise ExportError(f"{unit.key}: {strays} records belong to another source than {unit.model}/{unit.source}")


def convert(unit: ExportUnit, path: Path) -> pa.Table:
    """The object's rows, read by the importer's typed reader (the reference's very reader)."""
    from ..store.importer import read_export_batch

    rows = read_export_batch(path, unit.kind)
    _check_source(unit, rows)
    return rows


def write_rows(loc: Location, unit: ExportUnit, rows: pa.Table, *, job_id: str,
               lease_s: float = DEFAULT_LEASE_S) -> list[str]:
    """Commit the object's rows (see the module's text) and then its record; the files made."""
    files: list[str] = []
    span = _index_span(rows) if rows.num_rows else None
    if unit.kind == "activations":
        if span is not None:
            target = Unit("activations", unit.model, unit.source, span[0], span[1] + 1)
            write_unit(loc, target, rows, job_id=job_id, lease_s=lease_s, extra={"export_key": unit.key})
            files.append(target.data_key)
    else:
        rows = rows.append_column("_batch", pa.array([unit.batch] * rows.num_rows, pa.int32()))
        rows = rows.sort_by([("index", "ascending"), ("rank", "ascending")] if unit.kind == "explanations"
                            else [("index", "ascending")])
        data = parquet_bytes(rows.combine_chunks())
        commit_file(loc, unit.stage_key, unit.stage_key + ".json", data,
                    {"kind": unit.kind, "model": unit.model, "source": unit.source, "rows": rows.num_rows},
                    job_id=job_id, lease_s=lease_s)
        files.append(unit.stage_key)
    record = {"export_key": unit.key, "export_size": unit.size, "export_etag": unit.etag, "kind": unit.kind,
              "model": unit.model, "source": unit.source, "batch": unit.batch, "folder": unit.folder,
              "rows": rows.num_rows, "index_span": list(span) if span else None}
    record.update(files=files, job_id=job_id, code_version=CODE_VERSION)
    loc.write_whole(unit.record_key, orjson.dumps(record, option=orjson.OPT_INDENT_2), job_id=job_id,
                    lease_until=lease_until(lease_s))
    return files


def run_export_unit(dataset: str, unit: ExportUnit, *, exports_url: str, cache_root: str, job_id: str,
                    download_slots: int = DEFAULT_DOWNLOAD_SLOTS, lease_s: float = DEFAULT_LEASE_S,
                    rewrite: bool = False) -> UnitResult:
    """One unit, start to commit: what `--engine local` runs in-process and `--engine ray` in a
    task. Never raises for the object's own failure (a download or a corrupt file): that lands in
    `failed` and the source's other objects go on; the next run tries it again."""
    loc = open_location(dataset)
    result = UnitResult(unit.key, unit.model, unit.source, unit.kind, pid=os.getpid())
    record = None if rewrite else _done(loc, unit)
    if record is not None:
        result.skipped, result.rows = True, int(record.get("rows", 0))
        return result
    root = Path(cache_root)
    try:
        with download_slot(root, download_slots):
            result.downloaded_bytes, failed = asyncio.run(_download(exports_url, unit, root))
        if failed:
            result.failed = failed
            return result
        rows = convert(unit, local_path(root, unit.key))
    except (NPError, OSError, EOFError, duckdb.Error) as exc:  # a download, or a corrupt batch (gzip, JSON)
        text = str(exc).strip()
        result.failed = f"{unit.key}: {text.splitlines()[0][:300] if text else type(exc).__name__}"
        return result
    result.files = write_rows(loc, unit, rows, job_id=job_id, lease_s=lease_s)
    result.rows = rows.num_rows
    return result


def stage_keys(loc: Location, model: str, source: str, kind: str) -> list[str]:
    """The committed intermediate files of one source and kind (those with their marker)."""
    prefix = f"{STAGE}/{kind}/{partition(model, source)}"
    names = {loc.key(i.path) for i in loc.files(prefix)}
    return sorted(k for k in names if k.endswith(".parquet") and k + ".json" in names)
