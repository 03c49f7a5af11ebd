"""Geometry results as mirror tables, so SQL joins them with explanations.

Schema v2 declares these tables (store/schema.py); each save replaces the rows of its
(source, kind) in one transaction, so a rerun never duplicates.

    neighbors     (model_id, source, index, rank, neighbor_index, cosine)       all-pairs top-k, self first
    matches       (model_id, source, index, against, rank, match_index, cosine) best matches in another source
    coordinates   (model_id, source, index, method, x, y)                       pca / umap coordinates
    clusters      (model_id, source, index, run, label, leaf_position)
    head_features (model_id, source, index, matrix, colspace_fraction, invisible, suppression, suppressed)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..ids import SourceId
from .database import Database


def _replace(db: Database, table: str, keys: dict[str, Any], rows: pa.Table) -> int:
    """Replace the rows of `table` whose `keys` columns equal the given values by `keys` + `rows`.

    The key columns (model, source, run...) are the same on every row: they are bound as
    parameters of the INSERT, not built as Arrow string arrays of n copies (about 0.1 s of a
    0.3 s save for an all-pairs table of 614,400 rows)."""
    names = list(keys)
    where = " AND ".join(f'"{c}" = ?' for c in names)
    consts = ", ".join(f'?::VARCHAR AS "{c}"' for c in names)
    params = [keys[c] for c in names]
    with db.transaction() as cur:
        cur.execute(f"DELETE FROM {table} WHERE {where}", params)
        cur.register("_np_rows", rows)
        try:
            cur.execute(f"INSERT INTO {table} BY NAME SELECT {consts}, * FROM _np_rows", params)
        finally:
            cur.unregister("_np_rows")
    return rows.num_rows


_NUMPY = {pa.int32(): np.int32, pa.float64(): np.float64}


def _arrow(values: Any, type_: pa.DataType, null: Optional[np.ndarray] = None) -> pa.Array:
    """A numpy column as an Arrow array (int32, float64 or bool), NULL where `null` is True.

    Built from its buffers, not with `pa.array`: pyarrow's first `pa.array` call in a process
    imports pandas for its type checks (about 0.3 s), which a command that only writes a table
    need not pay."""
    if type_ == pa.bool_():
        arr = np.asarray(values, dtype=bool)
        data = pa.py_buffer(np.packbits(arr, bitorder="little"))
    else:
        arr = np.ascontiguousarray(values, dtype=_NUMPY[type_])
        data = pa.py_buffer(arr)
    validity, nulls = None, 0
    if null is not None and bool(null.any()):
        validity, nulls = pa.py_buffer(np.packbits(~null, bitorder="little")), int(null.sum())
    return pa.Array.from_buffers(type_, len(arr), [validity, data], null_count=nulls)


def _float(values: Any) -> pa.Array:
    """float64, NULL for NaN (the tables' convention for an undefined cosine or coordinate)."""
    arr = np.asarray(values, dtype=np.float64)
    return _arrow(arr, pa.float64(), np.isnan(arr))


def _keys(sid: SourceId, **more: str) -> dict[str, Any]:
    return {"model_id": sid.model_id, "source": sid.source, **more}


def _index(index: np.ndarray) -> dict[str, Any]:
    return {"index": _arrow(index, pa.int32())}


def _ranked(values: np.ndarray, indices: np.ndarray, rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, ...]:
    n, k = indices.shape
    row_index = np.repeat(rows if rows is not None else np.arange(n, dtype=np.int32), k)
    rank = np.tile(np.arange(k, dtype=np.int32), n)
    vals = values.reshape(-1).astype(np.float64)
    idx = indices.reshape(-1)
    return row_index, rank, idx, vals


def _ranked_table(values: np.ndarray, indices: np.ndarray, column: str) -> pa.Table:
    row_index, rank, idx, vals = _ranked(np.asarray(values), np.asarray(indices))
    return pa.table({**_index(row_index), "rank": _arrow(rank, pa.int32()), column: _arrow(idx, pa.int32()),
                     "cosine": _float(vals)})


def save_neighbors(db: Database, sid: SourceId, values: np.ndarray, indices: np.ndarray) -> int:
    return _replace(db, "neighbors", _keys(sid), _ranked_table(values, indices, "neighbor_index"))


def save_matches(db: Database, sid: SourceId, against: SourceId, values: np.ndarray, indices: np.ndarray) -> int:
    return _replace(db, "matches", _keys(sid, against=str(against)), _ranked_table(values, indices, "match_index"))


def save_coordinates(db: Database, sid: SourceId, method: str, features: np.ndarray, coords: np.ndarray) -> int:
    coords = np.asarray(coords, dtype=np.float64)
    table = pa.table({**_index(features), "x": _float(coords[:, 0]), "y": _float(coords[:, 1])})
    return _replace(db, "coordinates", _keys(sid, method=method), table)


def save_clusters(db: Database, sid: SourceId, run: str, features: np.ndarray, labels: np.ndarray,
                  leaf_order: Sequence[int]) -> int:
    position = np.empty(len(features), dtype=np.int32)
    position[np.asarray(leaf_order, dtype=np.int64)] = np.arange(len(features), dtype=np.int32)
    table = pa.table({**_index(features), "label": _arrow(labels, pa.int32()),
                      "leaf_position": _arrow(position, pa.int32())})
    return _replace(db, "clusters", _keys(sid, run=run), table)


def save_head_features(db: Database, sid: SourceId, matrix: str, colspace: np.ndarray, invisible: np.ndarray,
                       suppression: Optional[np.ndarray] = None, suppressed: Optional[np.ndarray] = None) -> int:
    n = len(colspace)
    sup = np.full(n, np.nan) if suppression is None else suppression
    table = pa.table({
        **_index(np.arange(n)),
        "colspace_fraction": _float(colspace),
        "invisible": _arrow(invisible, pa.bool_()),
        "suppression": _float(sup),
        "suppressed": _arrow(np.zeros(n, dtype=bool) if suppressed is None else suppressed, pa.bool_()),
    })
    return _replace(db, "head_features", _keys(sid, matrix=matrix), table)


def computed_neighbors(db: Database, sid: SourceId, index: int, k: Optional[int] = None) -> pa.Table:
    """A feature's row of the all-pairs table (`rank`, `index` of the neighbour, `cosine`), self
    first, its first `k` entries if given; empty when none was computed."""
    with db.connect() as cur:
        return cur.sql(
            'SELECT rank, neighbor_index AS "index", cosine FROM neighbors WHERE model_id = ? AND source = ? '
            'AND "index" = ? AND rank < ? ORDER BY rank',
            params=[sid.model_id, sid.source, index, k if k is not None else 2**31 - 1],
        ).to_arrow_table()


def stored_neighbors_k(db: Database, sid: SourceId) -> int:
    """k of the stored all-pairs table for `sid` (0 when there is none)."""
    with db.connect() as cur:
        row = cur.execute("SELECT max(rank) + 1 FROM neighbors WHERE model_id = ? AND source = ?",
                          [sid.model_id, sid.source]).fetchall()
    return int(row[0][0] or 0)
