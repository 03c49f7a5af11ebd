"""How a stored feature is read back: the raw body the API sent, or an imported feature rebuilt
from its export record and its typed rows (the fields come from THE column map); and the Arrow
tables `Mirror` hands researchers (activations, explanations, features, stored neighbours)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import duckdb
import pyarrow as pa

from .. import jsonio
from ..errors import QueryError
from ..ids import SourceId
from ..models import TABLE_COLUMNS, payload_fields
from . import rawblob
from .database import Database

__all__ = ["raw_body", "export_feature", "REBUILT_FIELDS", "read_query", "activations", "explanations", "features",
           "stored_neighbors", "NEIGHBOR_SCHEMA"]

#: column -> payload field, for the typed activation and explanation columns an imported feature
#: is rebuilt from (its index comes from the row; embeddings and scores are left out: the API
#: never sends them on a feature).
REBUILT_FIELDS: dict[str, dict[str, str]] = {
    table: {col: api for col, api in payload_fields(table).items() if col not in ("index", "embedding", "scores")}
    for table in ("activations", "explanations")
}


def raw_body(db: Database, key: str) -> Optional[bytes]:
    """The body a fetched feature arrived with, byte for byte (None for an imported one)."""
    with db.connect() as cur:
        chunks = cur.execute("SELECT chunk FROM raw_chunks WHERE feature_key = ? ORDER BY seq", [key]).fetchall()
    return rawblob.unpack(c[0] for c in chunks) if chunks else None


def _typed(cur: Any, table: str, key: str) -> list[dict[str, Any]]:
    fields = REBUILT_FIELDS[table]
    cols = ", ".join(f'"{c}"' for c in fields)
    out = []
    for row in cur.execute(f'SELECT "index", {cols} FROM {table} WHERE feature_key = ? ORDER BY rank', [key]).fetchall():
        item: dict[str, Any] = {"index": str(row[0])}
        for (col, name), value in zip(fields.items(), row[1:]):
            if value is not None:
                item[name] = jsonio.loads(value) if col == "logit_contributions" else value
        out.append(item)
    return out


def export_feature(db: Database, key: str) -> Optional[dict[str, Any]]:
    """An imported feature as an object: its export record (bare NaN/Infinity read as floats)
    plus its activation and explanation rows, in rank order; None if it was not imported."""
    with db.connect() as cur:
        found = cur.execute("SELECT export_raw FROM features WHERE feature_key = ? AND origin = 'export'", [key]).fetchall()
        if not found or found[0][0] is None:
            return None
        raw = jsonio.loads(found[0][0])
        if not isinstance(raw, dict):
            return None
        raw["activations"] = _typed(cur, "activations", key)
        raw["explanations"] = _typed(cur, "explanations", key)
    return raw


# --------------------------------------------------------------------------- tables for Mirror
def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_list(table: str) -> str:
    return ", ".join(_quoted(c.name) for c in TABLE_COLUMNS[table])


def _arrow(db: Database, query: str, params: Sequence[Any]) -> pa.Table:
    with db.connect() as cur:
        try:
            return cur.sql(query, params=list(params)).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(str(exc).strip().splitlines()[0]) from None


def read_query(db: Database, query: str, params: Sequence[Any] = ()) -> pa.Table:
    """One SELECT statement as Arrow; anything else (a second statement, a write) is refused
    before it runs, so text a caller passes in (`features(where=...)`) cannot change the mirror."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(str(exc).strip().splitlines()[0]) from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError("only one read-only SELECT may run here (the condition closed it or added a statement)")
    return _arrow(db, query, params)


def activations(db: Database, key: str, top: Optional[int] = None) -> pa.Table:
    """A feature's activation rows (every column of the map), top-first: `rank` 0 is the largest
    `max_value`, ties by activation id (the order the writer and importer store)."""
    limit = "" if top is None else " LIMIT ?"
    return _arrow(db, f"SELECT {_column_list('activations')} FROM activations WHERE feature_key = ? ORDER BY rank{limit}",
                  [key] if top is None else [key, top])


def explanations(db: Database, key: str) -> pa.Table:
    """A feature's explanation rows in `rank` order: row 0 is its `top_explanation`."""
    return _arrow(db, f"SELECT {_column_list('explanations')} FROM explanations WHERE feature_key = ? ORDER BY rank", [key])


def features(db: Database, sid: SourceId, columns: Optional[Sequence[str]] = None, where: Optional[str] = None,
             params: Sequence[Any] = ()) -> pa.Table:
    """The features of `sid` in index order; `where` is a SQL condition on the features table
    (its `?` take `params`), run as one read-only SELECT."""
    select = "*" if not columns else ", ".join(_quoted(c) for c in columns)
    query = f'SELECT {select} FROM features WHERE model_id = ? AND source = ?'
    if where is None:
        return _arrow(db, query + ' ORDER BY "index"', [sid.model_id, sid.source])
    if not where.strip():
        raise QueryError("the condition (where) is empty")
    try:
        return read_query(db, f'{query} AND ({where}\n) ORDER BY "index"', [sid.model_id, sid.source, *params])
    except QueryError as exc:
        raise QueryError(f"the condition {where!r}: {exc}") from None


#: The shape of a neighbours table, whichever way it was found (geometry.api.neighbors' columns).
NEIGHBOR_SCHEMA = pa.schema([("rank", pa.int32()), ("index", pa.int64()), ("cosine", pa.float64()),
                             ("explanation", pa.string())])


def stored_neighbors(db: Database, sid: SourceId, key: str, k: int) -> Optional[pa.Table]:
    """The first `k` entries of a feature's stored `topkCosSim` lists (Neuronpedia's decoder
    neighbours, self first), each with its top explanation; None when the mirror holds no list."""
    with db.connect() as cur:
        found = cur.execute("SELECT len(topk_cos_sim_indices) FROM features WHERE feature_key = ?", [key]).fetchall()
        if not found or not found[0][0]:
            return None
        table = cur.sql(
            """SELECT CAST(n.rank AS INTEGER) AS rank, CAST(n."index" AS BIGINT) AS "index",
                      CAST(n.cosine AS DOUBLE) AS cosine, f.top_explanation AS explanation
               FROM (SELECT generate_subscripts(topk_cos_sim_indices, 1) - 1 AS rank,
                            unnest(topk_cos_sim_indices) AS "index", unnest(topk_cos_sim_values) AS cosine
                     FROM features WHERE feature_key = ?) n
               LEFT JOIN features f ON f.model_id = ? AND f.source = ? AND f."index" = n."index"
               WHERE n.rank < ? AND n."index" IS NOT NULL ORDER BY n.rank""",
            params=[key, sid.model_id, sid.source, k],
        ).to_arrow_table()
    return table.cast(NEIGHBOR_SCHEMA)
