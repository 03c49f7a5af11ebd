"""The mirror as a hive-partitioned Parquet dataset (`model=/source=/`), for DuckDB, Polars or Spark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pyarrow as pa

from ..errors import ExportError
from ..ids import SourceId
from .database import Database

TABLES = ("features", "activations", "explanations")


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_parquet(db: Database, out_dir: Path, sources: Optional[Sequence[SourceId]] = None) -> dict[str, int]:
    """Write features, activations and explanations under `out_dir/<table>/model=/source=/`.

    Returns rows written per table. `out_dir/<table>` must not exist yet (nothing is overwritten).
    """
    out_dir = Path(out_dir)
    for table in TABLES:
        if (out_dir / table).exists():
            raise ExportError(f"{out_dir / table} already exists; choose an empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    with db.connect() as cur:
        if sources:
            selected = pa.table({"model_id": [s.model_id for s in sources], "source": [s.source for s in sources]})
            cur.register("_np_selected", selected)
        try:
            for table in TABLES:
                where = "WHERE (model_id, source) IN (SELECT (model_id, source) FROM _np_selected)" if sources else ""
                query = f"SELECT * EXCLUDE (model_id), model_id AS model FROM {table} {where}"
                written[table] = cur.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
                if written[table]:
                    cur.execute(
                        f"COPY ({query}) TO {_literal(out_dir / table)} "
                        "(FORMAT parquet, PARTITION_BY (model, source), COMPRESSION zstd)"
                    )
        finally:
            if sources:
                cur.unregister("_np_selected")
    return written
