"""The mirror as a hive-partitioned Parquet dataset (`model=/source=/`), for DuckDB, Polars or Spark."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pyarrow as pa

from ..errors import ExportError, InvalidPathError, UnknownSourceError
from ..ids import SourceId
from .database import Database

TABLES = ("features", "activations", "explanations")


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_parquet(db: Database, out_dir: Path, sources: Optional[Sequence[SourceId]] = None) -> dict[str, int]:
    """Write features, activations and explanations under `out_dir/<table>/model=/source=/`.

    Returns rows written per table. `out_dir/<table>` must not exist yet (nothing is overwritten).
    A source the mirror does not hold is refused (`UnknownSourceError`), and a folder that cannot
    be written (`InvalidPathError`), both before anything is written.
    """
    out_dir = Path(out_dir)
    if sources:
        _require_sources(db, sources)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidPathError(f"{out_dir} is a file, not a folder; choose a folder to write into", option="out_dir")
    for table in TABLES:
        if (out_dir / table).exists():
            raise ExportError(f"{out_dir / table} already exists; choose an empty directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".np-mirror-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise InvalidPathError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose a folder you can write to",
                               option="out_dir") from None
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


def _require_sources(db: Database, sources: Sequence[SourceId]) -> None:
    """Refuse sources the mirror holds no feature of (a typo would otherwise export nothing, quietly)."""
    with db.connect() as cur:
        held = {(m, s) for m, s in cur.execute("SELECT DISTINCT model_id, source FROM features").fetchall()}
    missing = [str(s) for s in sources if (s.model_id, s.source) not in held]
    if missing:
        raise UnknownSourceError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in the mirror "
            "(`np-mirror status` lists what is)"
        )
