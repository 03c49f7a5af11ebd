"""THE column map (`models.TABLE_COLUMNS`) is what the DDL, the writer, the export importer,
the rebuilding of imported features and the Parquet export all use."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq
import pytest

from npclient.mirror import Mirror
from npclient.models import TABLE_COLUMNS
from npclient.store import importer, reads
from npclient.store.writer import arrow_schema
from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
from npclient.testing.emulator.exports import ExportQuirks, write_export

TABLES = tuple(TABLE_COLUMNS)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("one-map")
    state = EmulatorState(EmulatorConfig(sources=(SourceSpec("gpt2-small", "0-res-jb", d_sae=40),),
                                         n_activations=(2, 3), tokens_per_activation=(4, 6)))
    write_export(state, root / "dump", quirks=ExportQuirks(non_source_folders=False), compresslevel=1)
    mirror = Mirror(root / "m.duckdb", linger_s=0)
    mirror.import_(root / "dump")
    return root, mirror


@pytest.mark.parametrize("table", TABLES)
def test_the_ddl_is_the_map(imported, table):
    _, mirror = imported
    described = [(r["column_name"], r["column_type"], r["null"]) for r in mirror.store.rows(f'DESCRIBE "{table}"')]
    want = [(c.name, c.base_type, "NO" if c.sql.endswith("NOT NULL") else "YES") for c in TABLE_COLUMNS[table]]
    assert described == want


@pytest.mark.parametrize("table", TABLES)
def test_the_writer_is_the_map(table):
    assert arrow_schema(table).names == [c.name for c in TABLE_COLUMNS[table]]


@pytest.mark.parametrize("table", TABLES)
def test_the_importer_reads_the_map(imported, table):
    root, _ = imported
    exported = {c.api for c in TABLE_COLUMNS[table] if c.api is not None} - {"scores"}
    assert set(importer.read_types(table)) == exported
    # the staging query makes exactly the map's columns, in order, from a real export file
    folder = root / "dump" / "v1" / "gpt2-small" / "0-res-jb" / ("explanations" if table == "explanations" else table)
    path = sorted(folder.glob("batch-*.jsonl.gz"))[0]
    select = importer._STAGE[table].replace("CREATE TEMP TABLE _np_import AS", "", 1)
    params = [None, str(path)] if table == "features" else [str(path)]
    con = duckdb.connect()
    try:
        names = [d[0] for d in con.execute(f"SELECT * FROM ({select}) LIMIT 0", params).description]
    finally:
        con.close()
    assert names == [c.name for c in TABLE_COLUMNS[table]]


def test_imported_features_are_rebuilt_from_the_map(imported):
    _, mirror = imported
    for table, fields in reads.REBUILT_FIELDS.items():
        mapped = {c.name: c.api for c in TABLE_COLUMNS[table] if c.api is not None}
        assert fields.items() <= mapped.items()
    feature = mirror.feature("gpt2-small/0-res-jb/3")
    assert feature is not None and feature.activations
    names = set(feature.raw["activations"][0])
    assert names <= set(reads.REBUILT_FIELDS["activations"].values()) | {"index"}


def test_the_parquet_export_is_the_map(imported, tmp_path):
    _, mirror = imported
    mirror.export_parquet(tmp_path / "pq")
    for table in TABLES:
        files = sorted((tmp_path / "pq" / table).rglob("*.parquet"))
        assert files, table
        columns = pq.read_schema(files[0]).names
        # hive partitions carry model and source; every other column is the map's, in order
        want = [c.name for c in TABLE_COLUMNS[table] if c.name not in ("model_id", "source")]
        assert [c for c in columns if c not in ("model", "source")] == want
