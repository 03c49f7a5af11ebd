"""The SQL between a mirror and a Parquet dataset: a unit's rows read out, views over the
dataset's files (no copy), and a subset copied in.

Views are named `ds_features`, `ds_activations`, `ds_explanations` so they never clash with the
mirror's own tables, and have the tables' columns in the tables' order (the hive `model=` value
becomes `model_id` again). A local dataset is read in place by `read_parquet` with its hive
partitions declared VARCHAR (`source=5` is a neurons set, not the integer 5); DuckDB cannot read
`s3://` without the httpfs extension, which is never downloaded here, so an S3 dataset is a set
of pyarrow datasets registered on each connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import duckdb
import pyarrow as pa

from ..models import TABLE_COLUMNS
from . import catalog, rawblob
from .database import Database

__all__ = ["VIEW_PREFIX", "DatasetViews", "DatasetDatabase", "unit_rows", "held_sources", "import_rows",
           "create_views", "persist_views"]

VIEW_PREFIX = "ds_"
TABLES = tuple(TABLE_COLUMNS)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _select_list(table: str) -> str:
    """The mirror table's columns, in order, from a relation whose hive columns are `model`, `source`."""
    out = []
    for c in TABLE_COLUMNS[table]:
        if c.name == "model_id":
            out.append("CAST(model AS VARCHAR) AS model_id")
        elif c.name == "source":
            out.append("CAST(source AS VARCHAR) AS source")
        else:
            out.append(f"CAST({_q(c.name)} AS {c.base_type}) AS {_q(c.name)}")
    return ", ".join(out)


def _empty_select(table: str) -> str:
    return "SELECT " + ", ".join(f"CAST(NULL AS {c.base_type}) AS {_q(c.name)}" for c in TABLE_COLUMNS[table]) + \
        " WHERE false"


def _view_query(table: str, root: Optional[str], registered: Optional[str]) -> str:
    if registered is not None:
        return f"SELECT {_select_list(table)} FROM {registered}"
    assert root is not None
    glob = f"{root}/{table}/model=*/source=*/*.parquet"
    return (f"SELECT {_select_list(table)} FROM read_parquet({_literal(glob)}, hive_partitioning = true, "
            "hive_types = {'model': VARCHAR, 'source': VARCHAR}, hive_types_autocast = false)")


def _has_files(cur: duckdb.DuckDBPyConnection, root: str, table: str) -> bool:
    glob = f"{root}/{table}/model=*/source=*/*.parquet"
    return bool(cur.execute("SELECT count(*) FROM glob(?)", [glob]).fetchall()[0][0])


@dataclass
class DatasetViews:
    """What the `ds_*` views read: a local dataset folder (`root`), or pyarrow datasets by table."""

    root: Optional[str] = None
    datasets: Mapping[str, Any] = field(default_factory=dict)


def create_views(cur: duckdb.DuckDBPyConnection, views: DatasetViews, *, temp: bool = True) -> list[str]:
    """Create the `ds_*` views on this cursor (temporary: this connection only); their names."""
    kind = "TEMP VIEW" if temp else "VIEW"
    names = []
    for table in TABLES:
        name = VIEW_PREFIX + table
        if views.root is not None:
            query = _view_query(table, views.root, None) if _has_files(cur, views.root, table) else _empty_select(table)
        elif table in views.datasets:
            registered = f"_np_ds_{table}"
            cur.register(registered, views.datasets[table])
            query = _view_query(table, None, registered)
        else:
            query = _empty_select(table)
        cur.execute(f"CREATE OR REPLACE {kind} {name} AS {query}")
        names.append(name)
    return names


def persist_views(db: Database, root: str) -> list[str]:
    """Views over a local dataset stored in the mirror file, so every later use sees them."""
    with db.transaction() as cur:
        return create_views(cur, DatasetViews(root=root), temp=False)


class DatasetDatabase(Database):
    """A mirror file whose every cursor also sees the `ds_*` views of one dataset."""

    def __init__(self, *args: Any, views: DatasetViews, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.views = views

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with super().connect() as cur:
            create_views(cur, self.views)
            yield cur


#: The extra column of the features files: the body a fetched feature arrived with (JSON text,
#: null for an imported feature), so a copy back into a mirror answers `Mirror.feature` alike.
RAW_COLUMN = "raw_json"


def unit_rows(db: Database, table: str, model: str, source: str, start: int, stop: int) -> pa.Table:
    """The mirror's rows of one unit (features `start` to `stop - 1`), every column, in unit
    order; features also carry `raw_json`."""
    order = '"index"' if table == "features" else '"index", "rank"'
    where = 'model_id = ? AND source = ? AND "index" >= ? AND "index" < ?'
    params = [model, source, start, stop]
    with db.connect() as cur:
        rows = cur.sql(f"SELECT * FROM {TABLES[TABLES.index(table)]} WHERE {where} ORDER BY {order}",
                       params=params).to_arrow_table()
        if table != "features":
            return rows
        chunks = dict(cur.execute(
            f"""SELECT feature_key, list(chunk ORDER BY seq) FROM raw_chunks
                WHERE feature_key IN (SELECT feature_key FROM features WHERE {where}) GROUP BY feature_key""",
            params).fetchall())
    bodies = [rawblob.unpack(chunks[k]).decode() if k in chunks else None
              for k in rows.column("feature_key").to_pylist()]
    return rows.append_column(RAW_COLUMN, pa.array(bodies, pa.string()))


def held_sources(db: Database) -> list[tuple[str, str, Optional[int], int]]:
    """(model, source, feature count if known, highest index + 1) of every source with features."""
    with db.connect() as cur:
        return [tuple(r) for r in cur.execute(  # type: ignore[misc]
            """SELECT f.model_id, f.source, s.feature_count, max(f."index") + 1
               FROM features f LEFT JOIN sources s ON s.model_id = f.model_id AND s.source = f.source
               GROUP BY ALL ORDER BY 1, 2""").fetchall()]


def import_rows(db: Database, tables: Mapping[str, pa.Table], counts: Sequence[tuple[Any, Optional[int]]]) -> dict[str, int]:
    """Copy dataset rows into the mirror, replacing every row of the features they hold (as a
    sync batch does), in one transaction; `counts` records each source's feature count."""
    for sid, count in counts:
        catalog.save_source(db, sid, None, count, "dataset" if count is not None else None)
    features = tables["features"]
    keys = pa.table({"feature_key": features.column("feature_key")})
    raw = _raw_chunks(features)
    if RAW_COLUMN in features.column_names:
        features = features.drop_columns([RAW_COLUMN])
    rows = {**tables, "features": features, "raw_chunks": raw}
    written = {}
    with db.transaction() as cur:
        cur.register("_np_keys", keys)
        try:
            for table in ("features", "activations", "explanations", "raw_chunks", "failures"):
                cur.execute(f"DELETE FROM {table} WHERE feature_key IN (SELECT feature_key FROM _np_keys)")
            for table in (*TABLES, "raw_chunks"):
                cur.register("_np_rows", rows[table])
                cur.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _np_rows")
                cur.unregister("_np_rows")
                written[table] = rows[table].num_rows
        finally:
            cur.unregister("_np_keys")
    return written


def _raw_chunks(features: pa.Table) -> pa.Table:
    """The `raw_chunks` rows of the fetched bodies the features carry in `raw_json`."""
    keys: list[str] = []
    seqs: list[int] = []
    chunks: list[bytes] = []
    if RAW_COLUMN in features.column_names:
        for key, body in zip(features.column("feature_key").to_pylist(), features.column(RAW_COLUMN).to_pylist()):
            if body is not None:
                for k, seq, chunk in rawblob.rows(key, body.encode()):
                    keys.append(k)
                    seqs.append(seq)
                    chunks.append(chunk)
    return pa.table({"feature_key": pa.array(keys, pa.string()), "seq": pa.array(seqs, pa.int16()),
                     "chunk": pa.array(chunks, pa.binary())})
