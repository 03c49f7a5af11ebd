"""npclient.sync's plan: options named by their meaning, and feature counts from the export listing.

A source whose `saelensConfig` carries no `d_sae` (null, or a string without it) used to need
`--range`; with an export bucket the plan counts its features from the export instead:
export-data.py writes 1,024 features a feature file, so the count is 1,024 x the last file's
batch number + the records of that last file, the one file downloaded for it.
"""

from __future__ import annotations

import asyncio

import pytest

from np_mirror.app import main
from npclient import NeuronpediaClient, SourceId
from npclient.errors import InvalidOptionError, NPError, UnknownSourceError
from npclient.http import ExportBucket
from npclient.mirror import Mirror
from npclient.sync import SyncOptions, parse_range, plan_sync, run_sync
from npclient.testing import EmulatorConfig, SourceSpec
from npclient.testing.emulator.exports import ExportQuirks, write_export
from npclient.testing.emulator.s3 import S3Server

SRC = SourceId("gpt2-small", "0-res-jb")


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "make, option, text",
    [
        (lambda: SyncOptions(range=(9, 3)), "range", "range must be a:b with 0 <= a < b, got 9:3"),
        (lambda: SyncOptions(range=(-1, 3)), "range", "range must be a:b"),
        (lambda: SyncOptions(parts=("logits",)), "parts", "parts takes a subset of"),
        (lambda: SyncOptions(parts=("activations",)), "parts", "that includes features"),
        (lambda: SyncOptions(max_acts=0), "max_acts", "max_acts (top activations kept per feature) must be >= 1"),
        (lambda: SyncOptions(scores=True, exports_only=True), "scores", "scores need the API"),
        (lambda: parse_range("nine"), "range", "range must look like a:b (half-open), got 'nine'"),
        (lambda: parse_range("9:3"), "range", "range must be a:b with 0 <= a < b, got '9:3'"),
    ],
)
def test_bad_options_are_typed_and_name_no_flag(make, option, text):
    with pytest.raises(InvalidOptionError) as info:
        make()
    exc = info.value
    assert isinstance(exc, ValueError) and isinstance(exc, NPError)  # `except ValueError` keeps working
    assert exc.option == option and text in str(exc) and "--" not in str(exc)


def test_parse_range():
    assert parse_range("3:10") == (3, 10) and parse_range(":5") == (0, 5)


@pytest.mark.parametrize(
    "args, text",
    [
        (["--max-acts", "0"], "--max-acts (top activations kept per feature) must be >= 1"),
        (["--scores", "--exports-only"], "--scores need the API"),
        (["--range", "9:3"], "--range must be a:b with 0 <= a < b, got '9:3'"),
        (["--range", "x"], "--range must look like a:b (half-open), got 'x'"),
        (["--exports-url", "s3://bucket"], "exports URL must start with http:// or https://"),
        (["--base-url", "www.neuronpedia.org"], "base URL must start with http:// or https://"),
    ],
)
def test_cli_option_errors_are_bad_input_naming_the_flag(tmp_path, monkeypatch, capsys, args, text):
    """The library names the option; the CLI's one line names the flag (cli/np_mirror/errors.py)."""
    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEURONPEDIA_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no request may be needed
    code = main(["sync", "gpt2-small/0-res-jb", "--db", str(tmp_path / "m.duckdb"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("np-mirror: bad input: ") and len(err.strip().splitlines()) == 1, err
    assert text in err


# --------------------------------------------------------------------------- counts from the export


def _server(np_emulator_factory, d_sae, saelens_config="null", **cfg):
    spec = SourceSpec(SRC.model_id, SRC.source, d_sae=d_sae, saelens_config=saelens_config)
    return np_emulator_factory(EmulatorConfig(sources=(spec,), seed=5, n_activations=(1, 2), **cfg))


def _bucket(server, root, batch_size=1024):
    write_export(server.state, root, quirks=ExportQuirks(batch_size=batch_size, non_source_folders=False),
                 compresslevel=1)


def _object_gets(s3):
    return sorted(r.key for r in s3.requests if r.method == "GET" and "list-type" not in (r.query or "") and r.key)


def _plan(server, s3, db, cache, **opts):
    async def go():
        async with NeuronpediaClient(server.url, budget=None) as client, ExportBucket(s3.bucket_url) as bucket:
            return await plan_sync([SRC], db=db, client=client, options=SyncOptions(**opts), exports=bucket,
                                   exports_cache=cache)

    return asyncio.run(go())


def _sync(server, s3, db, cache, **opts):
    async def go():
        async with NeuronpediaClient(server.url, budget=None) as client, ExportBucket(s3.bucket_url) as bucket:
            return await run_sync([SRC], db=db, client=client, options=SyncOptions(**opts), exports=bucket,
                                  exports_cache=cache)

    return asyncio.run(go())


def _feature_requests(server):
    return [r for r in server.state.requests if r.path.startswith("/api/feature")]


def test_a_source_without_d_sae_is_counted_from_its_export(np_emulator_factory, tmp_path):
    server = _server(np_emulator_factory, 2100, hole_rate=0.0)
    root = tmp_path / "bucket"
    _bucket(server, root)
    prefix = f"v1/{SRC.model_id}/{SRC.source}/"
    assert sorted(p.name for p in (root / prefix / "features").iterdir()) == \
        ["batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz"]
    mirror = Mirror(tmp_path / "m.duckdb")
    cache = tmp_path / "cache"
    with S3Server(root) as s3:
        [plan] = _plan(server, s3, mirror.db, cache)
        assert (plan.start, plan.stop, plan.count_origin, plan.feature_count) == (0, 2100, "export listing", 2100)
        # the count cost one small file, the last feature file, and no feature request
        assert _object_gets(s3) == [prefix + "features/batch-2.jsonl.gz"]
        assert not _feature_requests(server)

        summary = _sync(server, s3, mirror.db, cache)
        got = _object_gets(s3)
    part = summary.sources[0]
    assert summary.exit_code == 0 and part.wanted == 2100 and part.imported == 2100 and part.fetched == 0
    assert got.count(prefix + "features/batch-2.jsonl.gz") == 1  # the sync found it in the cache
    assert not _feature_requests(server)
    assert mirror.sql("SELECT feature_count, count_origin FROM sources").to_pylist() == [
        {"feature_count": 2100, "count_origin": "export listing"}]
    # the mirror knows the count now: the next plan asks neither the API nor the bucket for it
    server.state.reset()
    with S3Server(root) as s3:
        [again] = _plan(server, s3, mirror.db, cache)
        assert not s3.requests
    assert (again.stop, again.count_origin) == (2100, "mirror")


def test_with_holes_the_export_counts_its_stored_features(np_emulator_factory, tmp_path):
    """export-data.py pages the stored features, so an export with holes counts those: the
    plan takes that many (what the export's activation batches are sized by too)."""
    server = _server(np_emulator_factory, 1100, hole_rate=0.05)
    live = [i for i in range(1100) if not server.state.is_hole(SRC.model_id, SRC.source, i)]
    assert 1024 < len(live) < 1100  # two feature files, the second partial
    root = tmp_path / "bucket"
    _bucket(server, root)
    with S3Server(root) as s3:
        [plan] = _plan(server, s3, Mirror(tmp_path / "m.duckdb").db, tmp_path / "cache")
    assert (plan.stop, plan.count_origin) == (len(live), "export listing")


def test_a_128_feature_batch_export_is_counted_right(np_emulator_factory, tmp_path):
    """Sources converted from dashboards were written 128 features a file: the files' sizes say so."""
    server = _server(np_emulator_factory, 300, hole_rate=0.0)
    root = tmp_path / "bucket"
    _bucket(server, root, batch_size=128)
    mirror = Mirror(tmp_path / "m.duckdb")
    with S3Server(root) as s3:
        [plan] = _plan(server, s3, mirror.db, tmp_path / "cache")
        assert _object_gets(s3) == [f"v1/{SRC.model_id}/{SRC.source}/features/batch-2.jsonl.gz"]
    assert (plan.stop, plan.count_origin) == (300, "export listing")


def test_without_an_export_the_count_is_still_unknown(np_emulator_factory, tmp_path):
    server = _server(np_emulator_factory, 40)
    empty = tmp_path / "empty"
    empty.mkdir()
    mirror = Mirror(tmp_path / "m.duckdb")
    with S3Server(empty) as s3:
        with pytest.raises(UnknownSourceError, match="no export lists its features"):
            _plan(server, s3, mirror.db, tmp_path / "cache")
        assert [r.query for r in s3.requests] == ["list-type=2&prefix=v1%2Fgpt2-small%2F0-res-jb%2F"]  # listed, no file
        # a range needs no count, and is not looked up
        [plan] = _plan(server, s3, mirror.db, tmp_path / "cache", range=(0, 10))
        assert (plan.start, plan.stop, plan.count_origin, plan.feature_count) == (0, 10, "range", None)
        assert len(s3.requests) == 1
    assert not _feature_requests(server)


def test_a_known_d_sae_needs_no_export_listing(np_emulator_factory, tmp_path):
    server = _server(np_emulator_factory, 40, saelens_config="object")
    root = tmp_path / "bucket"
    _bucket(server, root)
    with S3Server(root) as s3:
        [plan] = _plan(server, s3, Mirror(tmp_path / "m.duckdb").db, tmp_path / "cache")
        assert not s3.requests
    assert (plan.stop, plan.count_origin, plan.feature_count) == (40, "saelensConfig.d_sae", 40)
