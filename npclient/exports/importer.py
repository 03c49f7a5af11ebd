"""Import Neuronpedia's bulk export batches into the mirror with DuckDB's own JSON reader.

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
import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import duckdb
import orjson

from ..errors import ExportError, InvalidIdError
from ..ids import SourceId
from ..models import SourceInfo
from ..store import catalog
from ..store.database import Database
from .layout import parse_key

__all__ = ["ImportReport", "import_source_dir", "import_tree", "find_source_dirs", "source_id_of",
           "record_failed_download", "PART_KINDS"]

PART_KINDS = ("features", "activations", "explanations")
IMPORT_WORKERS = min(2, os.cpu_count() or 1)
_BATCH = re.compile(r"^batch-(\d+)\.jsonl\.gz$")
#: Folders next to the sources of a model that are not sources (layout.NON_SOURCE_FOLDERS).
_NOT_SOURCES = frozenset({"headvis", "jlens"})

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

# Activation ranks follow wire.activation_rank_key: the largest maxValue first (NaN and null
# last: an export may carry a bare NaN), ties by activation id.
_STAGE_ACTIVATIONS = f"""
CREATE TEMP TABLE _np_import AS
SELECT
    {_KEY} AS feature_key, j.modelId AS model_id, j.layer AS source, CAST(j."index" AS INTEGER) AS "index",
    CAST(row_number() OVER (PARTITION BY j.modelId, j.layer, CAST(j."index" AS INTEGER)
                            ORDER BY CASE WHEN isnan(j.maxValue) THEN NULL ELSE j.maxValue END DESC NULLS LAST,
                                     coalesce(j.id, '')) - 1 AS INTEGER) AS rank,
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

# What identifies an explanation row: its id; a record without one (never seen in Neuronpedia's
# exports) by its feature and text, so rerunning its file still replaces it instead of adding it.
_IDENT = (
    "coalesce({t}explanation_id, 'nil' || chr(31) || {t}feature_key || chr(31) || coalesce({t}explanation_model_name, '')"
    " || chr(31) || coalesce({t}type_name, '') || chr(31) || coalesce({t}description, ''))"
)
# Our rank for explanations without scores: by explanation id (cuids sort by creation time).
_EXPL_ORDER = "explanation_id NULLS LAST, description, explanation_model_name, type_name"


@dataclass
class ImportReport:
    source: SourceId
    imported: dict[str, int] = field(default_factory=lambda: {k: 0 for k in PART_KINDS})
    rows: dict[str, int] = field(default_factory=lambda: {k: 0 for k in PART_KINDS})
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # file -> one-line reason
    #: duplicate explanation rows (same explanation id) removed from what an older version stored
    deduplicated: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------- finding sources


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


def _has_batches(folder: Path) -> bool:
    return folder.is_dir() and folder.name not in _NOT_SOURCES and bool(_part_files(folder))


def _source_info(source_dir: Path) -> Optional[SourceInfo]:
    meta = source_dir / "source.jsonl"
    if not meta.is_file():
        return None
    try:
        line = meta.read_bytes().splitlines()[0]
        return SourceInfo.model_validate(json.loads(line))  # json: a metadata row may hold NaN
    except (IndexError, ValueError):
        return None


def _first_record(source_dir: Path) -> Optional[dict]:
    for _, _, path in _part_files(source_dir):
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                line = fh.readline()
            record = json.loads(line) if line.strip() else None
        except (OSError, EOFError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return None


def source_id_of(source_dir: Path, fallback: Optional[SourceId] = None) -> Optional[SourceId]:
    """Which source a folder of batches holds, from what the folder says about itself.

    `source.jsonl` (its `modelId` and `id`, the Source row export-data.py writes), else the first
    record of a batch (`modelId` and `layer`), else `fallback` (e.g. the names of the folders of
    a `v1/{model}/{source}` tree). A folder named `~/Downloads/0-res-jb` or `/tmp/whatever`
    is imported under the id its files carry.
    """
    candidates: list[tuple[object, object]] = []
    info = _source_info(source_dir)
    if info is not None:
        candidates.append((info.model_id, info.id))
    record = _first_record(source_dir)
    if record is not None:
        candidates.append((record.get("modelId"), record.get("layer")))
    for model_id, source in candidates:
        if isinstance(model_id, str) and isinstance(source, str):
            try:
                return SourceId(model_id, source)
            except InvalidIdError:
                continue
    return fallback


def _name_id(model: str, source: str) -> Optional[SourceId]:
    try:
        return SourceId(model, source)
    except InvalidIdError:
        return None


def find_source_dirs(root: Path) -> list[tuple[SourceId, Path]]:
    """Source folders under a dump: `root` itself, `root/{source}`, or `root/[v1/]{model}/{source}`.

    A folder holding `features/`, `activations/` or `explanations*/` batches is a source; its
    id comes from its own files (`source_id_of`), folder names being the last resort. Below the
    root, only folders named like sources (`0-res-jb`) or carrying a `source.jsonl` count:
    `headvis/`, `jlens/` and the like are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root} is not a directory")
    if (root / "v1").is_dir():
        root = root / "v1"

    def is_source(d: Path) -> bool:
        # Sources start with their layer number (`0-res-jb`); `headvis/`, `jlens/` do not.
        named = bool(re.match(r"^[0-9]+-", d.name)) or (d / "source.jsonl").is_file()
        return named and _has_batches(d)

    found: list[tuple[SourceId, Path]] = []

    def add(folder: Path, fallback: Optional[SourceId]) -> None:
        sid = source_id_of(folder, fallback)
        if sid is None:
            raise ExportError(f"cannot tell which source {folder} holds: no source.jsonl, no readable batch record")
        found.append((sid, folder))

    if _has_batches(root):
        add(root, _name_id(root.parent.name, root.name))
    else:
        for first in sorted(p for p in root.iterdir() if p.is_dir()):
            if is_source(first):
                add(first, _name_id(root.name, first.name))
                continue
            for second in sorted(p for p in first.iterdir() if p.is_dir()):
                if is_source(second):  # headvis/, jlens/ and the like have no batches: skipped
                    add(second, _name_id(first.name, second.name))
    if not found:
        raise ExportError(f"no Neuronpedia export source folders under {root}")
    return found


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
    sid = sid or source_id_of(source_dir, _name_id(source_dir.parent.name, source_dir.name))
    if sid is None:
        raise ExportError(f"cannot tell which source {source_dir} holds")
    prefix = key_prefix if key_prefix is not None else f"v1/{sid.model_id}/{sid.source}/"
    report = ImportReport(sid)
    info = _source_info(source_dir)
    if info is not None and (info.id != sid.source or info.model_id not in (None, sid.model_id)):
        info = None  # another source's metadata: not ours to record
    catalog.save_source(db, sid, info, info.d_sae if info and info.d_sae else None,
                        "export source.jsonl" if info and info.d_sae else None)
    wanted = set(parts)
    only = {Path(f).resolve() for f in files} if files is not None else None
    if "explanations" in wanted:
        report.deduplicated = _clean_explanations(db, sid)
    done, seen = _imported_files(db, sid)
    jobs = []
    for kind, batch, path in _part_files(source_dir):
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


def _clean_explanations(db: Database, sid: SourceId) -> int:
    """Once, idempotently: drop duplicate explanation rows (same explanation id) that older
    versions stored, keeping one (the API's if any, else the lowest rank), and give every
    imported feature whose ranks are not 0..n-1 in explanation-id order its ranks back.

    Returns the number of rows removed. A clean source costs one read-only query.
    """
    m, s = sid.model_id, sid.source
    with db.connect() as cur:
        dups, misranked = cur.execute(
            f"""SELECT
                  (SELECT count(*) - count(DISTINCT explanation_id) FROM explanations
                   WHERE model_id = $1 AND source = $2 AND explanation_id IS NOT NULL),
                  (SELECT count(*) FROM (
                     SELECT rank, CAST(row_number() OVER (PARTITION BY feature_key ORDER BY {_EXPL_ORDER}) - 1 AS INTEGER) AS want
                     FROM explanations WHERE model_id = $1 AND source = $2 AND origin = 'export') WHERE rank <> want)""",
            [m, s],
        ).fetchall()[0]
    if not dups and not misranked:
        return 0
    with db.transaction() as cur:
        try:
            cur.execute("DROP TABLE IF EXISTS _np_clean")
            cur.execute(
                f"""CREATE TEMP TABLE _np_clean AS
                    SELECT * REPLACE (
                        CASE WHEN origin = 'export'
                             THEN CAST(row_number() OVER (PARTITION BY feature_key, origin = 'export' ORDER BY {_EXPL_ORDER}) - 1 AS INTEGER)
                             ELSE rank END AS rank)
                    FROM (
                        SELECT * FROM explanations WHERE model_id = $1 AND source = $2
                        QUALIFY explanation_id IS NULL
                             OR row_number() OVER (PARTITION BY explanation_id ORDER BY origin = 'export', rank, feature_key) = 1
                    )""",
                [m, s],
            )
            before = cur.execute("SELECT count(*) FROM explanations WHERE model_id = ? AND source = ?", [m, s]).fetchall()[0][0]
            cur.execute("DELETE FROM explanations WHERE model_id = ? AND source = ?", [m, s])
            cur.execute("INSERT INTO explanations BY NAME SELECT * FROM _np_clean")
            after = cur.execute("SELECT count(*) FROM _np_clean").fetchall()[0][0]
        finally:
            cur.execute("DROP TABLE IF EXISTS _np_clean")
    return int(before - after)


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
            """UPDATE features SET
                   n_activations = coalesce(a.n, 0), n_explanations = coalesce(e.n, 0), top_explanation = e.top,
                   umap_x = coalesce(features.umap_x, e.umap_x), umap_y = coalesce(features.umap_y, e.umap_y),
                   umap_cluster = coalesce(features.umap_cluster, e.umap_cluster),
                   umap_log_feature_sparsity = coalesce(features.umap_log_feature_sparsity, e.umap_log_feature_sparsity)
               FROM (SELECT feature_key FROM features WHERE model_id = ? AND source = ? AND origin = 'export') k
               LEFT JOIN (SELECT feature_key, count(*) AS n FROM activations WHERE model_id = ? AND source = ? GROUP BY 1) a USING (feature_key)
               LEFT JOIN (SELECT feature_key, count(*) AS n, arg_min(description, rank) AS top,
                                 arg_min(umap_x, rank) AS umap_x, arg_min(umap_y, rank) AS umap_y,
                                 arg_min(umap_cluster, rank) AS umap_cluster,
                                 arg_min(umap_log_feature_sparsity, rank) AS umap_log_feature_sparsity
                          FROM explanations WHERE model_id = ? AND source = ? GROUP BY 1) e USING (feature_key)
               WHERE features.feature_key = k.feature_key""",
            [sid.model_id, sid.source] * 3,
        )


def import_tree(db: Database, root: Path, *, run_id: Optional[int] = None) -> list[ImportReport]:
    """Import every source folder of a dump already on disk (e.g. after `aws s3 sync --no-sign-request`)."""
    return [import_source_dir(db, path, sid, run_id=run_id) for sid, path in find_source_dirs(Path(root))]
