"""The `weights` table: which decoder copy is attached to which source (records only; the
files themselves are `npclient.weights`' business)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from ..ids import SourceId
from .database import Database

__all__ = ["WEIGHTS_COLUMNS", "WeightsRecord", "list_weights", "get_weights", "save_weights"]

#: The columns of `weights` (schema.py declares the table), `attached_at` last.
WEIGHTS_COLUMNS = (
    "model_id", "source", "loader", "source_path", "sha256", "tensor_name", "transposed", "release", "sae_id",
    "architecture", "output_space", "hook_name", "neuronpedia_id", "d_sae", "d_in", "source_dtype", "dtype",
    "nan_rows", "zero_rows", "decoder_path", "attached_at",
)


@dataclass(frozen=True)
class WeightsRecord:
    """One attached decoder, as the `weights` table records it.

    `d_in` is the decoder's width: the output space (d_out) for a transcoder
    (`output_space=True`). `nan_rows` counts rows with any NaN or infinite value,
    `zero_rows` rows that are all zero (cosine undefined), both in the stored dtype.
    """

    model_id: str
    source: str
    loader: str
    source_path: Optional[str]
    sha256: Optional[str]
    tensor_name: Optional[str]
    transposed: bool
    release: Optional[str]
    sae_id: Optional[str]
    architecture: Optional[str]
    output_space: bool
    hook_name: Optional[str]
    neuronpedia_id: Optional[str]
    d_sae: int
    d_in: int
    source_dtype: Optional[str]
    dtype: str
    nan_rows: int
    zero_rows: int
    decoder_path: str
    attached_at: Optional[datetime] = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def source_id(self) -> SourceId:
        return SourceId(self.model_id, self.source)

    @property
    def norms_path(self) -> str:
        return str(Path(self.decoder_path).with_name("norms.npy"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("notes")
        out = {"source_id": str(self.source_id), **out}
        return out


def _record(row: tuple) -> WeightsRecord:
    return WeightsRecord(**dict(zip(WEIGHTS_COLUMNS, row)))


def list_weights(db: Database) -> list[WeightsRecord]:
    """Every attached decoder, by model and source."""
    with db.connect() as cur:
        rows = cur.execute(f"SELECT {', '.join(WEIGHTS_COLUMNS)} FROM weights ORDER BY model_id, source").fetchall()
    return [_record(r) for r in rows]


def get_weights(db: Database, sid: SourceId) -> Optional[WeightsRecord]:
    """The attached decoder of `sid`, or None."""
    with db.connect() as cur:
        rows = cur.execute(f"SELECT {', '.join(WEIGHTS_COLUMNS)} FROM weights WHERE model_id = ? AND source = ?",
                           [sid.model_id, sid.source]).fetchall()
    return _record(rows[0]) if rows else None


def save_weights(db: Database, record: WeightsRecord, *, on_commit: Any = None) -> None:
    """Record (or replace) a source's decoder in one transaction; `on_commit()` runs inside it,
    last, so moving the copy into place and recording it succeed or fail together."""
    columns = WEIGHTS_COLUMNS[:-1]
    values = [getattr(record, c) for c in columns]
    with db.transaction() as cur:
        cur.execute(f"INSERT OR REPLACE INTO weights ({', '.join(columns)}) VALUES ({', '.join('?' * len(values))})",
                    values)
        if on_commit is not None:
            on_commit()
