"""The mirror's tables, versioned. Identifiers live here and only here; values are always parameters.

Typed columns carry what researchers query (`features`, `activations`, `explanations`);
`raw_chunks` carries each fetched feature exactly as the server sent it (see `rawblob.py`),
so nothing is lost when Neuronpedia adds a field before we add a column.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import duckdb

from ..models import TABLE_COLUMNS
from .words import N_WORDS_SQL

SCHEMA_VERSION = 3
#: In a migration's statement list: commit what came before and go on in a new transaction.
#: DuckDB cannot build a unique index in the transaction that rewrote the indexed rows.
COMMIT_POINT = "-- commit"
META_TABLE = "np_mirror_meta"


#: table -> (column, DuckDB type), read from THE column map (`models.TABLE_COLUMNS`): the DDL
#: below, the writer's Arrow schemas and the importer's reader all come from that one map.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    table: [(c.name, c.sql) for c in columns] for table, columns in TABLE_COLUMNS.items()
}


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ddl(table: str, primary_key: str | None = None) -> str:
    cols = [f"{quote(name)} {sql_type}" for name, sql_type in COLUMNS[table]]
    if primary_key:
        cols.append(f"PRIMARY KEY ({quote(primary_key)})")
    return f"CREATE TABLE {table} (\n    " + ",\n    ".join(cols) + "\n)"


_V1 = [
    f"""CREATE TABLE {META_TABLE} (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    """CREATE TABLE models (
        model_id VARCHAR PRIMARY KEY,
        display_name VARCHAR,
        layers INTEGER,
        dimension INTEGER,
        raw JSON,
        updated_at TIMESTAMP DEFAULT current_timestamp
    )""",
    """CREATE TABLE sources (
        model_id VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        set_name VARCHAR,
        feature_count INTEGER,
        count_origin VARCHAR,
        saelens_release VARCHAR,
        saelens_sae_id VARCHAR,
        hook_name VARCHAR,
        raw JSON,
        updated_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (model_id, source)
    )""",
    _ddl("features", primary_key="feature_key"),
    _ddl("activations"),
    _ddl("explanations"),
    """CREATE TABLE raw_chunks (
        feature_key VARCHAR NOT NULL,
        seq SMALLINT NOT NULL,
        chunk BLOB NOT NULL
    )""",
    """CREATE TABLE export_files (
        key VARCHAR PRIMARY KEY,
        model_id VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        batch INTEGER,
        size BIGINT,
        etag VARCHAR,
        status VARCHAR NOT NULL,
        rows_imported BIGINT,
        min_index INTEGER,
        max_index INTEGER,
        error VARCHAR,
        imported_at TIMESTAMP DEFAULT current_timestamp
    )""",
    "CREATE SEQUENCE sync_run_ids START 1",
    """CREATE TABLE sync_runs (
        run_id BIGINT PRIMARY KEY,
        started_at TIMESTAMP DEFAULT current_timestamp,
        finished_at TIMESTAMP,
        targets VARCHAR,
        options JSON,
        status VARCHAR,
        fetched INTEGER DEFAULT 0,
        present INTEGER DEFAULT 0,
        failed INTEGER DEFAULT 0,
        requests INTEGER DEFAULT 0
    )""",
    """CREATE TABLE failures (
        feature_key VARCHAR PRIMARY KEY,
        model_id VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        "index" INTEGER NOT NULL,
        reason VARCHAR NOT NULL,
        status_code INTEGER,
        message VARCHAR,
        attempts INTEGER DEFAULT 1,
        permanent BOOLEAN DEFAULT false,
        run_id BIGINT,
        first_seen TIMESTAMP DEFAULT current_timestamp,
        last_seen TIMESTAMP DEFAULT current_timestamp
    )""",
    # ART indexes serve point reads by feature (DuckDB uses them for single-column equality).
    "CREATE INDEX activations_by_feature ON activations (feature_key)",
    "CREATE INDEX explanations_by_feature ON explanations (feature_key)",
    "CREATE INDEX raw_chunks_by_feature ON raw_chunks (feature_key)",
]

# v2: every table the mirror has is declared here. v1 mirrors may already hold `weights` and
# the geometry tables (v1 created them on first use), hence IF NOT EXISTS; their columns are
# unchanged. Explanations get a declared key on their id, after the duplicates that versions
# before the fidelity fixes could store are removed (rows from the API kept first) and the
# ranks of imported explanations are rebuilt by id. sync_runs records which process runs it.
_EXPL_ORDER = "explanation_id NULLS LAST, description, explanation_model_name, type_name"
_V2 = [
    """CREATE TABLE IF NOT EXISTS weights (
        model_id VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        loader VARCHAR NOT NULL,
        source_path VARCHAR,
        sha256 VARCHAR,
        tensor_name VARCHAR,
        transposed BOOLEAN NOT NULL DEFAULT false,
        release VARCHAR,
        sae_id VARCHAR,
        architecture VARCHAR,
        output_space BOOLEAN NOT NULL DEFAULT false,
        hook_name VARCHAR,
        neuronpedia_id VARCHAR,
        d_sae INTEGER NOT NULL,
        d_in INTEGER NOT NULL,
        source_dtype VARCHAR,
        dtype VARCHAR NOT NULL,
        nan_rows INTEGER NOT NULL,
        zero_rows INTEGER NOT NULL,
        decoder_path VARCHAR NOT NULL,
        attached_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (model_id, source)
    )""",
    """CREATE TABLE IF NOT EXISTS neighbors (
        model_id VARCHAR NOT NULL, source VARCHAR NOT NULL, "index" INTEGER NOT NULL, rank INTEGER NOT NULL,
        neighbor_index INTEGER, cosine DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS matches (
        model_id VARCHAR NOT NULL, source VARCHAR NOT NULL, "index" INTEGER NOT NULL, against VARCHAR NOT NULL,
        rank INTEGER NOT NULL, match_index INTEGER, cosine DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS coordinates (
        model_id VARCHAR NOT NULL, source VARCHAR NOT NULL, "index" INTEGER NOT NULL, method VARCHAR NOT NULL,
        x DOUBLE, y DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS clusters (
        model_id VARCHAR NOT NULL, source VARCHAR NOT NULL, "index" INTEGER NOT NULL, run VARCHAR NOT NULL,
        label INTEGER, leaf_position INTEGER)""",
    """CREATE TABLE IF NOT EXISTS head_features (
        model_id VARCHAR NOT NULL, source VARCHAR NOT NULL, "index" INTEGER NOT NULL, matrix VARCHAR NOT NULL,
        colspace_fraction DOUBLE, invisible BOOLEAN, suppression DOUBLE, suppressed BOOLEAN)""",
    """CREATE TABLE IF NOT EXISTS source_sets (
        model_id VARCHAR NOT NULL,
        set_name VARCHAR NOT NULL,
        raw JSON,
        updated_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (model_id, set_name)
    )""",
    "ALTER TABLE sync_runs ADD COLUMN IF NOT EXISTS pid INTEGER",
    "ALTER TABLE sync_runs ADD COLUMN IF NOT EXISTS host VARCHAR",
    "DROP TABLE IF EXISTS _np_v2_explanations",
    f"""CREATE TEMP TABLE _np_v2_explanations AS
        SELECT * REPLACE (
            CASE WHEN origin = 'export'
                 THEN CAST(row_number() OVER (PARTITION BY feature_key, origin = 'export' ORDER BY {_EXPL_ORDER}) - 1 AS INTEGER)
                 ELSE rank END AS rank)
        FROM (SELECT * FROM explanations
              QUALIFY explanation_id IS NULL
                   OR row_number() OVER (PARTITION BY explanation_id ORDER BY origin = 'export', rank, feature_key) = 1)""",
    "DELETE FROM explanations",
    "INSERT INTO explanations BY NAME SELECT * FROM _np_v2_explanations",
    "DROP TABLE _np_v2_explanations",
    COMMIT_POINT,
    "CREATE UNIQUE INDEX IF NOT EXISTS explanations_by_id ON explanations (explanation_id)",
]

# v3: each explanation's number of distinct search words, so keyword search ranks in SQL
# (store/search.py); computed here for the rows an older version stored.
_V3 = [
    "ALTER TABLE explanations ADD COLUMN IF NOT EXISTS n_words INTEGER",
    "UPDATE explanations SET n_words = " + N_WORDS_SQL.format(d="description") + " WHERE n_words IS NULL",
]

#: version -> statements that bring the previous version to it.
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2, 3: _V3}

#: Tables a mirror has (schema v2 and after).
MIRROR_TABLES = (
    "features", "activations", "explanations", "raw_chunks", "sources", "source_sets", "models", "sync_runs",
    "failures", "export_files", "weights", "neighbors", "matches", "coordinates", "clusters", "head_features",
)


def current_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version of an opened file; None if it has no mirror tables at all."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if META_TABLE not in tables:
        return None if not tables else -1
    row = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'schema_version'").fetchall()
    return int(row[0][0]) if row else -1


def migrate(con: duckdb.DuckDBPyConnection, log: Callable[[str], None] | None = None) -> int:
    """Bring an empty or older mirror to `SCHEMA_VERSION`.

    Each version's statements run in one transaction (two where a version has a COMMIT_POINT;
    its statements are idempotent, so a run interrupted between the two is finished by the
    next), and the version number is written in the last one: a mirror is never marked with
    a version whose changes it lacks.
    """
    version = current_version(con) or 0
    if version == SCHEMA_VERSION:
        return version
    for target in range(version + 1, SCHEMA_VERSION + 1):
        steps: list[list[str]] = [[]]
        for statement in MIGRATIONS[target]:
            if statement == COMMIT_POINT:
                steps.append([])
            else:
                steps[-1].append(statement)
        for n, statements in enumerate(steps):
            con.execute("BEGIN TRANSACTION")
            try:
                for statement in statements:
                    con.execute(statement)
                if n == len(steps) - 1:
                    con.execute(f"INSERT OR REPLACE INTO {META_TABLE} VALUES ('schema_version', ?)", [str(target)])
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
        if log:
            log(f"mirror schema migrated to version {target}")
    return SCHEMA_VERSION
