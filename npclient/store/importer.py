"""Import Neuronpedia's bulk export batches into the mirror with DuckDB's own JSON reader.

The store's half of an import: which files a folder holds and whose they are is
`exports/files.py`; here they become rows. The reader's columns come from THE column map
(`models.TABLE_COLUMNS`), like the DDL's and the writer's.

No Python loop touches a row: each gzip JSONL batch is read by `read_json` (typed columns)
or `read_ndjson_objects` (feature records, whose whole object is kept in
`features.export_raw`), staged in a temp table, and merged in one transaction together with
its row in `export_files`. So a corrupt batch commits nothing and is retried on the next run,
and a killed import resumes at the first batch not yet recorded. Records are keyed by
(modelId, layer, index), never by batch arithmetic. Features fetched through the API are
richer (relations, scores) and are never replaced by an export's rows.

Explanations are batched by *rows* (1,024 a file in text order of index, with no tiebreak:
`utils/neuronpedia-utils/neuronpedia_utils/export-data.py`), so one feature's explanations can
straddle two files and, where Postgres orders ties differently per page, one row can be in two
files. So explanation rows are keyed by explanation id: a file replaces only the rows with its
ids, deduplicated, and the ranks of the features it touched are recomputed over all their rows
(by explanation id: cuids sort by creation time, our documented order for unscored
explanations). Activation files cover numeric ranges of index, so a feature's activations are
all in one file and rank by `wire.activation_rank_key` (largest maxValue first, ties by id).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import duckdb

from .. import faults
from ..errors import ExportError
from ..exports.files import PART_KINDS, find_source_dirs, name_id, part_files, source_id_of, source_info
from ..exports.layout import parse_key
from ..ids import SourceId
from ..models import TABLE_COLUMNS, Column
from . import catalog
from .database import Database
from .words import N_WORDS_SQL

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ImportReport", "import_source_dir", "import_tree", "record_failed_download", "read_types", "read_export_batch",
           "EXPLANATION_IDENT", "EXPLANATION_ORDER", "EXPLANATION_SUMMARY"]

IMPORT_WORKERS = min(2, os.cpu_count() or 1)

#: How `read_json` reads a payload field, where that differs from its column's type: the
#: index comes as a string, an embedding as a list or a "[...]" string, parsed below.
_READ_AS = {"index": "VARCHAR", "embedding": "JSON"}
#: Payload fields an export never carries for a table (scores are the API's).
_NOT_EXPORTED = {"explanations": {"scores"}}


def read_types(table: str) -> dict[str, str]:
    """payload field -> DuckDB type for `read_json`, from the column map (unknown keys are
    dropped: the README lists what an export carries)."""
    return {c.api: _READ_AS.get(c.name, c.base_type) for c in TABLE_COLUMNS[table]
            if c.api is not None and c.api not in _NOT_EXPORTED.get(table, ())}


def _columns_literal(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select(table: str, special: dict[str, str], expr: "Optional[callable]" = None) -> str:
    """The SELECT list that makes `table`'s columns, in map order, from a reader's rows:
    `special` expressions first, then each payload field (`expr(column)`, default `j."field"`),
    NULL for the mirror's own columns."""
    out = []
    for c in TABLE_COLUMNS[table]:
        if c.name in special:
            value = special[c.name]
        elif c.api is not None and c.api not in _NOT_EXPORTED.get(table, ()):
            value = expr(c) if expr else f"j.{_q(c.api)}"
        else:
            value = f"CAST(NULL AS {c.base_type})"
        out.append(f"{value} AS {_q(c.name)}")
    return ",\n    ".join(out)


def _feature_field(c: Column) -> str:
    """A features column from the record object `o` (read whole: it is kept in export_raw)."""
    if c.base_type.endswith("[]"):
        return f"TRY_CAST(o->'$.{c.api}' AS {c.base_type})"
    if c.base_type == "VARCHAR":
        return f"o->>'$.{c.api}'"
    return f"TRY_CAST(o->>'$.{c.api}' AS {c.base_type})"


_FEATURE_SPECIAL = {
    "feature_key": "(o->>'$.modelId') || '/' || (o->>'$.layer') || '/' || CAST(CAST(o->>'$.index' AS INTEGER) AS VARCHAR)",
    "model_id": "o->>'$.modelId'",
    "source": "o->>'$.layer'",
    "index": "CAST(o->>'$.index' AS INTEGER)",
    "origin": "'export'",
    "run_id": "CAST(? AS BIGINT)",
    "fetched_at": "now()::TIMESTAMP",
    "export_raw": "o",
}
_STAGE_FEATURES = f"""
CREATE TEMP TABLE _np_import AS
SELECT
    {_select("features", _FEATURE_SPECIAL, _feature_field)}
FROM (SELECT json AS o FROM read_ndjson_objects(?, compression = 'gzip'))
"""

_KEYS_SPECIAL = {
    "feature_key": "j.modelId || '/' || j.layer || '/' || CAST(CAST(j.\"index\" AS INTEGER) AS VARCHAR)",
    "model_id": "j.modelId",
    "source": "j.layer",
    "index": 'CAST(j."index" AS INTEGER)',
    "origin": "'export'",
}
_PARTITION = 'PARTITION BY j.modelId, j.layer, CAST(j."index" AS INTEGER)'
# Activation ranks follow wire.activation_rank_key: the largest maxValue first (NaN and null
# last: an export may carry a bare NaN), ties by activation id.
_ACTIVATION_RANK = (
    f"CAST(row_number() OVER ({_PARTITION} ORDER BY CASE WHEN isnan(j.maxValue) THEN NULL ELSE j.maxValue END "
    "DESC NULLS LAST, coalesce(j.id, '')) - 1 AS INTEGER)"
)
_STAGE_ACTIVATIONS = f"""
CREATE TEMP TABLE _np_import AS
SELECT
    {_select("activations", {**_KEYS_SPECIAL, "rank": _ACTIVATION_RANK})}
FROM read_json(?, format = 'newline_delimited', compression = 'gzip', columns = {_columns_literal(read_types("activations"))}) j
"""

_EMBEDDING = """CASE json_type(j.embedding)
        WHEN 'ARRAY' THEN TRY_CAST(j.embedding AS FLOAT[])
        WHEN 'VARCHAR' THEN TRY_CAST(CAST(j.embedding ->> '$' AS JSON) AS FLOAT[])
    END"""
_STAGE_EXPLANATIONS = f"""
CREATE TEMP TABLE _np_import AS
SELECT
    {_select("explanations", {**_KEYS_SPECIAL, "embedding": _EMBEDDING,
                              "rank": f"CAST(row_number() OVER ({_PARTITION} ORDER BY j.id) - 1 AS INTEGER)",
                              "n_words": N_WORDS_SQL.format(d="j.description")})}
FROM read_json(?, format = 'newline_delimited', compression = 'gzip', columns = {_columns_literal(read_types("explanations"))}) j
"""

_STAGE = {"features": _STAGE_FEATURES, "activations": _STAGE_ACTIVATIONS, "explanations": _STAGE_EXPLANATIONS}
#: The typed reader itself: the SELECT each staging statement runs (an import and the dataset sync share it).
_READ = {kind: sql.replace("CREATE TEMP TABLE _np_import AS", "", 1) for kind, sql in _STAGE.items()}

# Features fetched through the API keep their own rows in every table.
_API_KEYS = "SELECT feature_key FROM features WHERE origin <> 'export'"

# What identifies an explanation row: its id; a record without one (never seen in Neuronpedia's
# exports) by its feature and text, so rerunning its file still replaces it instead of adding it.
_IDENT = (
    "coalesce({t}explanation_id, 'nil' || chr(31) || {t}feature_key || chr(31) || coalesce({t}explanation_model_name, '')"
    " || chr(31) || coalesce({t}type_name, '') || chr(31) || coalesce({t}description, ''))"
)
# Our rank for explanations without scores: by explanation id (cuids sort by creation time).
_EXPL_ORDER = "explanation_id NULLS LAST, description, explanation_model_name, type_name"
#: The same rules for code that reduces export rows outside a mirror (npclient/dataset/reduce.py):
#: what identifies an explanation row, the order its ranks follow, and a feature's explanation
#: summary (count, top explanation = rank 0's description, the UMAP placement of that row).
EXPLANATION_IDENT = _IDENT.format(t="")
EXPLANATION_ORDER = _EXPL_ORDER
EXPLANATION_SUMMARY = (
    "count(*) AS n, arg_min(description, rank) AS top, arg_min(umap_x, rank) AS umap_x, "
    "arg_min(umap_y, rank) AS umap_y, arg_min(umap_cluster, rank) AS umap_cluster, "
    "arg_min(umap_log_feature_sparsity, rank) AS umap_log_feature_sparsity"
)


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


# --------------------------------------------------------------------------- importing


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
    index_range: Optional[tuple[int, int]] = None,
    files: Optional[Iterable[Path]] = None,
) -> ImportReport:
    """Import one source folder (`features/`, `activations/`, `explanations*/` batches).

    `sid` defaults to what the folder's own files say (`source_id_of`). `index_range`
    (`start, stop`, half-open) keeps only the rows of those features: such a file is recorded
    as `partial` (not `imported`), so a later run without the range imports it whole. `files`
    limits the import to those batch files (default: every batch in the folder).
    """
    source_dir = Path(source_dir)
    sid = sid or source_id_of(source_dir, name_id(source_dir.parent.name, source_dir.name))
    if sid is None:
        raise ExportError(f"cannot tell which source {source_dir} holds")
    prefix = key_prefix if key_prefix is not None else f"v1/{sid.model_id}/{sid.source}/"
    report = ImportReport(sid)
    info = source_info(source_dir)
    if info is not None and (info.id != sid.source or info.model_id not in (None, sid.model_id)):
        info = None  # another source's metadata: not ours to record
    catalog.save_source(db, sid, info, info.d_sae if info and info.d_sae else None,
                        "export source.jsonl" if info and info.d_sae else None)
    wanted = set(parts)
    only = {Path(f).resolve() for f in files} if files is not None else None
    done, seen = _imported_files(db, sid)
    jobs = []
    for kind, batch, path in part_files(source_dir):
        if kind not in wanted or (only is not None and path.resolve() not in only):
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
            if kind == "explanations":
                rows = _import_explanations(db, sid, batch, path, key, size, etag, index_range)
            else:
                rows = _import_file(db, sid, kind, batch, path, key, size, etag, run_id, first_time, index_range)
            faults.point("import.after_commit")
            return job, rows, ""
        except (duckdb.Error, OSError, EOFError, gzip.BadGzipFile, ExportError) as exc:
            return job, None, str(exc).strip().splitlines()[0][:300]

    # DuckDB parses one gzip stream on one thread: two batches at once use both cores. Explanation
    # files touch the rows of their neighbours (a feature can straddle two files), so they go one
    # at a time, in order, on a thread of their own beside the others.
    rest = [j for j in jobs if j[0] != "explanations"]
    serial = [j for j in jobs if j[0] == "explanations"]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(rest) or 1))) as pool, \
            ThreadPoolExecutor(max_workers=1) as one:
        futures = [pool.submit(run, j) for j in rest] + [one.submit(run, j) for j in serial]
        for (kind, batch, path, key, size, etag, _), rows, reason in (f.result() for f in futures):
            if rows is None:
                report.failed[key] = reason
                _record_failure(db, sid, kind, batch, key, size, etag, reason)
            else:
                report.imported[kind] += 1
                report.rows[kind] += rows
    _refresh_counts(db, sid)
    return report


def imported_files(db: Database, sid: SourceId) -> dict[str, tuple[int, Optional[str]]]:
    """The source's export files imported whole: key -> (size, etag) as imported. A sync need
    not download these again (their rows are in the mirror), even after `cache prune`."""
    return _imported_files(db, sid)[0]


def _imported_files(db: Database, sid: SourceId) -> tuple[dict[str, tuple[int, Optional[str]]], set[str]]:
    """Files imported whole (with their size and etag), and every file ever recorded."""
    with db.connect() as cur:
        rows = cur.execute(
            "SELECT key, size, etag, status FROM export_files WHERE model_id = ? AND source = ?",
            [sid.model_id, sid.source],
        ).fetchall()
    return {k: (size, etag) for k, size, etag, status in rows if status == "imported"}, {r[0] for r in rows}


def _stage(cur: duckdb.DuckDBPyConnection, sid: SourceId, kind: str, path: Path, key: str,
           run_id: Optional[int], index_range: Optional[tuple[int, int]]) -> tuple[int, Optional[int], Optional[int], bool]:
    """Read a file into `_np_import`, refuse another source's records, keep our rows only.

    Returns the file's own row count and index span (before any filter) and whether rows were
    left out by `index_range`.
    """
    params = [run_id, str(path)] if kind == "features" else [str(path)]
    cur.execute("DROP TABLE IF EXISTS _np_import")
    cur.execute(_STAGE[kind], params)
    total, lo, hi, strays = cur.execute(
        'SELECT count(*), min("index"), max("index"), '
        "count(*) FILTER (WHERE model_id IS DISTINCT FROM ? OR source IS DISTINCT FROM ?) FROM _np_import",
        [sid.model_id, sid.source],
    ).fetchall()[0]
    if strays:
        raise ExportError(f"{key}: {strays} records belong to another source than {sid}")
    cut = False
    if index_range is not None:
        cut = bool(cur.execute('DELETE FROM _np_import WHERE "index" < ? OR "index" >= ?', list(index_range)).fetchall()[0][0])
    cur.execute(f"DELETE FROM _np_import WHERE feature_key IN ({_API_KEYS})")
    return int(total), lo, hi, cut


def _import_file(
    db: Database, sid: SourceId, kind: str, batch: int, path: Path, key: str, size: int,
    etag: Optional[str], run_id: Optional[int], first_time: bool = False,
    index_range: Optional[tuple[int, int]] = None,
) -> int:
    """A features or activations file. Each holds whole features (activation files cover numeric
    ranges of index), so its rows replace those of the same features."""
    if first_time and index_range is None:
        return _import_new_file(db, sid, kind, batch, path, key, size, etag, [run_id, str(path)] if kind == "features" else [str(path)])
    with db.transaction() as cur:
        try:
            _, lo, hi, cut = _stage(cur, sid, kind, path, key, run_id, index_range)
            if kind == "features":
                cur.execute("DELETE FROM features WHERE origin = 'export' AND feature_key IN (SELECT feature_key FROM _np_import)")
            else:
                cur.execute(f"DELETE FROM {kind} WHERE origin = 'export' AND feature_key IN (SELECT feature_key FROM _np_import)")
            cur.execute(f"INSERT INTO {kind} BY NAME SELECT * FROM _np_import")
            rows = cur.execute("SELECT count(*) FROM _np_import").fetchall()[0][0]
            _record_imported(cur, sid, kind, batch, key, size, etag, rows, lo, hi, "partial" if cut else "imported")
        finally:
            cur.execute("DROP TABLE IF EXISTS _np_import")
    return int(rows)


def _import_new_file(
    db: Database, sid: SourceId, kind: str, batch: int, path: Path, key: str, size: int,
    etag: Optional[str], params: list,
) -> int:
    """A features or activations file never recorded before, imported whole, has no rows to
    replace: insert straight from the reader.

    Skipping the staging copy is most of the cost of a first import; a rerun of a changed or
    once-failed file takes the staged path in `_import_file`, which replaces rows.
    """
    select = _READ[kind]
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


def _import_explanations(
    db: Database, sid: SourceId, batch: int, path: Path, key: str, size: int, etag: Optional[str],
    index_range: Optional[tuple[int, int]] = None,
) -> int:
    """An explanations file: rows keyed by explanation id, never by feature or batch.

    export-data.py (utils/neuronpedia-utils/neuronpedia_utils/export-data.py) writes 1,024
    explanation rows a file, `ORDER BY index` with no tiebreak: a feature's rows may be split
    between two files, and a row may even be in two files (and another in none) when Postgres
    orders ties differently per page. So, in one transaction: the file's rows are deduplicated
    by id and replace exactly the stored rows with those ids; a feature that has rows from
    another file too gets its ranks recomputed over all its rows (by explanation id). Files of
    one source go through here one at a time (see `import_source_dir`).
    """
    m, s = sid.model_id, sid.source
    ident = _IDENT.format(t="")
    with db.transaction() as cur:
        try:
            _, lo, hi, cut = _stage(cur, sid, "explanations", path, key, None, index_range)
            rows, distinct, nameless = cur.execute(
                f"SELECT count(*), count(DISTINCT {ident}), count(*) FILTER (WHERE explanation_id IS NULL) FROM _np_import"
            ).fetchall()[0]
            rerank: set[str] = set()
            if distinct < rows:  # a row twice in one file: keep one
                cur.execute(
                    f"""DELETE FROM _np_import WHERE rowid IN (
                          SELECT rowid FROM (SELECT rowid, row_number() OVER (PARTITION BY {ident} ORDER BY rank) AS n
                                             FROM _np_import) WHERE n > 1)"""
                )
                rerank |= {r[0] for r in cur.execute("SELECT DISTINCT feature_key FROM _np_import").fetchall()}
            # the same explanations, stored before (a rerun, or the neighbour file that repeated them)
            same = "explanation_id IN (SELECT explanation_id FROM _np_import WHERE explanation_id IS NOT NULL)"
            if nameless:
                same = f"({same} OR (explanation_id IS NULL AND {ident} IN (SELECT {ident} FROM _np_import)))"
            cur.execute(f"DELETE FROM explanations WHERE origin = 'export' AND model_id = ? AND source = ? AND {same}", [m, s])
            # features with rows from another file (they straddle two files): ranks over all rows
            rerank |= {r[0] for r in cur.execute(
                """SELECT DISTINCT feature_key FROM explanations WHERE origin = 'export' AND model_id = ? AND source = ?
                     AND feature_key IN (SELECT feature_key FROM _np_import)""", [m, s]).fetchall()}
            cur.execute("INSERT INTO explanations BY NAME SELECT * FROM _np_import")
            if rerank:
                _rerank(cur, sid, sorted(rerank))
            rows = cur.execute("SELECT count(*) FROM _np_import").fetchall()[0][0]
            _record_imported(cur, sid, "explanations", batch, key, size, etag, rows, lo, hi,
                             "partial" if cut else "imported")
        finally:
            cur.execute("DROP TABLE IF EXISTS _np_import")
    return int(rows)


def _rerank(cur: duckdb.DuckDBPyConnection, sid: SourceId, keys: list[str]) -> None:
    """Ranks 0..n-1 by explanation id over every export row of these features."""
    cur.execute("DROP TABLE IF EXISTS _np_rerank")
    cur.execute(
        f"""CREATE TEMP TABLE _np_rerank AS
            SELECT * REPLACE (CAST(row_number() OVER (PARTITION BY feature_key ORDER BY {_EXPL_ORDER}) - 1 AS INTEGER) AS rank)
            FROM explanations WHERE origin = 'export' AND model_id = ? AND source = ? AND list_contains(?, feature_key)""",
        [sid.model_id, sid.source, keys],
    )
    cur.execute(
        "DELETE FROM explanations WHERE origin = 'export' AND model_id = ? AND source = ? AND list_contains(?, feature_key)",
        [sid.model_id, sid.source, keys],
    )
    cur.execute("INSERT INTO explanations BY NAME SELECT * FROM _np_rerank")
    cur.execute("DROP TABLE _np_rerank")


def _record_imported(
    cur: duckdb.DuckDBPyConnection, sid: SourceId, kind: str, batch: int, key: str, size: int,
    etag: Optional[str], rows: int, lo: Optional[int], hi: Optional[int], status: str = "imported",
) -> None:
    """`min_index`/`max_index`: the span of the file's own records (all of them, also where
    `index_range` kept fewer): what `activation_gaps` reads as the file's coverage."""
    cur.execute(
        """INSERT INTO export_files (key, model_id, source, kind, batch, size, etag, status, rows_imported,
                                     min_index, max_index, error, imported_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, now())
           ON CONFLICT (key) DO UPDATE SET size = excluded.size, etag = excluded.etag, status = excluded.status,
             rows_imported = excluded.rows_imported, min_index = excluded.min_index,
             max_index = excluded.max_index, error = NULL, imported_at = now()""",
        [key, sid.model_id, sid.source, kind, batch, size, etag, status, rows, lo, hi],
    )
    faults.point("import.before_commit")  # the file's rows and its record written, not committed


def _record_failure(db: Database, sid: SourceId, kind: str, batch: int, key: str, size: int, etag: Optional[str], reason: str) -> None:
    with db.transaction() as cur:
        cur.execute(
            """INSERT INTO export_files (key, model_id, source, kind, batch, size, etag, status, rows_imported, error, imported_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, 'failed', 0, ?, now())
               ON CONFLICT (key) DO UPDATE SET status = 'failed', error = excluded.error, imported_at = now()""",
            [key, sid.model_id, sid.source, kind, batch, size, etag, reason],
        )


def record_failed_download(db: Database, sid: SourceId, key: str, size: int, etag: Optional[str], reason: str) -> None:
    """A batch that could not be downloaded: recorded like one that failed to import, so the
    next sync knows the source's export is incomplete and tries it again."""
    f = parse_key(key)
    if f is None or f.batch is None:
        return
    _record_failure(db, sid, f.kind, f.batch, key, size, etag, reason)


def _refresh_counts(db: Database, sid: SourceId) -> None:
    """n_activations, n_explanations, top_explanation (rank 0) of imported features, in one pass;
    and their UMAP placement, which export-data.py carries on explanation rows only."""
    with db.transaction() as cur:
        cur.execute(
            f"""UPDATE features SET
                   n_activations = coalesce(a.n, 0), n_explanations = coalesce(e.n, 0), top_explanation = e.top,
                   umap_x = coalesce(features.umap_x, e.umap_x), umap_y = coalesce(features.umap_y, e.umap_y),
                   umap_cluster = coalesce(features.umap_cluster, e.umap_cluster),
                   umap_log_feature_sparsity = coalesce(features.umap_log_feature_sparsity, e.umap_log_feature_sparsity)
               FROM (SELECT feature_key FROM features WHERE model_id = ? AND source = ? AND origin = 'export') k
               LEFT JOIN (SELECT feature_key, count(*) AS n FROM activations WHERE model_id = ? AND source = ? GROUP BY 1) a USING (feature_key)
               LEFT JOIN (SELECT feature_key, {EXPLANATION_SUMMARY}
                          FROM explanations WHERE model_id = ? AND source = ? GROUP BY 1) e USING (feature_key)
               WHERE features.feature_key = k.feature_key""",
            [sid.model_id, sid.source] * 3,
        )


def read_export_batch(path: Path, kind: str, *, run_id: Optional[int] = None,
                      connection: Optional[duckdb.DuckDBPyConnection] = None) -> "pa.Table":
    """One export batch file read by the importer's own typed reader, as rows of `kind`'s mirror
    table (every column, map order): a dataset converted straight from the exports then holds
    exactly what an import would have stored. In-file ranks as an import computes them."""
    if kind not in _READ:
        raise ExportError(f"unknown export batch kind {kind!r}")
    params = [run_id, str(path)] if kind == "features" else [str(path)]
    con = connection if connection is not None else duckdb.connect()
    try:
        return con.sql(_READ[kind], params=params).to_arrow_table()
    finally:
        if connection is None:
            con.close()


def import_tree(db: Database, root: Path, *, run_id: Optional[int] = None) -> list[ImportReport]:
    """Import every source folder of a dump already on disk (e.g. after `aws s3 sync --no-sign-request`)."""
    return [import_source_dir(db, path, sid, run_id=run_id) for sid, path in find_source_dirs(Path(root))]
