"""The local mirror: one DuckDB file, and the only code that writes its SQL.

    database.py  the connection scheme (no process keeps the file; the last user closes it)
    schema.py    every table, versioned, with migrations (v1 -> v2)
    writer.py    API features in batched, keyed transactions
    importer.py  export batches through DuckDB's JSON reader
    catalog.py   models, sources, source sets; what is present, what failed, status
    runs.py      the sync_runs bookkeeping
    weights.py   records of attached decoders
    results.py   geometry results (neighbors, matches, coordinates, clusters, head features)
    parquet.py   the mirror as a hive-partitioned Parquet dataset
    reads.py     a stored feature read back; the Arrow tables Mirror hands out (read-only queries)
    search.py    keyword search over explanations: the one ranking of Mirror.search and serve
    rawblob.py   a feature's raw body, compressed into chunks

`Store` gathers what the rest of the package may do with a mirror file, so geometry, serve and
the CLI reach it through `Mirror.store` and never hold a connection or write SQL themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from . import catalog, parquet, reads, results, search, weights
from .database import Database
from .schema import SCHEMA_VERSION
from .writer import PARTS, FailureRow, FeatureRow, feature_key, write_batch

__all__ = ["Database", "Store", "SCHEMA_VERSION", "PARTS", "FailureRow", "FeatureRow", "feature_key", "write_batch"]


class Store:
    """Typed reads and writes of one mirror file (`db`); each call opens and releases it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __repr__(self) -> str:
        return f"Store({self.db!r})"

    # ---- reads ----------------------------------------------------------------------------
    def rows(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """A read-only query (constant SQL, `?` parameters) as a list of dicts."""
        with self.db.connect() as cur:
            result = cur.execute(query, list(params))
            cols = [d[0] for d in result.description]
            return [dict(zip(cols, r)) for r in result.fetchall()]

    def raw_body(self, key: str) -> Optional[bytes]:
        """A fetched feature's body as the server sent it (None for an imported one)."""
        return reads.raw_body(self.db, key)

    def export_feature(self, key: str) -> Optional[dict[str, Any]]:
        """An imported feature rebuilt from its export record and typed rows."""
        return reads.export_feature(self.db, key)

    def read_query(self, query: str, params: Sequence[Any] = ()) -> pa.Table:
        """One read-only SELECT (refused before it runs if it is anything else) as Arrow."""
        return reads.read_query(self.db, query, params)

    def activations(self, key: str, top: Optional[int] = None) -> pa.Table:
        """A feature's activation rows, top-first (rank 0 = largest max_value), as Arrow."""
        return reads.activations(self.db, key, top)

    def explanations(self, key: str) -> pa.Table:
        """A feature's explanation rows in rank order (row 0 = its top explanation), as Arrow."""
        return reads.explanations(self.db, key)

    def features(self, sid: Any, columns: Optional[Sequence[str]] = None, where: Optional[str] = None,
                 params: Sequence[Any] = ()) -> pa.Table:
        """The features of `sid` in index order, optionally filtered by a read-only SQL condition."""
        return reads.features(self.db, sid, columns, where, params)

    def stored_neighbors(self, sid: Any, key: str, k: int) -> Optional[pa.Table]:
        """The first k of a feature's stored topkCosSim neighbours with explanations (None: no list)."""
        return reads.stored_neighbors(self.db, sid, key, k)

    def search_page(self, query: str, *, model_id: Optional[str] = None, sources: Optional[Sequence[str]] = None,
                    regex: bool = False, offset: int = 0, limit: Optional[int] = None,
                    features: int = 0) -> search.SearchPage:
        """A page of the one ranking (`store/search.py`), the count of all hits, and the first
        `features` features hit: ranked and counted in DuckDB, so a common word in a 1M-feature
        source returns 20 rows, not all of them."""
        return search.search_page(self.db, query, model_id=model_id, sources=sources, regex=regex, offset=offset,
                                  limit=limit, features=features)

    def with_explanations(self, sid: Any, table: Any, column: str, name: str) -> Any:
        """Arrow `table` (ordered by its `rowid_`) plus the top explanation of the feature whose
        index is in `column` of source `sid` (null when unknown)."""
        with self.db.connect() as cur:
            cur.register("_np_result", table)
            try:
                return cur.sql(
                    f"""SELECT r.*, f.top_explanation AS "{name.replace('"', '""')}" FROM _np_result r
                        LEFT JOIN features f ON f.model_id = ? AND f.source = ? AND f."index" = r."{column.replace('"', '""')}"
                        ORDER BY r.rowid_""",
                    params=[sid.model_id, sid.source],
                ).to_arrow_table()
            finally:
                cur.unregister("_np_result")

    def status(self) -> list[dict[str, Any]]:
        return catalog.status_rows(self.db)

    def feature_count(self, sid: Any) -> Optional[int]:
        return catalog.stored_feature_count(self.db, sid)

    # ---- weights ----------------------------------------------------------------------------
    def weights(self, sid: Any) -> Optional[weights.WeightsRecord]:
        return weights.get_weights(self.db, sid)

    def all_weights(self) -> list[weights.WeightsRecord]:
        return weights.list_weights(self.db)

    # ---- geometry results -------------------------------------------------------------------
    def save_neighbors(self, sid: Any, values: Any, indices: Any) -> int:
        return results.save_neighbors(self.db, sid, values, indices)

    def save_matches(self, sid: Any, against: Any, values: Any, indices: Any) -> int:
        return results.save_matches(self.db, sid, against, values, indices)

    def save_coordinates(self, sid: Any, method: str, features: Any, coords: Any) -> int:
        return results.save_coordinates(self.db, sid, method, features, coords)

    def save_clusters(self, sid: Any, run: str, features: Any, labels: Any, leaf_order: Sequence[int]) -> int:
        return results.save_clusters(self.db, sid, run, features, labels, leaf_order)

    def save_head_features(self, sid: Any, matrix: str, colspace: Any, invisible: Any,
                           suppression: Any = None, suppressed: Any = None) -> int:
        return results.save_head_features(self.db, sid, matrix, colspace, invisible, suppression, suppressed)

    def stored_neighbors_k(self, sid: Any) -> int:
        return results.stored_neighbors_k(self.db, sid)

    def computed_neighbors(self, sid: Any, index: int, k: Optional[int] = None) -> pa.Table:
        return results.computed_neighbors(self.db, sid, index, k)

    # ---- bulk -------------------------------------------------------------------------------
    def export_parquet(self, out_dir: Path, sources: Optional[Sequence[Any]] = None) -> dict[str, int]:
        return parquet.export_parquet(self.db, out_dir, sources)
