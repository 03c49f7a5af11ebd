"""Batched, idempotent writes: one batch of features is one transaction.

A batch replaces every row of its features (features, activations, explanations, raw
chunks) and clears their failures, so rerunning it never duplicates anything, and a
process killed mid-batch leaves the previous state untouched. Rows go in as Arrow tables
registered on the cursor and inserted with one statement per table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import orjson
import pyarrow as pa

from .. import faults, jsonio
from ..ids import FeatureId
from ..models import TABLE_COLUMNS, Activation, Explanation, Feature
from . import rawblob
from .database import Database
from .schema import COLUMNS
from .words import word_count

__all__ = ["FeatureRow", "FailureRow", "write_batch", "feature_key", "arrow_schema", "PARTS"]

PARTS = ("features", "activations", "explanations")

_ARROW = {
    "VARCHAR": pa.string(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us"),
    "JSON": pa.string(),
    "INTEGER[]": pa.list_(pa.int32()),
    "DOUBLE[]": pa.list_(pa.float64()),
    "VARCHAR[]": pa.list_(pa.string()),
    "FLOAT[]": pa.list_(pa.float32()),
}


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(name, _ARROW[sql.replace(" NOT NULL", "")]) for name, sql in COLUMNS[table]])


def feature_key(fid: FeatureId) -> str:
    return f"{fid.model_id}/{fid.source}/{fid.index}"


@dataclass(frozen=True)
class FeatureRow:
    feature: Feature
    origin: str  # get | post | export


@dataclass(frozen=True)
class FailureRow:
    fid: FeatureId
    reason: str
    status_code: Optional[int]
    message: str
    permanent: bool


def _floats(values: Sequence[Any]) -> list[Optional[float]]:
    return [None if v is None else float(v) for v in values]


def _ints(values: Sequence[Any]) -> list[Optional[int]]:
    return [None if v is None else int(v) for v in values]


def _json(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = [v.model_dump(by_alias=True) if hasattr(v, "model_dump") else v for v in value]
    return orjson.dumps(value).decode()


#: How a payload value becomes a column value, by the column's DuckDB type.
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "DOUBLE[]": lambda v: _floats(v),
    "INTEGER[]": lambda v: _ints(v),
    "VARCHAR[]": lambda v: list(v),
    "FLOAT[]": lambda v: _floats(v),
    "JSON": _json,
    "VARCHAR": lambda v: None if v is None else str(v),
}


def _attrs(model: type) -> dict[str, str]:
    """payload field -> attribute of a pydantic model (its alias, or its own name)."""
    return {(f.alias or name): name for name, f in model.model_fields.items()}  # type: ignore[attr-defined]


_MODEL_OF = {"features": Feature, "activations": Activation, "explanations": Explanation}
#: per table: (column, attribute, converter) for every column the payload fills.
_FILL: dict[str, list[tuple[str, str, Callable[[Any], Any]]]] = {}
for _table, _model in _MODEL_OF.items():
    _fields = _attrs(_model)
    _FILL[_table] = [
        (c.name, _fields[c.api], _CONVERT.get(c.base_type, lambda v: v))
        for c in TABLE_COLUMNS[_table]
        if c.api is not None and c.api in _fields and c.name not in ("model_id", "source", "index")
    ]


def _payload_row(obj: Any, table: str) -> dict[str, Any]:
    row = {}
    for column, attr, convert in _FILL[table]:
        value = getattr(obj, attr)
        row[column] = None if value is None else convert(value)
    return row


def _columns(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    schema = arrow_schema(table)
    return pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)


def build_tables(rows: Sequence[FeatureRow], parts: Iterable[str], run_id: Optional[int]) -> dict[str, pa.Table]:
    """Arrow tables of these features for every table, their columns from THE column map."""
    parts = set(parts)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    feats: list[dict[str, Any]] = []
    acts: list[dict[str, Any]] = []
    expls: list[dict[str, Any]] = []
    raw_keys: list[str] = []
    raw_seq: list[int] = []
    raw_chunks: list[bytes] = []
    for row in rows:
        f = row.feature
        key = feature_key(f.id)
        base = {"feature_key": key, "model_id": f.model_id, "source": f.layer, "index": f.index, "origin": row.origin}
        feats.append({
            **_payload_row(f, "features"),
            **base,
            "n_activations": len(f.activations) if "activations" in parts else None,
            "n_explanations": len(f.explanations) if "explanations" in parts else None,
            "top_explanation": f.top_explanation,
            "run_id": run_id,
            "fetched_at": now,
        })
        if "activations" in parts:  # Feature.activations is already ranked top-first
            acts.extend({**_payload_row(a, "activations"), **base, "rank": rank} for rank, a in enumerate(f.activations))
        if "explanations" in parts:
            expls.extend({**_payload_row(e, "explanations"), **base, "rank": rank, "n_words": word_count(e.description)}
                         for rank, e in enumerate(f.explanations))
        body = f.raw_json
        dropped = [p for p in ("activations", "explanations") if p not in parts]
        if dropped:
            body = jsonio.dumps({k: v for k, v in f.raw.items() if k not in dropped})
        for k, seq, chunk in rawblob.rows(key, body):
            raw_keys.append(k)
            raw_seq.append(seq)
            raw_chunks.append(chunk)
    return {
        "features": _columns("features", feats),
        "activations": _columns("activations", acts),
        "explanations": _columns("explanations", expls),
        "raw_chunks": pa.table(
            {"feature_key": pa.array(raw_keys, pa.string()), "seq": pa.array(raw_seq, pa.int16()), "chunk": pa.array(raw_chunks, pa.binary())}
        ),
    }


def write_batch(
    db: Database,
    rows: Sequence[FeatureRow],
    failures: Sequence[FailureRow] = (),
    *,
    parts: Iterable[str] = PARTS,
    run_id: Optional[int] = None,
) -> None:
    """Replace these features and record these failures, all in one transaction."""
    if not rows and not failures:
        return
    tables = build_tables(rows, parts, run_id)
    keys = pa.table({"feature_key": tables["features"].column("feature_key")})
    with db.transaction() as cur:
        names = {"_np_keys": keys, **{f"_np_{t}": tbl for t, tbl in tables.items()}}
        for name, tbl in names.items():
            cur.register(name, tbl)
        try:
            if len(keys):
                existing = cur.execute(
                    "SELECT count(*) FROM features WHERE feature_key IN (SELECT feature_key FROM _np_keys)"
                ).fetchall()[0][0]
                if existing:
                    for table in ("features", "activations", "explanations", "raw_chunks"):
                        cur.execute(f"DELETE FROM {table} WHERE feature_key IN (SELECT feature_key FROM _np_keys)")
                cur.execute("DELETE FROM failures WHERE feature_key IN (SELECT feature_key FROM _np_keys)")
                for table in ("features", "activations", "explanations", "raw_chunks"):
                    cur.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _np_{table}")
            for fail in failures:
                cur.execute(
                    """INSERT INTO failures (feature_key, model_id, source, "index", reason, status_code, message,
                                             attempts, permanent, run_id, first_seen, last_seen)
                       VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, current_timestamp, current_timestamp)
                       ON CONFLICT (feature_key) DO UPDATE SET
                         reason = excluded.reason, status_code = excluded.status_code,
                         message = excluded.message, permanent = excluded.permanent,
                         attempts = failures.attempts + 1, run_id = excluded.run_id,
                         last_seen = now()""",
                    [feature_key(fail.fid), fail.fid.model_id, fail.fid.source, fail.fid.index, fail.reason,
                     fail.status_code, fail.message[:500], fail.permanent, run_id],
                )
            faults.point("write_batch.before_commit")
        finally:
            for name in names:
                cur.unregister(name)
    faults.point("write_batch.after_commit")
