"""The mirror's tables, versioned. Identifiers live here and only here; values are always parameters.

Typed columns carry what researchers query (`features`, `activations`, `explanations`);
`raw_chunks` carries each fetched feature exactly as the server sent it (see `rawblob.py`),
so nothing is lost when Neuronpedia adds a field before we add a column.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

SCHEMA_VERSION = 1
META_TABLE = "np_mirror_meta"


#: The one column map: table -> (column, DuckDB type). It drives the DDL below and the Arrow
#: schemas the writer builds, so the two cannot drift apart.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "features": [
        ("feature_key", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("source", "VARCHAR NOT NULL"),
        ("index", "INTEGER NOT NULL"),
        ("origin", "VARCHAR NOT NULL"),
        ("max_act_approx", "DOUBLE"),
        ("frac_nonzero", "DOUBLE"),
        ("hook_name", "VARCHAR"),
        ("has_vector", "BOOLEAN"),
        ("umap_x", "DOUBLE"),
        ("umap_y", "DOUBLE"),
        ("umap_cluster", "INTEGER"),
        ("umap_log_feature_sparsity", "DOUBLE"),
        ("topk_cos_sim_indices", "INTEGER[]"),
        ("topk_cos_sim_values", "DOUBLE[]"),
        ("pos_str", "VARCHAR[]"),
        ("pos_values", "DOUBLE[]"),
        ("neg_str", "VARCHAR[]"),
        ("neg_values", "DOUBLE[]"),
        ("n_activations", "INTEGER"),
        ("n_explanations", "INTEGER"),
        ("top_explanation", "VARCHAR"),
        ("run_id", "BIGINT"),
        ("fetched_at", "TIMESTAMP"),
        # An imported feature's record exactly as the export had it (API features keep theirs in raw_chunks).
        ("export_raw", "JSON"),
    ],
    "activations": [
        ("feature_key", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("source", "VARCHAR NOT NULL"),
        ("index", "INTEGER NOT NULL"),
        ("rank", "INTEGER NOT NULL"),
        ("activation_id", "VARCHAR"),
        ("tokens", "VARCHAR[]"),
        ("values", "DOUBLE[]"),
        ("max_value", "DOUBLE"),
        ("max_value_token_index", "INTEGER"),
        ("min_value", "DOUBLE"),
        ("data_source", "VARCHAR"),
        ("data_index", "VARCHAR"),
        ("creator_id", "VARCHAR"),
        ("created_at", "VARCHAR"),
        ("dfa_values", "DOUBLE[]"),
        ("dfa_max_value", "DOUBLE"),
        ("dfa_target_index", "INTEGER"),
        ("loss_values", "DOUBLE[]"),
        ("logit_contributions", "JSON"),
        ("bin_min", "DOUBLE"),
        ("bin_max", "DOUBLE"),
        ("bin_contains", "DOUBLE"),
        ("qualifying_token_index", "INTEGER"),
        ("origin", "VARCHAR NOT NULL"),
    ],
    "explanations": [
        ("feature_key", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("source", "VARCHAR NOT NULL"),
        ("index", "INTEGER NOT NULL"),
        ("rank", "INTEGER NOT NULL"),
        ("explanation_id", "VARCHAR"),
        ("description", "VARCHAR"),
        ("explanation_model_name", "VARCHAR"),
        ("type_name", "VARCHAR"),
        ("scores", "JSON"),
        ("author_id", "VARCHAR"),
        ("embedding", "FLOAT[]"),
        ("umap_x", "DOUBLE"),
        ("umap_y", "DOUBLE"),
        ("umap_cluster", "INTEGER"),
        ("umap_log_feature_sparsity", "DOUBLE"),
        ("origin", "VARCHAR NOT NULL"),
    ],
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

#: version -> statements that bring the previous version to it.
MIGRATIONS: dict[int, list[str]] = {1: _V1}

#: Tables a mirror must have; anything else found in a --db file means it is not ours.
MIRROR_TABLES = ("features", "activations", "explanations", "raw_chunks", "sources", "models", "sync_runs", "failures", "export_files")


def current_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version of an opened file; None if it has no mirror tables at all."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if META_TABLE not in tables:
        return None if not tables else -1
    row = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'schema_version'").fetchall()
    return int(row[0][0]) if row else -1


def migrate(con: duckdb.DuckDBPyConnection, log: Callable[[str], None] | None = None) -> int:
    """Bring an empty or older mirror to `SCHEMA_VERSION` in one transaction."""
    version = current_version(con) or 0
    if version == SCHEMA_VERSION:
        return version
    con.execute("BEGIN TRANSACTION")
    try:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                con.execute(statement)
            if log:
                log(f"mirror schema migrated to version {target}")
        con.execute(
            f"INSERT OR REPLACE INTO {META_TABLE} VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
