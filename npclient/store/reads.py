"""How a stored feature is read back: the raw body the API sent, or an imported feature rebuilt
from its export record and its typed rows (the fields come from THE column map)."""

from __future__ import annotations

from typing import Any, Optional

from .. import jsonio
from ..models import payload_fields
from . import rawblob
from .database import Database

__all__ = ["raw_body", "export_feature", "REBUILT_FIELDS"]

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
