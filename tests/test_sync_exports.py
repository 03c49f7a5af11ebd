"""Exports first, then the API for the gaps: against the emulator's API and its S3 subset, over loopback."""

import asyncio

from helpers import table_contents
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
    server = np_emulator_factory(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=450),), hole_rate=0.02))
    root = tmp_path / "bucket"
    write_export(server.state, root, quirks=ExportQuirks(batch_size=BS))
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
        # Only the features of the broken activations batch (indices 200..299) went to the API.
        asked = set()
        for r in feature_requests(server):
            asked |= {item["index"] for item in r.json} if r.method == "POST" else {int(r.path.rsplit("/", 1)[1])}
        holes = set(range(450)) - set(live)
        assert asked - holes and asked - holes <= set(range(200, 300))  # holes are confirmed 404 once
        origins = {r["origin"]: r["n"] for r in mirror.sql("SELECT origin, count(*) AS n FROM features GROUP BY 1").to_pylist()}
        assert origins["export"] > 300 and origins["post"] > 0
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
