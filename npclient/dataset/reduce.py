"""The reduce step of a sync from the exports: the columns that span export batches.

A feature's explanations are spread over explanation batches (1,024 *rows* a batch in text
order of index, no tiebreak: `utils/neuronpedia-utils/neuronpedia_utils/export-data.py`), one
row may be in two batches, and a feature's record is in a features batch of its own. So after
the map (`exports_units.py`) one step per source reads the intermediate files and writes the
`features` and `explanations` tables as units of `unit_features` features each:

- explanation rows deduplicated by explanation id and ranked over all a feature's rows, by the
  importer's rules (`store.importer.EXPLANATION_IDENT`, `EXPLANATION_ORDER`);
- each feature's `n_activations` (its rows in the source's committed activations units),
  `n_explanations`, `top_explanation` and the UMAP placement that export-data.py carries on
  explanation rows only, by the importer's one summary rule (`EXPLANATION_SUMMARY`).

The step is idempotent: the same intermediate files give the same bytes, so a rerun finds every
unit committed and writes nothing (`units.is_committed`); a changed export rewrites in place.
Only SELECTs here: DuckDB reads Arrow tables read from Parquet, and nothing touches a mirror.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import duckdb
import orjson
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..store.importer import EXPLANATION_IDENT, EXPLANATION_ORDER, EXPLANATION_SUMMARY
from ..store.writer import arrow_schema
from .exports_units import stage_keys
from .check import source_record_key
from .location import Location, lease_until, open_location
from .units import DEFAULT_LEASE_S, Unit, encode, is_committed, markers, write_unit

__all__ = ["ReduceResult", "reduce_source", "DEFAULT_UNIT_FEATURES"]

#: Features per unit of the reduced tables (as `dataset write` writes a mirror's sources).
DEFAULT_UNIT_FEATURES = 4096
#: The features files' column for a fetched body (null for a feature from an export).
RAW_COLUMN = "raw_json"
_UMAP = ("umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity")


@dataclass
class ReduceResult:
    model: str
    source: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=lambda: {"features": 0, "explanations": 0})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(loc: Location, keys: list[str], columns: Optional[list[str]] = None) -> Optional[pa.Table]:
    if not keys:
        return None
    parts = [pq.read_table(loc.path(k), filesystem=loc.fs, columns=columns) for k in keys]
    return pa.concat_tables(parts, promote_options="permissive")


def _empty(table: str) -> pa.Table:
    schema = arrow_schema(table)
    return schema.append(pa.field("_batch", pa.int32())).empty_table()


def _explanations(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> pa.Table:
    """One row per explanation (a row in two batches counts once), ranks 0..n-1 per feature.

    DuckDB decides which rows and their ranks; the rows themselves are taken by pyarrow, so
    every value stays bit for bit as read (a sort in DuckDB turns -0.0 into 0.0)."""
    picked = con.sql(f"""
        SELECT _row, CAST(row_number() OVER (PARTITION BY feature_key ORDER BY {EXPLANATION_ORDER}) - 1 AS INTEGER) AS rank
        FROM (SELECT * FROM (
                SELECT *, row_number() OVER (PARTITION BY {EXPLANATION_IDENT} ORDER BY _batch DESC, rank) AS _n
                FROM expl_in) WHERE _n = 1)
        ORDER BY "index", rank""").to_arrow_table()
    out = rows.take(picked.column("_row"))
    out = out.set_column(out.schema.get_field_index("rank"), "rank", picked.column("rank"))
    return out.drop_columns(["_batch", "_row"])


def _features(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> pa.Table:
    """Each feature's record (the last batch's, should one be in two) with its reduced columns."""
    umap = ", ".join(f"coalesce(f.{c}, s.{c}) AS {c}" for c in _UMAP)
    picked = con.sql(f"""
        SELECT f._row, CAST(coalesce(a.n, 0) AS INTEGER) AS n_activations,
               CAST(coalesce(s.n, 0) AS INTEGER) AS n_explanations, s.top AS top_explanation, {umap}
        FROM (SELECT * FROM (
                SELECT *, row_number() OVER (PARTITION BY feature_key ORDER BY _batch DESC) AS _n FROM feat_in)
              WHERE _n = 1) f
        LEFT JOIN (SELECT feature_key, count(*) AS n FROM act_keys GROUP BY 1) a ON a.feature_key = f.feature_key
        LEFT JOIN (SELECT feature_key, {EXPLANATION_SUMMARY} FROM expl_out GROUP BY 1) s ON s.feature_key = f.feature_key
        ORDER BY f."index" """).to_arrow_table()
    out = rows.take(picked.column("_row"))
    for name in ("n_activations", "n_explanations", "top_explanation", *_UMAP):
        i = out.schema.get_field_index(name)
        out = out.set_column(i, out.schema.field(i), picked.column(name).cast(out.schema.field(i).type))
    return out.drop_columns(["_batch", "_row"])


def _with_api_rows(loc: Location, model: str, source: str, features: pa.Table,
                   explanations: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The API's rows of the gap features (`gaps.py`) in place of the export's for the same features."""
    from .gaps import api_stage_key

    keys = [api_stage_key(model, source, t) for t in ("features", "explanations")]
    if not all(loc.exists(k) and loc.exists(k + ".json") for k in keys):
        return features, explanations
    api = [pq.read_table(loc.path(k), filesystem=loc.fs) for k in keys]
    out = []
    for ours, theirs in zip((features, explanations), api):
        replaced = pc.is_in(ours.column("feature_key"), value_set=api[0].column("feature_key"))
        kept = ours.filter(pc.invert(replaced))
        merged = pa.concat_tables([kept, theirs.select(kept.column_names).cast(kept.schema)])
        order = [("index", "ascending")] + ([("rank", "ascending")] if "rank" in kept.column_names else [])
        out.append(merged.sort_by(order))
    return out[0], out[1]


def _slices(rows: pa.Table, unit_features: int, top: int) -> dict[int, pa.Table]:
    """start -> the rows of features start..start+unit_features-1 (rows sorted by index)."""
    index = rows.column("index").to_numpy() if rows.num_rows else np.empty(0, dtype=np.int64)
    out = {}
    for start in range(0, top, unit_features):
        lo, hi = np.searchsorted(index, [start, start + unit_features])
        if hi > lo:
            out[start] = rows.slice(int(lo), int(hi - lo)).combine_chunks()
    return out


def reduce_source(dataset: str, model: str, source: str, *, job_id: str, unit_features: int = DEFAULT_UNIT_FEATURES,
                  feature_count: Optional[int] = None, lease_s: float = DEFAULT_LEASE_S,
                  rewrite: bool = False) -> ReduceResult:
    """Write `features` and `explanations` units of one source from its intermediate files, and
    the source's record (its feature count, `_np/sources/`)."""
    loc = open_location(dataset)
    result = ReduceResult(model, source)
    record = {"model": model, "source": source, "feature_count": feature_count}
    loc.write_whole(source_record_key(model, source), orjson.dumps(record), job_id=job_id,
                    lease_until=lease_until(lease_s))
    feats = _read(loc, stage_keys(loc, model, source, "features")) or _empty("features")
    expls = _read(loc, stage_keys(loc, model, source, "explanations")) or _empty("explanations")
    act_units = [u.data_key for u in markers(loc, "activations") if (u.model, u.source) == (model, source)]
    acts = _read(loc, act_units, ["feature_key"]) or pa.table({"feature_key": pa.array([], pa.string())})
    feats, expls = (t.append_column("_row", pa.array(np.arange(t.num_rows), pa.int64())) for t in (feats, expls))
    con = duckdb.connect()
    try:
        con.register("feat_in", feats)
        con.register("expl_in", expls)
        con.register("act_keys", acts)
        explanations = _explanations(con, expls)
        con.register("expl_out", explanations)
        features = _features(con, feats)
    finally:
        con.close()
    features = features.append_column(RAW_COLUMN, pa.nulls(features.num_rows, pa.string()))
    features, explanations = _with_api_rows(loc, model, source, features, explanations)
    top = max([feature_count or 0] + [int(t.column("index").to_numpy().max()) + 1
                                      for t in (features, explanations) if t.num_rows])
    for table, rows in (("features", features), ("explanations", explanations)):
        for start, part in _slices(rows, unit_features, top).items():
            unit = Unit(table, model, source, start, min(start + unit_features, top))
            data = encode(unit, part)
            if not rewrite and is_committed(loc, unit, data):
                result.skipped.append(unit.data_key)
                continue
            write_unit(loc, unit, part, job_id=job_id, lease_s=lease_s, data=data)
            result.written.append(unit.data_key)
        result.rows[table] = rows.num_rows
    return result
