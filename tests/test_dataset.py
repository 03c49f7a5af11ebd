"""The shared Parquet dataset (issue 15, section 1) on a mirror synced from the emulator: units
with commit markers, `dataset status|verify`, a crash at each fault point (no temp file, no
duplicate key, the retry rewrites the same rows), the `ds_*` views equal to the mirror's tables,
`import --from-dataset` equal to the original rows, and Polars reading the same files. The
neurons source `5` stays the string "5" everywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pytest

from helpers import LIGHT, run_cli
from np_mirror.app import main
from npclient import SourceId
from npclient.dataset import markers, open_location, read_rows, status, sweep, verify
from npclient.dataset.location import TEMP_NAME
from npclient.mirror import Mirror
from npclient.testing import EmulatorConfig, EmulatorServer, SourceSpec

M = "gpt2-small"
SAE = SourceId(M, "0-res-jb")
NEURONS = SourceId(M, "5")
D_SAE, D_NEURONS, UNIT = 80, 40, 32
TABLES = ("features", "activations", "explanations")
KEYS = {"features": "feature_key", "activations": "feature_key, rank", "explanations": "feature_key, rank",
        "raw_chunks": "feature_key, seq"}


@pytest.fixture(scope="module")
def mirror_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dataset")
    config = EmulatorConfig(sources=(SourceSpec(M, SAE.source, d_sae=D_SAE, d_in=32),
                                     SourceSpec(M, NEURONS.source, d_sae=D_NEURONS, d_in=32)), **LIGHT)
    server = EmulatorServer(config).start()
    try:
        with Mirror(tmp / "m.duckdb", linger_s=0) as mirror:
            for sid in (SAE, NEURONS):
                assert mirror.sync(sid, base_url=server.url, exports=False, full=True, rate=10_000.0).failed == 0
    finally:
        server.stop()
    return tmp / "m.duckdb"


@pytest.fixture(scope="module")
def written(mirror_file, tmp_path_factory):
    """The mirror written as a dataset by the CLI, units of 32 features."""
    ds = tmp_path_factory.mktemp("ds") / "np"
    assert main(["dataset", "write", str(ds), "--db", str(mirror_file), "--unit-features", str(UNIT)]) == 0
    return ds


def _mirror_rows(db: Path, table: str, sources=(SAE, NEURONS), prefix: str = "") -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        where = " OR ".join(f"(model_id = '{s.model_id}' AND source = '{s.source}')" for s in sources)
        if table == "raw_chunks":
            where = f"feature_key IN (SELECT feature_key FROM {prefix}features WHERE {where})"
        return con.execute(f"SELECT * FROM {prefix}{table} WHERE {where} ORDER BY {KEYS[table]}").fetchall()
    finally:
        con.close()


def _file_rows(ds: Path, table: str) -> list[tuple]:
    """Every row of every Parquet file of `table` (committed or not), read by DuckDB directly."""
    drop = " EXCLUDE (raw_json)" if table == "features" else ""
    return duckdb.sql(f"SELECT *{drop} FROM read_parquet('{ds}/{table}/*/*/*.parquet', hive_partitioning = true, "
                      "hive_types = {'model': VARCHAR, 'source': VARCHAR})").fetchall()


def _temp_files(ds: Path) -> list[Path]:
    return [p for p in ds.rglob("*") if TEMP_NAME.match(p.name)]


def test_units_markers_status_and_verify(written, mirror_file, capsys):
    loc = open_location(written)
    units = markers(loc)
    # 80 features in units of 32 -> 3 units; 40 -> 2; one file and one marker per unit and table
    assert len(units) == 3 * (3 + 2)
    assert sorted({(u.source, u.start, u.stop) for u in units}) == [
        ("0-res-jb", 0, 32), ("0-res-jb", 32, 64), ("0-res-jb", 64, 80), ("5", 0, 32), ("5", 32, 40)]
    for unit, marker in units.items():
        assert (written / unit.data_key).stat().st_size == marker["size"]
        assert marker["index_range"] == [unit.start, unit.stop] and marker["code_version"].startswith("np-mirror")
    code, out, err = run_cli(capsys, "dataset", "status", written, "--format", "json")
    assert code == 0, err
    rows = {(r["table"], r["source"]): r for r in orjson.loads(out)}
    assert rows[("features", "0-res-jb")]["rows"] == D_SAE and rows[("features", "5")]["rows"] == D_NEURONS
    assert rows[("features", "5")]["feature_count"] == D_NEURONS
    for table in TABLES:
        assert sum(r["rows"] for (t, _), r in rows.items() if t == table) == len(_mirror_rows(mirror_file, table))
    code, out, err = run_cli(capsys, "dataset", "verify", written)
    assert code == 0, err
    manifest = orjson.loads((written / "_np" / "manifest.json").read_bytes())
    assert manifest["ok"] is True and len(manifest["units"]) == len(units)
    # a committed file damaged afterwards: verify says so (exit 1), status (sizes only) too if it shrank
    victim = written / next(iter(units)).data_key
    saved = victim.read_bytes()
    try:
        victim.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
        code, _, err = run_cli(capsys, "dataset", "verify", written)
        assert code == 1 and "sha256" in err
    finally:
        victim.write_bytes(saved)


def test_a_rerun_skips_committed_units_and_rewrites_identical_bytes(written, mirror_file, tmp_path, capsys):
    copy = tmp_path / "np"
    shutil.copytree(written, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*.parquet")}
    code, _, err = run_cli(capsys, "dataset", "write", copy, "--db", mirror_file, "--unit-features", UNIT)
    assert code == 0 and ": 0 units written" in err and f"{len(before)} already committed" in err, err
    code, _, err = run_cli(capsys, "dataset", "write", copy, "--db", mirror_file, "--unit-features", UNIT, "--rewrite")
    assert code == 0 and f"{len(before)} units written" in err, err
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*.parquet")} == before


def test_a_unit_changed_in_the_mirror_is_written_again(written, mirror_file, tmp_path, capsys):
    """A mirror that held features 0..69 of the SAE, then all 80 (a sync went further): the
    second write replaces the last unit and leaves the rest."""
    partial = tmp_path / "partial.duckdb"
    shutil.copyfile(mirror_file, partial)
    con = duckdb.connect(str(partial))
    for table in ("activations", "explanations", "raw_chunks", "features"):
        con.execute(f"DELETE FROM {table} WHERE feature_key IN (SELECT feature_key FROM features "
                    f"WHERE source = '{SAE.source}' AND \"index\" >= 70)")
    con.close()
    ds = tmp_path / "np"
    assert run_cli(capsys, "dataset", "write", ds, str(SAE), "--db", partial, "--unit-features", UNIT)[0] == 0
    last = {u: m for u, m in markers(open_location(ds), "features").items() if u.start == 64}
    assert [m["rows"] for m in last.values()] == [6]
    code, _, err = run_cli(capsys, "dataset", "write", ds, str(SAE), "--db", mirror_file, "--unit-features", UNIT)
    assert code == 0 and "3 units written" in err and "6 already committed" in err, err
    assert verify(open_location(ds)).ok
    _no_duplicates(ds)
    assert sorted(_file_rows(ds, "features")) == sorted(
        r for r in _file_rows_of_mirror(mirror_file, "features") if r[-1] == SAE.source)


def _write_killed_at(point: str, ds: Path, db: Path, job: str) -> None:
    env = {**os.environ, "NP_MIRROR_FAULT": f"{point}:4"}
    proc = subprocess.run([sys.executable, "-m", "np_mirror.app", "dataset", "write", str(ds), "--db", str(db),
                           "--unit-features", str(UNIT), "--job-id", job], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr  # SIGKILL at the fault point, not an error


def _no_duplicates(ds: Path) -> None:
    for table in TABLES:
        keys = [r[0] if table == "features" else (r[0], r[-1]) for r in
                duckdb.sql(f"SELECT feature_key, {'rank' if table != 'features' else 'index'} FROM "
                           f"read_parquet('{ds}/{table}/*/*/*.parquet')").fetchall()]
        assert len(keys) == len(set(keys)), table


def test_killed_between_the_write_and_the_marker(mirror_file, tmp_path, capsys):
    ds = tmp_path / "np"
    _write_killed_at("dataset.before_marker", ds, mirror_file, "crashA")
    loc = open_location(ds)
    report = status(loc)
    assert report.ok and any("without a commit marker" in n for n in report.notes)
    assert _temp_files(ds) == []  # the file was renamed whole before the kill
    code, _, err = run_cli(capsys, "dataset", "write", ds, "--db", mirror_file, "--unit-features", UNIT)
    assert code == 0, err
    assert _temp_files(ds) == [] and verify(loc).ok and not verify(loc).notes
    _no_duplicates(ds)
    for table in TABLES:
        assert sorted(_file_rows(ds, table)) == sorted(_file_rows_of_mirror(mirror_file, table))


def _file_rows_of_mirror(db: Path, table: str) -> list[tuple]:
    """The mirror's rows as the files hold them (model/source as the trailing hive columns)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(f"SELECT * EXCLUDE (model_id, source), model_id, source FROM {table}").fetchall()
    finally:
        con.close()


def test_killed_before_the_rename_leaves_a_leased_temp_file_that_only_an_expired_lease_sweeps(
        mirror_file, tmp_path, capsys):
    ds = tmp_path / "np"
    _write_killed_at("dataset.before_rename", ds, mirror_file, "crashB")
    temps = _temp_files(ds)
    assert len(temps) == 1 and TEMP_NAME.match(temps[0].name)["job"] == "crashB"
    assert TEMP_NAME.match(temps[0].name)["name"].endswith(".parquet")
    until = int(TEMP_NAME.match(temps[0].name)["until"])
    loc = open_location(ds)
    assert not any(p.name.endswith(".parquet") and p.name.startswith(".") for p in ds.rglob("*"))
    # another job finishes the work; its sweep leaves the crashed job's file alone while the lease runs
    code, _, err = run_cli(capsys, "dataset", "write", ds, "--db", mirror_file, "--unit-features", UNIT, "--job-id", "jobC")
    assert code == 0, err
    assert _temp_files(ds) == temps and verify(loc).ok
    assert sweep(loc, now=until - 1) == []
    assert sweep(loc, now=until + 1) == [str(temps[0].relative_to(ds))]
    assert _temp_files(ds) == []
    _no_duplicates(ds)
    for table in TABLES:
        assert sorted(_file_rows(ds, table)) == sorted(_file_rows_of_mirror(mirror_file, table))


def test_views_answer_the_mirrors_rows(written, mirror_file, tmp_path, capsys):
    copy = tmp_path / "m.duckdb"
    shutil.copyfile(mirror_file, copy)
    with Mirror(copy, read_only=True, dataset=written, linger_s=0) as mirror:
        for table in TABLES:
            view = mirror.sql(f"SELECT * FROM ds_{table} ORDER BY {KEYS[table]}")
            own = mirror.sql(f"SELECT * FROM {table} ORDER BY {KEYS[table]}")
            assert view.schema.names == own.schema.names
            assert view.to_pylist() == own.to_pylist(), table
        assert mirror.sql("SELECT DISTINCT typeof(source) AS t FROM ds_features").column("t").to_pylist() == ["VARCHAR"]
        assert mirror.sql("SELECT count(*) AS n FROM ds_features WHERE source = '5'").column("n")[0].as_py() == D_NEURONS
    # the CLI's attach stores the views in the file: a later command reads them
    code, _, err = run_cli(capsys, "dataset", "attach", written, "--db", copy)
    assert code == 0, err
    code, out, err = run_cli(capsys, "sql", "SELECT count(*) AS n FROM ds_activations", "--db", copy, "--format", "json")
    assert code == 0, err
    assert orjson.loads(out)[0]["n"] == len(_mirror_rows(mirror_file, "activations"))


def test_import_from_dataset_equals_the_original_rows(written, mirror_file, tmp_path, capsys):
    fresh = tmp_path / "fresh.duckdb"
    code, _, err = run_cli(capsys, "import", "--from-dataset", written, str(NEURONS), str(SAE), "--db", fresh)
    assert code == 0, err
    for table in (*TABLES, "raw_chunks"):
        assert _mirror_rows(fresh, table) == _mirror_rows(mirror_file, table), table
    # again: the rows are replaced, never doubled
    code, _, err = run_cli(capsys, "import", "--from-dataset", written, str(NEURONS), "--db", fresh)
    assert code == 0, err
    for table in TABLES:
        assert _mirror_rows(fresh, table) == _mirror_rows(mirror_file, table), table
    # the fetched bodies travel in the features files' raw_json: the copy answers feature() alike
    with Mirror(fresh, read_only=True, linger_s=0) as copy, Mirror(mirror_file, read_only=True, linger_s=0) as orig:
        for fid in (f"{NEURONS}/3", f"{SAE}/79"):
            assert copy.feature(fid).raw == orig.feature(fid).raw
    code, _, err = run_cli(capsys, "import", "--from-dataset", written, f"{M}/9-res-jb", "--db", fresh)
    assert code == 2 and "not in the dataset" in err


def test_the_neurons_source_stays_a_string(written):
    rows = read_rows(open_location(written), "features", [NEURONS])
    assert rows.schema.field("source").type == pa.string()
    assert set(rows.column("source").to_pylist()) == {"5"} and rows.num_rows == D_NEURONS


def test_polars_reads_the_same_files(written, mirror_file):
    pl = pytest.importorskip("polars")
    frame = pl.scan_parquet(f"{written}/features/**/*.parquet", hive_partitioning=True,
                            hive_schema={"model": pl.String, "source": pl.String}).collect()
    assert frame.schema["source"] == pl.String
    got = sorted(zip(frame["model"].to_list(), frame["source"].to_list(), frame["index"].to_list(),
                     frame["top_explanation"].to_list()))
    con = duckdb.connect(str(mirror_file), read_only=True)
    try:
        want = sorted(con.execute('SELECT model_id, source, "index", top_explanation FROM features').fetchall())
    finally:
        con.close()
    assert got == want


def test_an_s3_dataset_written_verified_read_in_place_and_copied(s3_endpoint, mirror_file, tmp_path, capsys):
    url = "s3://np-data/v1"
    code, _, err = run_cli(capsys, "dataset", "write", url, str(NEURONS), "--db", mirror_file, "--unit-features", UNIT)
    assert code == 0, err
    loc = open_location(url)
    units = markers(loc)
    assert len(units) == 3 * 2 and all(m["etag"] for m in units.values())
    code, _, err = run_cli(capsys, "dataset", "verify", url)
    assert code == 0, err
    assert loc.exists("_np/manifest.json")
    copy = tmp_path / "m.duckdb"
    shutil.copyfile(mirror_file, copy)
    with Mirror(copy, read_only=True, dataset=url, linger_s=0) as mirror:
        for table in TABLES:
            view = mirror.sql(f"SELECT * FROM ds_{table} ORDER BY {KEYS[table]}").to_pylist()
            assert view == mirror.sql(f"SELECT * FROM {table} WHERE source = '5' ORDER BY {KEYS[table]}").to_pylist()
    code, _, err = run_cli(capsys, "dataset", "attach", url, "--db", copy)
    assert code == 2 and "httpfs" in err
    fresh = tmp_path / "fresh.duckdb"
    code, _, err = run_cli(capsys, "import", "--from-dataset", url, str(NEURONS), "--db", fresh)
    assert code == 0, err
    for table in (*TABLES, "raw_chunks"):
        assert _mirror_rows(fresh, table, [NEURONS]) == _mirror_rows(mirror_file, table, [NEURONS]), table


def test_bad_input_is_one_line_and_exit_2(mirror_file, written, tmp_path, capsys):
    code, _, err = run_cli(capsys, "dataset", "status", tmp_path / "nowhere")
    assert code == 2 and "no dataset at" in err
    afile = tmp_path / "file"
    afile.write_text("x")
    code, _, err = run_cli(capsys, "dataset", "write", afile, "--db", mirror_file)
    assert code == 2 and "is a file" in err
    code, _, err = run_cli(capsys, "dataset", "write", tmp_path / "ds", f"{M}/9-res-jb", "--db", mirror_file)
    assert code == 2 and "not in the mirror" in err and not (tmp_path / "ds").exists()
    code, _, err = run_cli(capsys, "import", "--from-dataset", written, "--db", tmp_path / "m.duckdb")
    assert code == 2 and "name the sources" in err
