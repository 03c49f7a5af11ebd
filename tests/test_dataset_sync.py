"""Issue 15, section 2: `np-mirror dataset sync` writes the shared dataset straight from the bulk
exports (the emulator's export served by its S3 stand-in), with `--engine local` (in-process,
the reference) and `--engine ray` (one task per export object, on the session's local cluster).
Every table read back through the `ds_*` views equals a local `import` of the same export,
the columns that span batches (`n_explanations`, `top_explanation`) included; a worker killed
before the write or between the write and the marker is retried to the same result, with no
temp file and no duplicate key; a rerun skips committed units; bad input is exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from helpers import LIGHT, run_cli
from npclient import SourceId
from npclient.dataset import markers, open_location, verify
from npclient.dataset.exports_units import stage_keys
from npclient.dataset.location import TEMP_NAME
from npclient.dataset.sync import dataset_sync
from npclient.mirror import Mirror
from npclient.store.importer import import_tree
from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
from npclient.testing.emulator.exports import ExportQuirks, exported_explanation_ids, write_export
from npclient.testing.emulator.s3 import S3Server

M = "gpt2-small"
SAE = SourceId(M, "3-res-jb")
SMALL = SourceId(M, "4-res-jb")
BS = 64
#: export-data.py's layout at a small batch, with the irregularities that matter here: rows of one
#: index ordered differently per explanations page (a row in two batches, another in none), string
#: and list embeddings, int indices now and then.
QUIRKS = ExportQuirks(batch_size=BS, explanation_ties="per_page", embedding_style="mixed", index_as_int_fraction=0.2,
                      non_source_folders=True)
KEYS = {"features": "feature_key", "activations": "feature_key, rank", "explanations": "feature_key, rank"}
BOOKKEEPING = ("fetched_at", "run_id")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """The export of two sources (with holes) and its reference mirror: `import_tree`, what
    `np-mirror import` does."""
    tmp = tmp_path_factory.mktemp("dsync")
    state = EmulatorState(EmulatorConfig(sources=(SourceSpec(M, SAE.source, d_sae=300), SourceSpec(M, SMALL.source, d_sae=70)),
                                         hole_rate=0.03, seed=5, **LIGHT))
    root = tmp / "bucket"
    write_export(state, root, quirks=QUIRKS, compresslevel=1)
    import_tree(Mirror(tmp / "ref.duckdb").db, root)
    with S3Server(root) as s3:
        yield {"state": state, "root": root, "url": s3.bucket_url, "ref": tmp / "ref.duckdb", "s3": s3}


def contents_of_reference(path: Path) -> dict[str, list[str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: _rows(con, t, t) for t in KEYS}
    finally:
        con.close()


def _rows(con, relation: str, table: str) -> list[str]:
    cols = [r[0] for r in con.execute(f"DESCRIBE {relation}").fetchall() if r[0] not in BOOKKEEPING]
    quoted = ", ".join(f'"{c}"' for c in cols)
    return [repr(r) for r in con.execute(f"SELECT {quoted} FROM {relation} ORDER BY {KEYS[table]}").fetchall()]  # NaN-safe


def contents_of_dataset(ds: Path, tmp: Path) -> dict[str, list[str]]:
    """Every table as the `ds_*` views read it (bookkeeping columns aside)."""
    with Mirror(tmp / f"views-{ds.name}.duckdb", dataset=str(ds)) as mirror:
        with mirror.store.db.connect() as con:
            return {t: _rows(con, f"ds_{t}", t) for t in KEYS}


def assert_sound(ds: Path) -> None:
    """No temp file, no duplicate key in any table, and `verify` finds nothing wrong."""
    assert not [p for p in ds.rglob("*") if TEMP_NAME.match(p.name)]
    report = verify(open_location(ds))
    assert report.ok, report.problems
    glob = f"{ds}/{{t}}/model=*/source=*/*.parquet"
    con = duckdb.connect()
    for table, key in (("features", "feature_key"), ("activations", "feature_key, rank"),
                       ("explanations", "explanation_id"), ("explanations", "feature_key, rank")):
        dup = con.execute(f"SELECT count(*) FROM (SELECT {key} FROM read_parquet('{glob.format(t=table)}') "
                          f"WHERE {key.split(',')[0]} IS NOT NULL GROUP BY ALL HAVING count(*) > 1)").fetchall()[0][0]
        assert dup == 0, (table, key)


@pytest.fixture(scope="module")
def local_ds(bucket, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    summary = dataset_sync(str(tmp / "ds"), sources=[SAE, SMALL], exports_url=bucket["url"], cache=tmp / "cache",
                           workers=2, unit_features=128, api=False)
    assert summary.exit_code == 0
    return tmp / "ds", summary


def test_the_export_batches_really_overlap(bucket):
    """The case the reduce exists for: explanation batches that repeat a row (and straddle)."""
    ids = exported_explanation_ids(bucket["state"], str(SAE), QUIRKS)
    flat = [i for page in ids for i in page]
    assert len(ids) > 2 and len(set(flat)) < len(flat)


def test_local_engine_equals_the_import(bucket, local_ds, tmp_path):
    ds, summary = local_ds
    assert_sound(ds)
    ref = contents_of_reference(bucket["ref"])
    got = contents_of_dataset(ds, tmp_path)
    for table in KEYS:
        assert got[table] == ref[table], table
    # the reduced columns are there (not null) where the import has them
    con = duckdb.connect()
    reduced = con.execute(f"SELECT count(*) FILTER (WHERE top_explanation IS NOT NULL), sum(n_explanations) "
                          f"FROM read_parquet('{ds}/features/*/*/*.parquet')").fetchall()[0]
    assert reduced[0] > 0 and reduced[1] == len(ref["explanations"])
    # an explanation that two batches repeat is in the intermediate files twice, in the dataset once
    loc = open_location(ds)
    staged = sum(duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{loc.path(k)}')").fetchall()[0][0]
                 for k in stage_keys(loc, M, SAE.source, "explanations"))
    assert staged > len([r for r in ref["explanations"] if SAE.source in r])
    # units of `unit_features` features, the last one ending at the source's feature count
    assert loc.exists(f"features/model={M}/source={SMALL.source}/part-0000000000-0000000070.parquet")
    assert loc.exists(f"features/model={M}/source={SAE.source}/part-0000000256-0000000300.parquet")
    assert [p.source for p in summary.sources] == [SAE, SMALL]
    assert all(p.imported and not p.export_failed for p in summary.sources)


def test_an_s3_dataset_synced_equals_the_local_folder(bucket, local_ds, s3_endpoint, tmp_path):
    """The same job into `s3://` (moto's server; pyarrow's S3 filesystem, one PUT a file): the same
    rows as the folder, every marker with the object's ETag, `verify` clean, a rerun writes nothing."""
    url = "s3://np-data/synced"
    kwargs = dict(sources=[SAE, SMALL], exports_url=bucket["url"], cache=tmp_path / "cache", workers=2,
                  unit_features=128, api=False)
    assert dataset_sync(url, **kwargs).exit_code == 0
    loc = open_location(url)
    report = verify(loc)
    assert report.ok, report.problems
    committed = markers(loc)
    assert committed and all(m["etag"] for m in committed.values())
    with Mirror(tmp_path / "s3-views.duckdb", dataset=url) as mirror:
        with mirror.store.db.connect() as con:
            got = {t: _rows(con, f"ds_{t}", t) for t in KEYS}
    assert got == contents_of_dataset(local_ds[0], tmp_path)
    again = dataset_sync(url, **kwargs)
    assert again.exit_code == 0 and again.skipped == again.units > 0 and again.reduce_written == 0


def test_a_rerun_skips_committed_units(bucket, local_ds, tmp_path, capsys):
    ds, first = local_ds
    before = {p: p.stat().st_mtime_ns for p in ds.rglob("*.parquet")}
    code, _, err = run_cli(capsys, "dataset", "sync", ds, SAE, SMALL, "--exports-url", bucket["url"], "--cache",
                       tmp_path / "other-cache", "--unit-features", 128, "--exports-only", "-q")
    assert code == 0
    assert f"{first.units} export files ({first.units} already committed, 0 bytes downloaded)" in err
    assert "reduce: 0 units written" in err
    assert f"{SAE}: exports: " in err  # the local sync's summary lines
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*.parquet")} == before


def test_a_failed_export_file_leaves_its_source_unreduced_until_a_rerun(bucket, local_ds, tmp_path, capsys):
    from npclient.testing.emulator.s3 import S3Faults

    ds, _ = local_ds
    broken = f"v1/{M}/{SAE.source}/explanations/batch-1.jsonl.gz"
    args = ["dataset", "sync", tmp_path / "ds", SAE, SMALL, "--exports-url", bucket["url"], "--cache", tmp_path / "cache",
            "--unit-features", 128, "--exports-only", "-q"]
    bucket["s3"].faults = S3Faults(missing=frozenset({broken}))
    try:
        code, _, err = run_cli(capsys, *args)
    finally:
        bucket["s3"].faults = S3Faults()
    assert code == 1 and f"export file failed: {broken}" in err and "not reduced" in err
    assert not list((tmp_path / "ds" / "features").glob(f"model={M}/source={SAE.source}/*.parquet"))
    assert list((tmp_path / "ds" / "features").glob(f"model={M}/source={SMALL.source}/*.parquet"))  # the other one is done
    code, _, err = run_cli(capsys, *args)
    assert code == 0
    assert_sound(tmp_path / "ds")
    assert contents_of_dataset(tmp_path / "ds", tmp_path) == contents_of_dataset(ds, tmp_path)


def test_ray_engine_equals_the_local_engine(bucket, local_ds, ray_cluster, tmp_path):
    ds, _ = local_ds
    summary = dataset_sync(str(tmp_path / "ds"), sources=[SAE, SMALL], engine="ray", exports_url=bucket["url"],
                           cache=tmp_path / "cache", unit_features=128, api=False)
    assert summary.exit_code == 0 and summary.skipped == 0
    assert_sound(tmp_path / "ds")
    assert contents_of_dataset(tmp_path / "ds", tmp_path) == contents_of_dataset(ds, tmp_path)
    assert sorted(p.relative_to(tmp_path / "ds") for p in (tmp_path / "ds").rglob("*.parquet")) == \
        sorted(p.relative_to(ds) for p in ds.rglob("*.parquet"))  # the same units, in the same places


@pytest.mark.parametrize("point", ["dataset.before_rename", "dataset.before_marker"])
def test_a_worker_killed_mid_unit_is_retried_to_the_same_dataset(point, bucket, local_ds, ray_cluster, tmp_path,
                                                                 monkeypatch):
    from npclient.distributed import dataset_sync as ray_sync

    ds, _ = local_ds
    monkeypatch.setenv("NP_MIRROR_FAULT", f"{point}:1")
    summary = dataset_sync(str(tmp_path / "ds"), sources=[SAE, SMALL], engine="ray", exports_url=bucket["url"],
                           cache=tmp_path / "cache", unit_features=128, api=False)
    monkeypatch.delenv("NP_MIRROR_FAULT")
    armed = Path(ray_sync.last_run.fault_dir) / "armed"
    pid = int(armed.read_text())  # the worker that reached the point first: it killed itself there
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert pid not in summary.workers  # its unit's result came from the retry
    assert summary.exit_code == 0
    assert_sound(tmp_path / "ds")
    assert contents_of_dataset(tmp_path / "ds", tmp_path) == contents_of_dataset(ds, tmp_path)


def test_the_local_engine_killed_then_rerun_finishes(bucket, local_ds, tmp_path):
    """The local engine is this process: killed at a point, the rerun (same job id, so it sweeps
    its own temp file) finishes the dataset."""
    ds, _ = local_ds
    cmd = [sys.executable, "-m", "np_mirror.app", "dataset", "sync", str(tmp_path / "ds"), str(SAE), str(SMALL),
           "--exports-url", bucket["url"], "--cache", str(tmp_path / "cache"), "--unit-features", "128",
           "--job-id", "job1", "--workers", "1", "--exports-only", "-q"]
    killed = subprocess.run(cmd, env={**os.environ, "NP_MIRROR_FAULT": "dataset.before_rename:4"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert [p for p in (tmp_path / "ds").rglob("*") if TEMP_NAME.match(p.name)]  # the kill left one behind
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr and "already committed" in again.stderr
    assert_sound(tmp_path / "ds")
    assert contents_of_dataset(tmp_path / "ds", tmp_path) == contents_of_dataset(ds, tmp_path)


@pytest.mark.parametrize("args, says", [
    (["gpt2-small/99-res-jb"], "unknown source"),
    ([], "name the sources"),
    (["--models", "no-such-model"], "unknown source"),
    (["gpt2-small/3-res-jb", "--engine", "spark"], "spark"),
    (["gpt2-small/3-res-jb", "--all"], "exactly one"),
])
def test_bad_input_is_exit_2_with_one_line(bucket, tmp_path, capsys, args, says):
    code, _, err = run_cli(capsys, "dataset", "sync", tmp_path / "ds", *args, "--exports-url", bucket["url"],
                       "--cache", tmp_path / "cache", "-q")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").rglob("*.parquet"))


def test_the_ray_engine_without_ray_is_bad_input_naming_the_extra(bucket, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without np-mirror[ray]
    code, _, err = run_cli(capsys, "dataset", "sync", tmp_path / "ds", SAE, "--engine", "ray", "--exports-url", bucket["url"],
                       "--exports-only", "-q")
    assert code == 2 and "np-mirror[ray]" in err and len(err.strip().splitlines()) == 1


def test_the_api_fills_what_the_export_lacks_as_the_local_sync_does(np_emulator_factory, tmp_path):
    """Holes are asked once (404), and the exported features above count-1, which export-data.py
    gives no activations batch, come whole from the API: the dataset then equals a local
    exports-first `sync` of the same export, every table; the requests go through one client."""
    import asyncio

    from npclient import NeuronpediaClient
    from npclient.exports import ExportBucket
    from npclient.sync import SyncOptions, run_sync

    server = np_emulator_factory(EmulatorConfig(sources=(SourceSpec(M, SAE.source, d_sae=200),), hole_rate=0.05,
                                                seed=3, **LIGHT))
    root = tmp_path / "bucket"
    write_export(server.state, root, quirks=ExportQuirks(batch_size=BS), compresslevel=1)
    live = [i for i in range(200) if not server.state.is_hole(M, SAE.source, i)]
    beyond = [i for i in live if i > len(live) - 1]
    assert beyond and len(live) < 200
    with S3Server(root) as s3:
        async def local_sync():
            async with NeuronpediaClient(server.url, budget=None) as client, ExportBucket(s3.bucket_url) as bucket:
                return await run_sync([SAE], db=Mirror(tmp_path / "ref.duckdb").db, client=client, options=SyncOptions(),
                                      exports=bucket, exports_cache=tmp_path / "ref-cache")

        asyncio.run(local_sync())
        asked_before = len(server.state.requests)
        summary = dataset_sync(str(tmp_path / "ds"), sources=[SAE], exports_url=s3.bucket_url, cache=tmp_path / "cache",
                               unit_features=64, base_url=server.url, rate=1000.0)
        api = [r for r in server.state.requests[asked_before:] if r.path.startswith("/api/feature")]
        again = dataset_sync(str(tmp_path / "ds"), sources=[SAE], exports_url=s3.bucket_url, cache=tmp_path / "cache",
                             unit_features=64, base_url=server.url, rate=1000.0)
    part = summary.sources[0]
    assert summary.exit_code == 0 and part.fetched == len(beyond) and part.skipped_failed == 200 - len(live)
    assert summary.requests == len(api)  # every request went through the one client
    assert len([r for r in api if r.method == "POST"]) == -(-(len(beyond) + 200 - len(live)) // 25)  # 25 a POST
    assert again.requests == 0 and again.reduce_written == 0  # committed: neither asked nor written again
    assert_sound(tmp_path / "ds")
    ref = contents_of_reference(tmp_path / "ref.duckdb")
    got = contents_of_dataset(tmp_path / "ds", tmp_path)
    for table in KEYS:
        assert got[table] == ref[table], table
    origins = duckdb.connect().execute(f"SELECT origin, count(*) FROM read_parquet('{tmp_path}/ds/features/*/*/*.parquet') "
                                       "GROUP BY 1 ORDER BY 1").fetchall()
    assert origins == [("export", len(live) - len(beyond)), ("post", len(beyond))]
