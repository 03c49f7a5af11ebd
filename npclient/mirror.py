"""`Mirror`: the researcher's handle on the local database.

It reads what `sync` wrote: `feature(id)` gives back the same `Feature` the client returned,
with `.raw` equal to what the server sent; `features(source)` and `sql(...)` give Arrow
tables. The file is opened per use and released after `linger_s` of idleness (see
`store/database.py`), so a sync in another process can still write between reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import duckdb
import pyarrow as pa

from .errors import QueryError
from .ids import FeatureId, FeatureIdLike, SourceId
from .models import Feature
from .store import rawblob
from .store.catalog import status_rows
from .store.database import Database
from .store.writer import feature_key

__all__ = ["Mirror"]


class Mirror:
    """The local mirror at `path` (default `$NP_MIRROR_HOME/mirror.duckdb`)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        read_only: bool = False,
        wait_s: float = 120.0,
        linger_s: float = 1.0,
        on_wait: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.db = Database(path, read_only=read_only, wait_s=wait_s, linger_s=linger_s, on_wait=on_wait)

    @property
    def path(self) -> Path:
        return self.db.path

    def __repr__(self) -> str:
        return f"Mirror(path={str(self.path)!r}, read_only={self.db.read_only})"

    def __enter__(self) -> "Mirror":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ---- features ----------------------------------------------------------------------
    def feature(self, feature: FeatureIdLike) -> Optional[Feature]:
        """The stored feature, as the client returned it; `None` if the mirror lacks it."""
        fid = FeatureId.coerce(feature)
        with self.db.connect() as cur:
            chunks = cur.execute(
                "SELECT chunk FROM raw_chunks WHERE feature_key = ? ORDER BY seq", [feature_key(fid)]
            ).fetchall()
            if chunks:
                return Feature.from_json(rawblob.unpack(c[0] for c in chunks))
            return _from_export(cur, feature_key(fid))

    def features(self, source: SourceId | str, columns: Optional[Sequence[str]] = None) -> pa.Table:
        """One row per stored feature of `source`, in index order, as an Arrow table."""
        sid = source if isinstance(source, SourceId) else SourceId.parse(source)
        select = "*" if not columns else ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        return self.sql(
            f'SELECT {select} FROM features WHERE model_id = ? AND source = ? ORDER BY "index"',
            [sid.model_id, sid.source],
        )

    def sql(self, query: str, params: Optional[Sequence[Any]] = None) -> pa.Table:
        """Run SQL on the mirror and return Arrow (`?` placeholders take `params`)."""
        with self.db.connect() as cur:
            try:
                return cur.sql(query, params=list(params) if params is not None else None).to_arrow_table()
            except duckdb.Error as exc:
                raise QueryError(str(exc).strip().splitlines()[0]) from None

    def decoder(self, source: SourceId | str, device: Optional[str] = None, dtype: Optional[str] = None) -> Any:
        """The attached decoder (`np-mirror weights add`) as a torch tensor, d_sae x d_in, memory-mapped.

        Row i is feature i of `source`; torch loads only here.
        """
        from .weights import decoder

        return decoder(self.db, source, device=device, dtype=dtype)

    def status(self) -> list[dict[str, Any]]:
        """Per source: features present / total, activations, explanations, failures, last fetch."""
        return status_rows(self.db)


# API names of the typed activation and explanation columns, for rebuilding imported features.
_ACTIVATION_FIELDS = {
    "activation_id": "id", "model_id": "modelId", "source": "layer", "tokens": "tokens", "values": "values",
    "max_value": "maxValue", "max_value_token_index": "maxValueTokenIndex", "min_value": "minValue",
    "data_source": "dataSource", "data_index": "dataIndex", "creator_id": "creatorId", "created_at": "createdAt",
    "dfa_values": "dfaValues", "dfa_max_value": "dfaMaxValue", "dfa_target_index": "dfaTargetIndex",
    "loss_values": "lossValues", "logit_contributions": "logitContributions", "bin_min": "binMin",
    "bin_max": "binMax", "bin_contains": "binContains", "qualifying_token_index": "qualifyingTokenIndex",
}
_EXPLANATION_FIELDS = {
    "explanation_id": "id", "model_id": "modelId", "source": "layer", "description": "description",
    "explanation_model_name": "explanationModelName", "type_name": "typeName", "author_id": "authorId",
    "umap_x": "umap_x", "umap_y": "umap_y", "umap_cluster": "umap_cluster",
    "umap_log_feature_sparsity": "umap_log_feature_sparsity",
}


def _rows(cur: "duckdb.DuckDBPyConnection", table: str, fields: dict[str, str], key: str) -> list[dict[str, Any]]:
    from . import jsonio

    cols = ", ".join(f'"{c}"' for c in fields)
    result = cur.execute(f'SELECT "index", {cols} FROM {table} WHERE feature_key = ? ORDER BY rank', [key])
    out = []
    for row in result.fetchall():
        item = {"index": str(row[0])}
        for (col, name), value in zip(fields.items(), row[1:]):
            if value is None:
                continue
            item[name] = jsonio.loads(value) if col == "logit_contributions" else value
        out.append(item)
    return out


def _from_export(cur: "duckdb.DuckDBPyConnection", key: str) -> Optional[Feature]:
    """An imported feature: its export record plus its activation and explanation rows.

    Exports carry no relations and no explanation scores, and the typed rows keep only the
    fields the README lists, so `.raw` here is the export's view of the feature.
    """
    from . import jsonio

    found = cur.execute("SELECT export_raw FROM features WHERE feature_key = ? AND origin = 'export'", [key]).fetchall()
    if not found or found[0][0] is None:
        return None
    # Exports write NaN/Infinity as bare tokens (Python's json.dumps), which orjson refuses:
    # jsonio reads them, and Feature.from_raw renders them null, as the API does.
    raw = jsonio.loads(found[0][0])
    raw["activations"] = _rows(cur, "activations", _ACTIVATION_FIELDS, key)
    raw["explanations"] = _rows(cur, "explanations", _EXPLANATION_FIELDS, key)
    return Feature.from_raw(raw)
