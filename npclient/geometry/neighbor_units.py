"""All-pairs neighbours as units of the shared Parquet dataset (docs/dataset.md).

    <ds>/neighbors/model=M/source=S/part-<start>-<stop>.parquet    index, rank, neighbor_index, cosine
    <ds>/_np/commits/neighbors/model=M/source=S/part-....json     its marker, plus k, dtype, weights

A unit is a range of feature indices (the rows whose neighbours the file lists), so a retried
or rerun unit rewrites the same file in the same place with the same rows, whichever engine
(local or Ray) computed them: the file holds only results, never who computed them. The
columns and types are the mirror's `neighbors` table's (int32 indices, cosine float64 with
null where it is undefined), so a dataset unit and the mirror's rows compare one to one. What
the rows were computed from (k, the matmul dtype, the decoder's identity) sits in the marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ..dataset.location import Location
from ..dataset.units import (DEFAULT_LEASE_S, Unit, encode, is_committed, new_job_id, read_marker, sweep,
                             write_unit)
from ..errors import InvalidOptionError
from ..ids import SourceId

__all__ = ["TABLE", "DEFAULT_UNIT_FEATURES", "NeighborUnitsReport", "neighbor_rows", "write_neighbor_units",
           "weights_identity"]

TABLE = "neighbors"
#: Feature rows per unit: 4,096 rows x k=25 neighbours is ~100k rows, about 1 MB of Parquet.
DEFAULT_UNIT_FEATURES = 4096


@dataclass
class NeighborUnitsReport:
    """What one source's write did: the units written and skipped (already committed with the
    same bytes), the rows written, and the job whose temp names they used."""

    job_id: str
    written: list[Unit] = field(default_factory=list)
    skipped: list[Unit] = field(default_factory=list)
    rows: int = 0
    swept: list[str] = field(default_factory=list)


def neighbor_rows(values: np.ndarray, indices: np.ndarray, start: int = 0, stop: Optional[int] = None) -> pa.Table:
    """Rows `start..stop-1` of an all-pairs result (n x k values and indices, self first) as
    the `neighbors` table's columns: one row per (index, rank), cosine null where NaN."""
    stop = values.shape[0] if stop is None else stop
    vals = np.asarray(values[start:stop], dtype=np.float64)
    idx = np.asarray(indices[start:stop])
    n, k = idx.shape
    flat = vals.reshape(-1)
    return pa.table({
        "index": pa.array(np.repeat(np.arange(start, start + n, dtype=np.int32), k)),
        "rank": pa.array(np.tile(np.arange(k, dtype=np.int32), n)),
        "neighbor_index": pa.array(idx.reshape(-1).astype(np.int32)),
        "cosine": pa.array(flat, pa.float64(), mask=np.isnan(flat)),
    })


def weights_identity(record: Any) -> dict[str, Any]:
    """The attached decoder's identity (a `WeightsRecord`) as the marker records it: which
    file and tensor the neighbours come from, so a reader can tell stale units."""
    if record is None:
        return {}
    return {name: getattr(record, name) for name in
            ("sha256", "loader", "tensor_name", "release", "sae_id", "d_sae", "d_in", "dtype")}


def write_neighbor_units(loc: Location, sid: SourceId, values: Any, indices: Any, *, k: int, dtype: str,
                         weights: Optional[dict[str, Any]] = None, unit_features: int = DEFAULT_UNIT_FEATURES,
                         job_id: Optional[str] = None, rewrite: bool = False,
                         lease_s: float = DEFAULT_LEASE_S) -> NeighborUnitsReport:
    """Write `sid`'s all-pairs result as units of `unit_features` feature rows, each a whole
    file then its marker (`dataset.units.write_unit`). A unit whose marker already names exactly
    these bytes is skipped (unless `rewrite`); a sweep first clears expired temp files and this
    job's own. Returns what was written."""
    if unit_features < 1:
        raise InvalidOptionError(f"unit features must be >= 1, got {unit_features}", option="unit_features")
    values, indices = np.asarray(values), np.asarray(indices)
    job = job_id or new_job_id()
    report = NeighborUnitsReport(job, swept=sweep(loc, job_id=job))
    extra = {"k": int(k), "dtype": str(dtype), "weights": weights or {}}
    n = int(values.shape[0])
    for start in range(0, n, unit_features):
        stop = min(start + unit_features, n)
        unit = Unit(TABLE, sid.model_id, sid.source, start, stop)
        rows = neighbor_rows(values, indices, start, stop)
        data = encode(unit, rows)
        if not rewrite and is_committed(loc, unit, data) and _same_inputs(read_marker(loc, unit), extra):
            report.skipped.append(unit)
            continue
        write_unit(loc, unit, rows, job_id=job, lease_s=lease_s, extra=extra, data=data)
        report.written.append(unit)
        report.rows += rows.num_rows
    return report


def _same_inputs(marker: Optional[dict[str, Any]], extra: dict[str, Any]) -> bool:
    """Whether a committed unit was computed from the same k, dtype and decoder."""
    return marker is not None and all(marker.get(key) == value for key, value in extra.items())
