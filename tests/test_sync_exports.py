"""Exports first, then the API for the gaps: against the emulator's API and its S3 subset, over loopback."""

import asyncio
import gzip
import json

from helpers import LIGHT, table_contents
from npclient import NeuronpediaClient, SourceId
from npclient.exports import ExportBucket
from npclient.mirror import Mirror
from npclient.sync import SyncOptions, run_sync
from npclient.testing import EmulatorConfig, SourceSpec
from npclient.testing.emulator.exports import ExportQuirks, write_export
from npclient.testing.emulator.s3 import S3Faults, S3Server

SRC = SourceId("gpt2-small", "0-res-jb")
BS = 100


def setup(np_emulator_factory, tmp_path):
    server = np_emulator_factory(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=450),), hole_rate=0.02, **LIGHT))
    root = tmp_path / "bucket"
    write_export(server.state, root, quirks=ExportQuirks(batch_size=BS), compresslevel=1)
    return server, root


def sync(server, s3, db, cache, **opts):
    async def go():
        async with NeuronpediaClient(server.url, budget=None) as client, ExportBucket(s3.bucket_url) as bucket:
            return await run_sync([SRC], db=db, client=client, options=SyncOptions(**opts), exports=bucket, exports_cache=cache)

    return asyncio.run(go())


def feature_requests(server):
    return [r for r in server.state.requests if r.path.startswith("/api/feature")]


def test_exports_first_then_api_for_the_gaps(np_emulator_factory, tmp_path):
    server, root = setup(np_emulator_factory, tmp_path)
    prefix = f"v1/{SRC.model_id}/{SRC.source}/"
    broken_acts = prefix + "activations/batch-2.jsonl.gz"
    missing_expl = prefix + "explanations/batch-1.jsonl.gz"
    faults = S3Faults(truncated={broken_acts: 1000}, missing=frozenset({missing_expl}))
    mirror = Mirror(tmp_path / "m.duckdb")
    with S3Server(root, faults=faults) as s3:
        first = sync(server, s3, mirror.db, tmp_path / "cache")
        part = first.sources[0]
        assert set(part.export_failed) == {broken_acts, missing_expl}
        assert first.exit_code == 1
        live = [i for i in range(450) if not server.state.is_hole(SRC.model_id, SRC.source, i)]
        assert mirror.sql("SELECT count(*) AS n FROM features").to_pylist()[0]["n"] == len(live)
        # Only the features of the broken activations batch (indices 200..299) went to the API,
        # and those above count-1, which export-data.py gives no activations batch at all.
        asked = set()
        for r in feature_requests(server):
            asked |= {item["index"] for item in r.json} if r.method == "POST" else {int(r.path.rsplit("/", 1)[1])}
        holes = set(range(450)) - set(live)
        beyond = {i for i in live if i > len(live) - 1}
        assert holes and beyond
        assert asked - holes and asked - holes == (set(range(200, 300)) - holes) | beyond  # holes are confirmed 404 once
        origins = {r["origin"]: r["n"] for r in mirror.sql("SELECT origin, count(*) AS n FROM features GROUP BY 1").to_pylist()}
        assert origins["export"] > 300 and origins["post"] > 0
        # the summary is true: nothing was present before, the export imported, the API fetched the rest
        assert part.already_present == 0 and part.imported == len(live) and part.fetched == len(asked - holes)
        with_acts = mirror.sql('SELECT count(*) AS n FROM features WHERE "index" BETWEEN 200 AND 299 AND n_activations > 0').to_pylist()[0]["n"]
        assert with_acts > 90  # the API filled the activations the export could not give

        # The next run, faults gone: only the failed files are fetched and imported, no feature request.
        s3.faults = S3Faults()
        before_api, before_s3 = len(feature_requests(server)), len(s3.requests)
        second = sync(server, s3, mirror.db, tmp_path / "cache")
        assert second.exit_code == 0 and not second.sources[0].export_failed
        assert len(feature_requests(server)) == before_api
        fetched = [r.path for r in s3.requests[before_s3:] if "list-type" not in (r.query or "") and r.method == "GET"]
        assert sorted(p.split("/", 2)[2] for p in fetched) == sorted([broken_acts, missing_expl])
        n_expl = mirror.sql("SELECT count(*) AS n FROM explanations").to_pylist()[0]["n"]
        assert n_expl == sum(len(server.state.explanations(SRC.model_id, SRC.source, i)) for i in live)


def test_exports_only_and_a_source_without_export(np_emulator_factory, tmp_path):
    server, root = setup(np_emulator_factory, tmp_path)
    empty = tmp_path / "empty-bucket"
    empty.mkdir()
    with S3Server(root) as s3:
        db_path = tmp_path / "exports-only.duckdb"
        summary = sync(server, s3, Mirror(db_path).db, tmp_path / "cache", exports_only=True)
        assert summary.sources[0].imported > 400 and not feature_requests(server)
    with S3Server(empty) as s3:
        summary = sync(server, s3, Mirror(tmp_path / "api.duckdb").db, tmp_path / "cache2")
        assert summary.sources[0].export_note == "no export for this source"
        assert summary.fetched > 400  # the API did it all
    assert table_contents(str(db_path))["features"]


# --------------------------------------------------------------------------- --range and --parts

RANGE_SRC_CONFIG = dict(hole_rate=0.0, n_activations=(2, 4), tokens_per_activation=(8, 16), seed=11)
QB = ExportQuirks(batch_size=128, non_source_folders=False)


def range_setup(np_emulator_factory, tmp_path, d_sae=1000, **cfg):
    server = np_emulator_factory(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=d_sae),),
                                                **{**RANGE_SRC_CONFIG, **cfg}))
    root = tmp_path / "bucket"
    write_export(server.state, root, quirks=QB, compresslevel=1)
    return server, root


def object_gets(s3):
    """Keys the sync GETs from the bucket (listings left out)."""
    return sorted(r.key for r in s3.requests if r.method == "GET" and "list-type" not in (r.query or "") and r.key)


def files_holding(root, folder, lo, hi):
    """Truth from the files themselves: batch keys of `folder` with a record of an index in [lo, hi)."""
    base = root / "v1" / SRC.model_id / SRC.source / folder
    out = []
    for path in sorted(base.glob("batch-*.jsonl.gz")):
        indices = {int(json.loads(line)["index"]) for line in gzip.decompress(path.read_bytes()).splitlines()}
        if any(lo <= i < hi for i in indices):
            out.append(f"v1/{SRC.model_id}/{SRC.source}/{folder}/{path.name}")
    return out


def api_features_asked(server):
    asked = []
    for r in feature_requests(server):
        asked += [item["index"] for item in r.json] if r.method == "POST" else [int(r.path.rsplit("/", 1)[1])]
    return asked


def test_a_range_downloads_only_the_files_that_hold_it(np_emulator_factory, tmp_path):
    server, root = range_setup(np_emulator_factory, tmp_path)
    mirror = Mirror(tmp_path / "m.duckdb")
    prefix = f"v1/{SRC.model_id}/{SRC.source}/"
    with S3Server(root) as s3:
        summary = sync(server, s3, mirror.db, tmp_path / "cache", range=(0, 50))
        got = object_gets(s3)
    feats = files_holding(root, "features", 0, 50)
    expl = sorted(f"{prefix}explanations/{p.name}" for p in (root / prefix / "explanations").glob("*.gz"))
    meta = [prefix + m for m in ("model.jsonl", "release.jsonl", "source.jsonl", "sourceset.jsonl")]
    assert 1 < len(feats) < 8  # text order spreads 0..49 over several of the 8 feature files
    assert got == sorted(meta + feats + [prefix + "activations/batch-0.jsonl.gz"] + expl)
    part = summary.sources[0]
    assert summary.exit_code == 0 and not api_features_asked(server)
    assert part.imported == 50 and part.fetched == 0
    assert part.export_note.startswith(f"exports: {len(feats)} of 8 feature files, 1 of 8 activation files, "
                                       f"{len(expl)} of {len(expl)} explanation files (")
    assert "instead of 2 requests" in part.export_note
    # the mirror holds the range and nothing else, every part of it
    assert mirror.sql('SELECT min("index") AS lo, max("index") AS hi, count(*) AS n FROM features').to_pylist() == \
        [{"lo": 0, "hi": 49, "n": 50}]
    for table in ("activations", "explanations"):
        assert mirror.sql(f'SELECT count(*) AS n FROM {table} WHERE "index" >= 50').to_pylist()[0]["n"] == 0
    st = server.state
    want_expl = sorted(e["id"] for i in range(50) for e in st.explanations(SRC.model_id, SRC.source, i))
    assert mirror.sql("SELECT explanation_id FROM explanations ORDER BY 1").column(0).to_pylist() == want_expl
    acts = mirror.sql("SELECT count(*) AS n FROM activations").to_pylist()[0]["n"]
    assert acts == sum(len(st.feature(SRC.model_id, SRC.source, i)["activations"]) for i in range(50))
    # the files were imported for this range only: a later whole-source sync imports them whole
    with S3Server(root) as s3:
        whole = sync(server, s3, mirror.db, tmp_path / "cache")
        again = object_gets(s3)
    assert whole.sources[0].imported == 950 and not api_features_asked(server)
    assert not set(again) & set(got)  # what is on disk is not downloaded twice


def test_a_small_range_goes_to_the_api_when_its_files_cost_more(np_emulator_factory, tmp_path, monkeypatch):
    from npclient.sync import exports as plan

    server, root = range_setup(np_emulator_factory, tmp_path)
    monkeypatch.setattr(plan, "BYTES_PER_REQUEST", 1000)  # a request worth 1 kB: the files cost more
    mirror = Mirror(tmp_path / "m.duckdb")
    with S3Server(root) as s3:
        summary = sync(server, s3, mirror.db, tmp_path / "cache", range=(100, 150))
        assert object_gets(s3) == []  # listed, nothing downloaded
    part = summary.sources[0]
    posts = [r for r in feature_requests(server) if r.method == "POST"]
    assert len(posts) == 2 and sorted(api_features_asked(server)) == list(range(100, 150))
    assert part.fetched == 50 and part.imported == 0
    assert part.export_note.startswith("API: 2 requests instead of ") and part.export_note.endswith(" MB)")
    # forced: --exports-only takes the files whatever they cost, and sends no feature request
    server.state.reset()
    forced_db = Mirror(tmp_path / "forced.duckdb")
    with S3Server(root) as s3:
        forced = sync(server, s3, forced_db.db, tmp_path / "cache2", range=(100, 150), exports_only=True)
        assert object_gets(s3)
    assert not feature_requests(server)
    assert forced.sources[0].imported == 50 and "forced by --exports-only" in forced.sources[0].export_note


def test_parts_without_explanations_download_no_explanation_file(np_emulator_factory, tmp_path):
    server, root = range_setup(np_emulator_factory, tmp_path, d_sae=300)
    mirror = Mirror(tmp_path / "m.duckdb")
    with S3Server(root) as s3:
        summary = sync(server, s3, mirror.db, tmp_path / "cache", parts=("features", "activations"))
        got = object_gets(s3)
    assert got and not [k for k in got if "/explanations" in k]
    assert summary.exit_code == 0 and summary.sources[0].imported == 300 and not api_features_asked(server)
    assert mirror.sql("SELECT count(*) AS n FROM explanations").to_pylist()[0]["n"] == 0
    assert "explanation" not in summary.sources[0].export_note
    with S3Server(root) as s3:
        sync(server, s3, Mirror(tmp_path / "f.duckdb").db, tmp_path / "cache2", parts=("features",), range=(0, 40))
        assert [k.split("/")[3] for k in object_gets(s3) if "/batch-" in k] == ["features"] * len(files_holding(root, "features", 0, 40))


def test_indices_above_the_count_get_their_activations_from_the_api(np_emulator_factory, tmp_path):
    server, root = range_setup(np_emulator_factory, tmp_path, d_sae=400, hole_rate=0.03)
    st = server.state
    live = st.feature_indices(SRC.model_id, SRC.source)
    beyond = [i for i in live if i > len(live) - 1]
    assert beyond  # export-data.py sizes activation batches by the count: these are in none
    mirror = Mirror(tmp_path / "m.duckdb")
    with S3Server(root) as s3:
        summary = sync(server, s3, mirror.db, tmp_path / "cache")
    holes = set(range(400)) - set(live)
    # beyond and the holes (404, recorded once), nothing else: dead features are covered
    assert sorted(set(api_features_asked(server)) - holes) == beyond
    assert summary.sources[0].fetched == len(beyond)
    n = mirror.sql(f'SELECT count(*) AS n FROM features WHERE "index" > {len(live) - 1} AND n_activations > 0').to_pylist()
    assert n[0]["n"] == len([i for i in beyond if st.feature(SRC.model_id, SRC.source, i)["activations"]])

    # a rerun of the complete source downloads nothing, even with the download cache gone
    import shutil

    shutil.rmtree(tmp_path / "cache")
    server.state.reset()
    with S3Server(root) as s3:
        rerun = sync(server, s3, mirror.db, tmp_path / "cache")
        assert object_gets(s3) == []
    assert not feature_requests(server) and rerun.exit_code == 0
    assert rerun.sources[0].export_note == "exports: none needed, nothing of 0:400 is missing"
