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

def _replace(db: Database, table: str, where: str, params: list[Any], rows: pa.Table) -> int:
    with db.transaction() as cur:
        cur.execute(f"DELETE FROM {table} WHERE {where}", params)
        cur.register("_np_rows", rows)
        try:
            cur.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _np_rows")
        finally:
            cur.unregister("_np_rows")
    return rows.num_rows


def _base(sid: SourceId, index: np.ndarray) -> dict[str, Any]:
    n = len(index)
    return {
        "model_id": pa.array([sid.model_id] * n, pa.string()),
        "source": pa.array([sid.source] * n, pa.string()),
        "index": pa.array(index.astype(np.int32), pa.int32()),
    }


def _ranked(values: np.ndarray, indices: np.ndarray, rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, ...]:
    n, k = indices.shape
    row_index = np.repeat(rows if rows is not None else np.arange(n), k)
    rank = np.tile(np.arange(k), n)
    vals = values.reshape(-1).astype(np.float64)
    idx = indices.reshape(-1)
    return row_index, rank, idx, vals


def save_neighbors(db: Database, sid: SourceId, values: np.ndarray, indices: np.ndarray) -> int:
    row_index, rank, idx, vals = _ranked(np.asarray(values), np.asarray(indices))
    table = pa.table({**_base(sid, row_index), "rank": pa.array(rank.astype(np.int32)),
                      "neighbor_index": pa.array(idx.astype(np.int32)),
                      "cosine": pa.array(vals, pa.float64(), mask=np.isnan(vals))})
    return _replace(db, "neighbors", "model_id = ? AND source = ?", [sid.model_id, sid.source], table)


def save_matches(db: Database, sid: SourceId, against: SourceId, values: np.ndarray, indices: np.ndarray) -> int:
    row_index, rank, idx, vals = _ranked(np.asarray(values), np.asarray(indices))
    table = pa.table({**_base(sid, row_index), "against": pa.array([str(against)] * len(idx), pa.string()),
                      "rank": pa.array(rank.astype(np.int32)), "match_index": pa.array(idx.astype(np.int32)),
                      "cosine": pa.array(vals, pa.float64(), mask=np.isnan(vals))})
    return _replace(db, "matches", "model_id = ? AND source = ? AND against = ?",
                    [sid.model_id, sid.source, str(against)], table)


def save_coordinates(db: Database, sid: SourceId, method: str, features: np.ndarray, coords: np.ndarray) -> int:
    coords = np.asarray(coords, dtype=np.float64)
    x, y = coords[:, 0], coords[:, 1]
    table = pa.table({**_base(sid, np.asarray(features)), "method": pa.array([method] * len(features)),
                      "x": pa.array(x, mask=np.isnan(x)), "y": pa.array(y, mask=np.isnan(y))})
    return _replace(db, "coordinates", "model_id = ? AND source = ? AND method = ?",
                    [sid.model_id, sid.source, method], table)


def save_clusters(db: Database, sid: SourceId, run: str, features: np.ndarray, labels: np.ndarray,
                  leaf_order: Sequence[int]) -> int:
    position = np.empty(len(features), dtype=np.int32)
    position[np.asarray(leaf_order, dtype=np.int64)] = np.arange(len(features), dtype=np.int32)
    table = pa.table({**_base(sid, np.asarray(features)), "run": pa.array([run] * len(features)),
                      "label": pa.array(np.asarray(labels).astype(np.int32)), "leaf_position": pa.array(position)})
    return _replace(db, "clusters", "model_id = ? AND source = ? AND run = ?", [sid.model_id, sid.source, run], table)


def save_head_features(db: Database, sid: SourceId, matrix: str, colspace: np.ndarray, invisible: np.ndarray,
                       suppression: Optional[np.ndarray] = None, suppressed: Optional[np.ndarray] = None) -> int:
    n = len(colspace)
    frac = np.asarray(colspace, dtype=np.float64)
    sup = np.full(n, np.nan) if suppression is None else np.asarray(suppression, dtype=np.float64)
    table = pa.table({
        **_base(sid, np.arange(n)), "matrix": pa.array([matrix] * n),
        "colspace_fraction": pa.array(frac, mask=np.isnan(frac)),
        "invisible": pa.array(np.asarray(invisible, dtype=bool)),
        "suppression": pa.array(sup, mask=np.isnan(sup)),
        "suppressed": pa.array(np.zeros(n, dtype=bool) if suppressed is None else np.asarray(suppressed, dtype=bool)),
    })
    return _replace(db, "head_features", "model_id = ? AND source = ? AND matrix = ?",
                    [sid.model_id, sid.source, matrix], table)


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
