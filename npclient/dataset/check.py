"""`status` and `verify`: what a dataset holds, judged by its commit markers against its listing.

`status` reads only listings and markers (cheap at any size). `verify` also reads every
committed file back (size, sha256, Parquet row count), checks that no two units of a source
overlap (a duplicate row would follow), compares feature rows with the source's feature count
where the dataset records one (`_np/sources/`), and writes `_np/manifest.json`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson
import pyarrow.parquet as pq

from ..errors import InvalidPathError
from .location import TEMP_NAME, Location, lease_until
from .units import CODE_VERSION, TABLES, Unit, markers, partition

__all__ = ["DatasetReport", "status", "verify", "source_records", "source_record_key", "MANIFEST"]

MANIFEST = "_np/manifest.json"
SOURCES = "_np/sources"


def source_record_key(model: str, source: str) -> str:
    return f"{SOURCES}/{partition(model, source)}.json"


def source_records(loc: Location) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, source) -> the record the writer left: at least `feature_count` (None if unknown)."""
    out = {}
    for info in loc.files(SOURCES):
        if info.base_name.endswith(".json") and not info.base_name.startswith("."):
            record = orjson.loads(loc.read(loc.key(info.path)))
            out[(record["model"], record["source"])] = record
    return out


@dataclass
class DatasetReport:
    """Per (table, model, source): units, rows and what is wrong; `problems` empty means sound."""

    url: str
    partitions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _listing(loc: Location) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
    """Data files (key -> size) under the table folders, and temp files (key, job, lease end)
    there and under `_np/`."""
    data, temps = {}, []
    for table in TABLES:
        for info in loc.files(table):
            key = loc.key(info.path)
            found = TEMP_NAME.match(info.base_name)
            if found:
                temps.append((key, found["job"], int(found["until"])))
            elif info.base_name.endswith(".parquet"):
                data[key] = info.size
    for info in loc.files("_np"):
        found = TEMP_NAME.match(info.base_name)
        if found:
            temps.append((loc.key(info.path), found["job"], int(found["until"])))
    return data, temps


def _partition_of(key: str) -> tuple[str, str, str]:
    table, model, source = key.split("/")[:3]
    return table, model.partition("=")[2], source.partition("=")[2]


def status(loc: Location, *, deep: bool = False) -> DatasetReport:
    """Markers against the listing (and, when `deep`, against the files' bytes)."""
    if not loc.is_s3 and not os.path.isdir(loc.root):
        raise InvalidPathError(f"no dataset at {loc.root} (`np-mirror dataset write` makes one)", option="dataset")
    report = DatasetReport(loc.url)
    data, temps = _listing(loc)
    committed = markers(loc)
    counts = {k: r.get("feature_count") for k, r in source_records(loc).items()}
    groups: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"units": 0, "rows": 0, "uncommitted": 0, "missing": 0, "ranges": []})
    for unit, marker in sorted(committed.items()):
        g = groups[(unit.table, unit.model, unit.source)]
        g["units"] += 1
        g["rows"] += int(marker["rows"])
        g["ranges"].append((unit.start, unit.stop))
        if unit.data_key not in data:
            g["missing"] += 1
            report.problems.append(f"{unit.data_key}: committed but the file is missing")
        elif data[unit.data_key] != marker["size"]:
            report.problems.append(f"{unit.data_key}: {data[unit.data_key]} bytes, the marker says {marker['size']}")
        elif deep:
            _check_bytes(loc, unit, marker, report)
    known = {u.data_key for u in committed}
    for key in sorted(set(data) - known):
        groups[_partition_of(key)]["uncommitted"] += 1
        report.notes.append(f"{key}: a whole file without a commit marker (its unit is not done; a retry rewrites it)")
    now = lease_until(0)
    for key, job, until in temps:
        live = until >= now
        report.notes.append(f"{key}: temp file of job {job}, lease {'running' if live else 'expired'}"
                            + ("" if live else " (`sweep` removes it)"))
    for (table, model, source), g in sorted(groups.items()):
        ranges = sorted(g.pop("ranges"))
        for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
            if b0 < a1:
                report.problems.append(f"{table}/{partition(model, source)}: units {a0}..{a1} and {b0}..{b1} "
                                       "overlap (their rows would be duplicates)")
        count = counts.get((model, source))
        row = {"table": table, "model": model, "source": source, **g, "feature_count": count}
        if table == "features" and count is not None and g["rows"] != count:
            report.notes.append(f"features/{partition(model, source)}: {g['rows']:,} of {count:,} features")
        report.partitions.append(row)
    return report


def _check_bytes(loc: Location, unit: Unit, marker: dict[str, Any], report: DatasetReport) -> None:
    data = loc.read(unit.data_key)
    if hashlib.sha256(data).hexdigest() != marker["sha256"]:
        report.problems.append(f"{unit.data_key}: its sha256 differs from the marker's")
        return
    rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    if rows != marker["rows"]:
        report.problems.append(f"{unit.data_key}: {rows} rows, the marker says {marker['rows']}")


def verify(loc: Location, *, write_manifest: bool = True, job_id: str = "verify") -> DatasetReport:
    """`status` plus every committed file read back; writes `_np/manifest.json` (also when
    problems are found: the manifest lists them)."""
    report = status(loc, deep=True)
    if write_manifest:
        manifest = {
            "url": loc.url,
            "verified_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": CODE_VERSION,
            "ok": report.ok,
            "partitions": report.partitions,
            "units": [{"key": u.data_key, "marker": u.marker_key, "index_range": [u.start, u.stop],
                       "rows": m["rows"], "size": m["size"], "sha256": m["sha256"], "etag": m.get("etag")}
                      for u, m in sorted(markers(loc).items())],
            "problems": report.problems,
            "notes": report.notes,
        }
        loc.write_whole(MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2), job_id=job_id,
                        lease_until=lease_until(600))
    return report


def feature_count(loc: Location, model: str, source: str) -> Optional[int]:
    record = source_records(loc).get((model, source))
    return None if record is None else record.get("feature_count")
