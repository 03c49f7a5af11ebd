"""Schema v1 -> v2 -> v3 on a mirror the old code really wrote (tests/fixtures/mirror_v1, written
by np-mirror at 92be9e0 with DuckDB 2.0.1): every row kept, duplicates of one explanation folded,
each explanation's search word count filled in (v3)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import duckdb
import pytest

from npclient.mirror import Mirror
from npclient.store import schema
from npclient.store.database import Database
from npclient.store.words import word_count

FIXTURE = Path(__file__).parent / "fixtures" / "mirror_v1" / "mirror.duckdb.gz"
V1_TABLES = ("features", "activations", "explanations", "raw_chunks", "sources", "models", "sync_runs", "failures",
             "export_files", "weights", "neighbors", "matches")


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "v1.duckdb"
    path.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    return path


def _norm(value):
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def _rows(con: duckdb.DuckDBPyConnection, table: str, columns: list[str]) -> list[tuple]:
    quoted = ", ".join('"' + c + '"' for c in columns)
    return sorted((tuple(_norm(v) for v in r) for r in con.execute(f'SELECT {quoted} FROM "{table}"').fetchall()),
                  key=repr)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]


@pytest.fixture
def v1(tmp_path):
    path = _copy(tmp_path)
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:  # pragma: no cover - only after a DuckDB upgrade
        pytest.fail(f"DuckDB {duckdb.__version__} cannot read the v1 fixture that DuckDB 2.0.1 wrote ({exc}); "
                    "rebuild it with tests/fixtures/mirror_v1/make.py and say so in the change")
    try:
        assert schema.current_version(con) == 1
        before = {t: (_columns(con, t), _rows(con, t, _columns(con, t))) for t in V1_TABLES}
    finally:
        con.close()
    return path, before


def test_v1_mirror_migrates_to_the_current_schema_keeping_every_row(v1):
    path, before = v1
    with Mirror(path) as mirror:  # any use of the file migrates it
        mirror.status()
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert schema.current_version(con) == schema.SCHEMA_VERSION == 3
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert set(schema.MIRROR_TABLES) <= tables
        for table in V1_TABLES:
            if table == "explanations":
                continue
            columns, rows = before[table]
            assert _rows(con, table, columns) == rows, table  # same columns, same rows
        assert {"pid", "host"} <= set(_columns(con, "sync_runs"))

        # explanations: each id once (the API's row first), every other row as it was, and the
        # imported ones ranked 0..n-1 by id per feature
        columns, rows = before["explanations"]
        kept = _rows(con, "explanations", columns)
        rank = columns.index("rank")
        ident = columns.index("explanation_id")
        origin = columns.index("origin")
        without_rank = lambda rs: sorted((r[:rank] + r[rank + 1:] for r in rs), key=repr)  # noqa: E731
        ids = [r[ident] for r in rows if r[ident] is not None]
        assert len(ids) - len(set(ids)) == 1  # the fixture holds one explanation twice
        deduped, seen = [], set()
        for r in sorted(rows, key=lambda r: (r[origin] == "export", r[rank], r[0])):
            if r[ident] is not None and r[ident] in seen:
                continue
            seen.add(r[ident])
            deduped.append(r)
        assert without_rank(kept) == without_rank(deduped)
        assert con.execute("SELECT count(*) - count(DISTINCT explanation_id) FROM explanations "
                           "WHERE explanation_id IS NOT NULL").fetchall()[0][0] == 0
        assert con.execute("SELECT count(*) FROM (SELECT feature_key, rank FROM explanations GROUP BY ALL "
                           "HAVING count(*) > 1)").fetchall()[0][0] == 0
        non_export = [r for r in kept if r[origin] != "export"]
        assert sorted(non_export, key=repr) == sorted((r for r in deduped if r[origin] != "export"), key=repr)
        # v3: the search's word count, as the writer computes it for new rows
        counted = con.execute("SELECT description, n_words FROM explanations").fetchall()
        assert counted and all(n == word_count(d) for d, n in counted)
        assert any(n is not None for _, n in counted)
    finally:
        con.close()
    con = duckdb.connect(str(path))
    try:
        dup = con.execute("SELECT * FROM explanations WHERE explanation_id IS NOT NULL LIMIT 1").fetchall()[0]
        with pytest.raises(duckdb.ConstraintException):  # the declared key holds from now on
            con.execute(f"INSERT INTO explanations VALUES ({', '.join('?' * len(dup))})", list(dup))
    finally:
        con.close()


def test_the_migrated_mirror_reads_as_before(v1):
    path, before = v1
    mirror = Mirror(path)
    keys = {r[0]: r[4] for r in before["features"][1]}  # feature_key -> origin
    for origin in ("get", "post", "export"):
        key = next(k for k, o in keys.items() if o == origin)
        feature = mirror.feature(key)
        assert feature is not None and str(feature.id) == key
    status = {r["source"]: r for r in mirror.status()}
    assert status["gpt2-small/0-res-jb"]["present"] + status["gpt2-small/1-res-jb"]["present"] == len(keys)
    assert [w.source for w in mirror_weights(mirror)] == ["0-res-jb", "1-res-jb"]
    mirror.close()


def mirror_weights(mirror: Mirror):
    from npclient.weights import list_weights

    return list_weights(mirror.db)


def test_a_migration_cut_between_its_transactions_is_finished_next_time(v1):
    """v2 commits its row rewrite before it builds the unique index (DuckDB cannot do both in one
    transaction); a process killed in between leaves version 1, and the next open completes it."""
    path, before = v1
    con = duckdb.connect(str(path))
    first = schema.MIGRATIONS[2][: schema.MIGRATIONS[2].index(schema.COMMIT_POINT)]
    con.execute("BEGIN TRANSACTION")
    for statement in first:
        con.execute(statement)
    con.execute("COMMIT")
    assert schema.current_version(con) == 1
    con.close()
    db = Database(path)
    with db.connect() as cur:
        assert schema.current_version(cur) == schema.SCHEMA_VERSION
        n = cur.execute("SELECT count(*) FROM explanations").fetchall()[0][0]
    db.close()
    assert n == len(before["explanations"][1]) - 1
