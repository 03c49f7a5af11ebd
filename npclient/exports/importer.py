"""Import Neuronpedia's bulk export batches into the mirror with DuckDB's own JSON reader.

No Python loop touches a row: each gzip JSONL batch is read by `read_json` (typed columns)
or `read_ndjson_objects` (feature records, whose whole object is kept in
`features.export_raw`), staged in a temp table, and merged in one transaction together with
its row in `export_files`. So a corrupt batch commits nothing and is retried on the next run,
and a killed import resumes at the first batch not yet recorded. Records are keyed by
(modelId, layer, index), never by batch arithmetic. Features fetched through the API are
richer (relations, scores) and are never replaced by an export's rows.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import duckdb
import orjson

from ..errors import ExportError
from ..ids import SourceId
from ..models import SourceInfo
from ..store import catalog
from ..store.database import Database

__all__ = ["ImportReport", "import_source_dir", "import_tree", "find_source_dirs", "PART_KINDS"]

PART_KINDS = ("features", "activations", "explanations")
IMPORT_WORKERS = min(2, os.cpu_count() or 1)
_BATCH = re.compile(r"^batch-(\d+)\.jsonl\.gz$")

# Activation and explanation records: typed columns given to read_json (unknown keys are dropped:
# the README lists what an export carries).
_ACT_COLUMNS = {
    "id": "VARCHAR", "modelId": "VARCHAR", "layer": "VARCHAR", "index": "VARCHAR",
    "tokens": "VARCHAR[]", "values": "DOUBLE[]", "maxValue": "DOUBLE", "maxValueTokenIndex": "INTEGER",
    "minValue": "DOUBLE", "dataSource": "VARCHAR", "dataIndex": "VARCHAR", "creatorId": "VARCHAR",
    "createdAt": "VARCHAR", "dfaValues": "DOUBLE[]", "dfaMaxValue": "DOUBLE", "dfaTargetIndex": "INTEGER",
    "lossValues": "DOUBLE[]", "logitContributions": "JSON", "binMin": "DOUBLE", "binMax": "DOUBLE",
    "binContains": "DOUBLE", "qualifyingTokenIndex": "INTEGER",
}
_EXPL_COLUMNS = {
    "id": "VARCHAR", "modelId": "VARCHAR", "layer": "VARCHAR", "index": "VARCHAR", "authorId": "VARCHAR",
    "description": "VARCHAR", "embedding": "JSON", "typeName": "VARCHAR", "explanationModelName": "VARCHAR",
    "umap_x": "DOUBLE", "umap_y": "DOUBLE", "umap_cluster": "INTEGER", "umap_log_feature_sparsity": "DOUBLE",
}


def _columns_literal(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"


_KEY = "j.modelId || '/' || j.layer || '/' || CAST(CAST(j.\"index\" AS INTEGER) AS VARCHAR)"

_STAGE_FEATURES = """
CREATE TEMP TABLE _np_import AS
SELECT
    (o->>'$.modelId') || '/' || (o->>'$.layer') || '/' || CAST(CAST(o->>'$.index' AS INTEGER) AS VARCHAR) AS feature_key,
    o->>'$.modelId' AS model_id,
    o->>'$.layer' AS source,
    CAST(o->>'$.index' AS INTEGER) AS "index",
    'export' AS origin,
    TRY_CAST(o->>'$.maxActApprox' AS DOUBLE) AS max_act_approx,
    TRY_CAST(o->>'$.frac_nonzero' AS DOUBLE) AS frac_nonzero,
    o->>'$.hookName' AS hook_name,
    TRY_CAST(o->>'$.hasVector' AS BOOLEAN) AS has_vector,
    TRY_CAST(o->>'$.umap_x' AS DOUBLE) AS umap_x,
    TRY_CAST(o->>'$.umap_y' AS DOUBLE) AS umap_y,
    TRY_CAST(o->>'$.umap_cluster' AS INTEGER) AS umap_cluster,
    TRY_CAST(o->>'$.umap_log_feature_sparsity' AS DOUBLE) AS umap_log_feature_sparsity,
    TRY_CAST(o->'$.topkCosSimIndices' AS INTEGER[]) AS topk_cos_sim_indices,
    TRY_CAST(o->'$.topkCosSimValues' AS DOUBLE[]) AS topk_cos_sim_values,
    TRY_CAST(o->'$.pos_str' AS VARCHAR[]) AS pos_str,
    TRY_CAST(o->'$.pos_values' AS DOUBLE[]) AS pos_values,
    TRY_CAST(o->'$.neg_str' AS VARCHAR[]) AS neg_str,
    TRY_CAST(o->'$.neg_values' AS DOUBLE[]) AS neg_values,
    CAST(NULL AS INTEGER) AS n_activations,
    CAST(NULL AS INTEGER) AS n_explanations,
    CAST(NULL AS VARCHAR) AS top_explanation,
    CAST(? AS BIGINT) AS run_id,
    now()::TIMESTAMP AS fetched_at,
    o AS export_raw
FROM (SELECT json AS o FROM read_ndjson_objects(?, compression = 'gzip'))
"""

_STAGE_ACTIVATIONS = f"""
CREATE TEMP TABLE _np_import AS
SELECT
    {_KEY} AS feature_key, j.modelId AS model_id, j.layer AS source, CAST(j."index" AS INTEGER) AS "index",
    CAST(row_number() OVER (PARTITION BY j.modelId, j.layer, CAST(j."index" AS INTEGER)
                            ORDER BY j.maxValue DESC NULLS LAST, j.id) - 1 AS INTEGER) AS rank,
    j.id AS activation_id, j.tokens, j."values", j.maxValue AS max_value,
    j.maxValueTokenIndex AS max_value_token_index, j.minValue AS min_value, j.dataSource AS data_source,
    j.dataIndex AS data_index, j.creatorId AS creator_id, j.createdAt AS created_at, j.dfaValues AS dfa_values,
    j.dfaMaxValue AS dfa_max_value, j.dfaTargetIndex AS dfa_target_index, j.lossValues AS loss_values,
    j.logitContributions AS logit_contributions, j.binMin AS bin_min, j.binMax AS bin_max,
    j.binContains AS bin_contains, j.qualifyingTokenIndex AS qualifying_token_index, 'export' AS origin
FROM read_json(?, format = 'newline_delimited', compression = 'gzip', columns = {_columns_literal(_ACT_COLUMNS)}) j
"""

_STAGE_EXPLANATIONS = f"""
CREATE TEMP TABLE _np_import AS
SELECT
    {_KEY} AS feature_key, j.modelId AS model_id, j.layer AS source, CAST(j."index" AS INTEGER) AS "index",
    CAST(row_number() OVER (PARTITION BY j.modelId, j.layer, CAST(j."index" AS INTEGER) ORDER BY j.id) - 1 AS INTEGER) AS rank,
    j.id AS explanation_id, j.description, j.explanationModelName AS explanation_model_name,
    j.typeName AS type_name, CAST(NULL AS JSON) AS scores, j.authorId AS author_id,
    CASE json_type(j.embedding)
        WHEN 'ARRAY' THEN TRY_CAST(j.embedding AS FLOAT[])
        WHEN 'VARCHAR' THEN TRY_CAST(CAST(j.embedding ->> '$' AS JSON) AS FLOAT[])
    END AS embedding,
    j.umap_x, j.umap_y, j.umap_cluster, j.umap_log_feature_sparsity, 'export' AS origin
FROM read_json(?, format = 'newline_delimited', compression = 'gzip', columns = {_columns_literal(_EXPL_COLUMNS)}) j
"""

_STAGE = {"features": _STAGE_FEATURES, "activations": _STAGE_ACTIVATIONS, "explanations": _STAGE_EXPLANATIONS}

# Features fetched through the API keep their own rows in every table.
_API_KEYS = "SELECT feature_key FROM features WHERE origin <> 'export'"


@dataclass
class ImportReport:
    source: SourceId
    imported: dict[str, int] = field(default_factory=lambda: {k: 0 for k in PART_KINDS})
    rows: dict[str, int] = field(default_factory=lambda: {k: 0 for k in PART_KINDS})
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # file -> one-line reason

    @property
    def ok(self) -> bool:
        return not self.failed


def find_source_dirs(root: Path) -> list[tuple[SourceId, Path]]:
    """Source folders under a dump: `root` itself, `root/{source}`, or `root/[v1/]{model}/{source}`."""
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root} is not a directory")
    if (root / "v1").is_dir():
        root = root / "v1"

    def is_source(d: Path) -> bool:
        # Sources start with their layer number (`0-res-jb`); `headvis/`, `jlens/` do not.
        if not re.match(r"^[0-9]+-", d.name):
            return False
        return (d / "features").is_dir() or (d / "activations").is_dir() or any(d.glob("explanations*/"))

    found: list[tuple[SourceId, Path]] = []
    if is_source(root):
        found.append((SourceId(root.parent.name, root.name), root))
    else:
        for first in sorted(p for p in root.iterdir() if p.is_dir()):
            if is_source(first):
                found.append((SourceId(root.name, first.name), first))
                continue
            for second in sorted(p for p in first.iterdir() if p.is_dir()):
                if is_source(second):  # headvis/, jlens/ and the like have no batches: skipped
                    found.append((SourceId(first.name, second.name), second))
    if not found:
        raise ExportError(f"no Neuronpedia export source folders under {root}")
    return found


def _batches(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob("batch-*.jsonl.gz"):
        m = _BATCH.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)  # numerically: batch-2 before batch-10


def _part_files(source_dir: Path) -> list[tuple[str, int, Path]]:
    files: list[tuple[str, int, Path]] = []
    for kind in ("features", "activations"):
        files += [(kind, n, p) for n, p in _batches(source_dir / kind)]
    for folder in sorted(source_dir.glob("explanations*")):
        if folder.is_dir():
            files += [("explanations", n, p) for n, p in _batches(folder)]
    return files


def _source_info(source_dir: Path) -> Optional[SourceInfo]:
    meta = source_dir / "source.jsonl"
    if not meta.is_file():
        return None
    try:
        line = meta.read_bytes().splitlines()[0]
        return SourceInfo.model_validate(orjson.loads(line))
    except (IndexError, ValueError):
        return None


def import_source_dir(
    db: Database,
    source_dir: Path,
    sid: Optional[SourceId] = None,
    *,
    key_prefix: Optional[str] = None,
    etags: Optional[dict[str, str]] = None,
    run_id: Optional[int] = None,
    parts: Iterable[str] = PART_KINDS,
    workers: int = IMPORT_WORKERS,
) -> ImportReport:
    """Import one source folder (`features/`, `activations/`, `explanations*/` batches)."""
    source_dir = Path(source_dir)
    sid = sid or SourceId(source_dir.parent.name, source_dir.name)
    prefix = key_prefix if key_prefix is not None else f"v1/{sid.model_id}/{sid.source}/"
    report = ImportReport(sid)
    info = _source_info(source_dir)
    catalog.save_source(db, sid, info, info.d_sae if info and info.d_sae else None,
                        "export source.jsonl" if info and info.d_sae else None)
    wanted = set(parts)
    done, seen = _imported_files(db, sid)
    jobs = []
    for kind, batch, path in _part_files(source_dir):
        if kind not in wanted:
            continue
        key = prefix + str(path.relative_to(source_dir)).replace("\\", "/")
        size = path.stat().st_size
        etag = (etags or {}).get(key)
        if done.get(key) == (size, etag):
            report.skipped += 1
            continue
        jobs.append((kind, batch, path, key, size, etag, key not in seen))

    def run(job: tuple) -> tuple[tuple, Optional[int], str]:
        kind, batch, path, key, size, etag, first_time = job
        try:
            return job, _import_file(db, sid, kind, batch, path, key, size, etag, run_id, first_time), ""
        except (duckdb.Error, OSError, EOFError, gzip.BadGzipFile, ExportError) as exc:
            return job, None, str(exc).strip().splitlines()[0][:300]

    # DuckDB parses one gzip stream on one thread: two batches at once use both cores.
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1))) as pool:
        for (kind, batch, path, key, size, etag, _), rows, reason in pool.map(run, jobs):
            if rows is None:
                report.failed[key] = reason
                _record_failure(db, sid, kind, batch, key, size, etag, reason)
            else:
                report.imported[kind] += 1
                report.rows[kind] += rows
    _refresh_counts(db, sid)
    return report


def _imported_files(db: Database, sid: SourceId) -> tuple[dict[str, tuple[int, Optional[str]]], set[str]]:
    """Files imported (with their size and etag), and every file ever recorded."""
    with db.connect() as cur:
        rows = cur.execute(
            "SELECT key, size, etag, status FROM export_files WHERE model_id = ? AND source = ?",
            [sid.model_id, sid.source],
        ).fetchall()
    return {k: (size, etag) for k, size, etag, status in rows if status == "imported"}, {r[0] for r in rows}


def _import_file(
    db: Database, sid: SourceId, kind: str, batch: int, path: Path, key: str, size: int,
    etag: Optional[str], run_id: Optional[int], first_time: bool = False,
) -> int:
    params = [run_id, str(path)] if kind == "features" else [str(path)]
    if first_time:
        return _import_new_file(db, sid, kind, batch, path, key, size, etag, params)
    with db.transaction() as cur:
        cur.execute("DROP TABLE IF EXISTS _np_import")
        cur.execute(_STAGE[kind], params)
        try:
            strays = cur.execute(
                "SELECT count(*) FROM _np_import WHERE model_id IS DISTINCT FROM ? OR source IS DISTINCT FROM ?",
                [sid.model_id, sid.source],
            ).fetchall()[0][0]
            if strays:
                raise ExportError(f"{key}: {strays} records belong to another source than {sid}")
            if kind == "features":
                cur.execute("DELETE FROM features WHERE origin = 'export' AND feature_key IN (SELECT feature_key FROM _np_import)")
                cur.execute(f"INSERT INTO features BY NAME SELECT * FROM _np_import WHERE feature_key NOT IN ({_API_KEYS})")
            else:
                cur.execute(f"DELETE FROM {kind} WHERE origin = 'export' AND feature_key IN (SELECT feature_key FROM _np_import)")
                cur.execute(f"INSERT INTO {kind} BY NAME SELECT * FROM _np_import WHERE feature_key NOT IN ({_API_KEYS})")
            rows, lo, hi = cur.execute('SELECT count(*), min("index"), max("index") FROM _np_import').fetchall()[0]
            _record_imported(cur, sid, kind, batch, key, size, etag, rows, lo, hi)
        finally:
            cur.execute("DROP TABLE IF EXISTS _np_import")
    return int(rows)


def _import_new_file(
    db: Database, sid: SourceId, kind: str, batch: int, path: Path, key: str, size: int,
    etag: Optional[str], params: list,
) -> int:
    """A file never recorded before has no rows to replace: insert straight from the reader.

    Skipping the staging copy is most of the cost of a first import; a rerun of a changed or
    once-failed file takes the staged path in `_import_file`, which replaces rows.
    """
    select = _STAGE[kind].replace("CREATE TEMP TABLE _np_import AS", "", 1)
    with db.transaction() as cur:
        inserted = cur.execute(
            f"""INSERT INTO {kind} BY NAME SELECT * FROM ({select}) WHERE feature_key NOT IN ({_API_KEYS})
                RETURNING "index", model_id, source""",
            params,
        ).fetchnumpy()
        index = inserted["index"]
        ours = (inserted["model_id"] == sid.model_id) & (inserted["source"] == sid.source)
        rows = int(len(index))
        foreign = rows - int(ours.sum()) if rows else 0
        if foreign:
            raise ExportError(f"{key}: {foreign} records belong to another source than {sid}")
        lo, hi = (int(index.min()), int(index.max())) if rows else (None, None)
        _record_imported(cur, sid, kind, batch, key, size, etag, rows, lo, hi)
    return rows


def _record_imported(
    cur: duckdb.DuckDBPyConnection, sid: SourceId, kind: str, batch: int, key: str, size: int,
    etag: Optional[str], rows: int, lo: Optional[int], hi: Optional[int],
) -> None:
    cur.execute(
        """INSERT INTO export_files (key, model_id, source, kind, batch, size, etag, status, rows_imported,
                                     min_index, max_index, error, imported_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, 'imported', ?, ?, ?, NULL, now())
           ON CONFLICT (key) DO UPDATE SET size = excluded.size, etag = excluded.etag, status = 'imported',
             rows_imported = excluded.rows_imported, min_index = excluded.min_index,
             max_index = excluded.max_index, error = NULL, imported_at = now()""",
        [key, sid.model_id, sid.source, kind, batch, size, etag, rows, lo, hi],
    )


def _record_failure(db: Database, sid: SourceId, kind: str, batch: int, key: str, size: int, etag: Optional[str], reason: str) -> None:
    with db.transaction() as cur:
        cur.execute(
            """INSERT INTO export_files (key, model_id, source, kind, batch, size, etag, status, rows_imported, error, imported_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, 'failed', 0, ?, now())
               ON CONFLICT (key) DO UPDATE SET status = 'failed', error = excluded.error, imported_at = now()""",
            [key, sid.model_id, sid.source, kind, batch, size, etag, reason],
        )


def _refresh_counts(db: Database, sid: SourceId) -> None:
    """n_activations, n_explanations and top_explanation of imported features, in one pass."""
    with db.transaction() as cur:
        cur.execute(
            """UPDATE features SET
                   n_activations = coalesce(a.n, 0), n_explanations = coalesce(e.n, 0), top_explanation = e.top
               FROM (SELECT feature_key FROM features WHERE model_id = ? AND source = ? AND origin = 'export') k
               LEFT JOIN (SELECT feature_key, count(*) AS n FROM activations WHERE model_id = ? AND source = ? GROUP BY 1) a USING (feature_key)
               LEFT JOIN (SELECT feature_key, count(*) AS n, arg_min(description, rank) AS top FROM explanations
                          WHERE model_id = ? AND source = ? GROUP BY 1) e USING (feature_key)
               WHERE features.feature_key = k.feature_key""",
            [sid.model_id, sid.source] * 3,
        )


def import_tree(db: Database, root: Path, *, run_id: Optional[int] = None) -> list[ImportReport]:
    """Import every source folder of a dump already on disk (e.g. after `aws s3 sync --no-sign-request`)."""
    return [import_source_dir(db, path, sid, run_id=run_id) for sid, path in find_source_dirs(Path(root))]
