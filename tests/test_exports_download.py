"""Bulk exports: key layout and safety, unsigned S3 listing, resumable verified downloads.

The end-to-end tests run against moto's real S3 server on 127.0.0.1 (a real socket, real
XML, real Range handling); a few fault cases that moto cannot produce (an If-Range honoured
with a 200, a 503) use an in-process `httpx.MockTransport`.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from npclient.errors import CorruptDownload, ExportError, NotFound, Unauthorized, UnsafeKey
from npclient.exports import (
    DEFAULT_EXPORTS_URL,
    ExportBucket,
    ExportFile,
    S3Object,
    download,
    exports_url,
    local_path,
    parse_key,
    sort_batches,
    source_prefix,
)
from npclient.ids import SourceId
from npclient.http.retry import RetryPolicy

BUCKET = "np-exports"
SRC = "v1/gpt2-small/0-res-jb/"
PAGED = "v1/many/0-paged/features/"
N_PAGED = 1050
MULTI = "v1/big/0-multi/features/batch-0.jsonl.gz"
PART_SIZE = 5 * 1024 * 1024


async def _no_sleep(_: float) -> None:
    return None


FAST_RETRY = RetryPolicy(max_attempts=3, initial_wait_s=0.0, max_wait_s=0.0)


def _jsonl_gz(records: list[dict]) -> bytes:
    return gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records), mtime=0)


def _export_tree() -> dict[str, bytes]:
    """A small export in the real layout (plus the non-source folders a model also has)."""
    tree: dict[str, bytes] = {}
    for name in ("model", "release", "source", "sourceset"):
        tree[f"{SRC}{name}.jsonl"] = json.dumps({"id": name}).encode() + b"\n"
    for n in range(12):
        tree[f"{SRC}features/batch-{n}.jsonl.gz"] = _jsonl_gz(
            [{"modelId": "gpt2-small", "layer": "0-res-jb", "index": str(n * 4 + i)} for i in range(4)]
        )
    for n in range(3):
        tree[f"{SRC}activations/batch-{n}.jsonl.gz"] = _jsonl_gz(
            [{"modelId": "gpt2-small", "layer": "0-res-jb", "index": str(n * 1024), "values": [0.5] * 200}]
        )
    for n in range(2):
        tree[f"{SRC}explanations-gpt-4o-mini/batch-{n}.jsonl.gz"] = _jsonl_gz(
            [{"modelId": "gpt2-small", "layer": "0-res-jb", "index": str(n), "description": "days"}]
        )
    tree["v1/gpt2-small/1-res-jb/source.jsonl"] = b'{"id": "1-res-jb"}\n'
    tree["v1/gpt2-small/1-res-jb/features/batch-0.jsonl.gz"] = _jsonl_gz([{"index": "0"}])
    tree["v1/gpt2-small/headvis/0/heads.json"] = b"{}"
    tree["v1/gpt2-small/jlens/lens.json"] = b"{}"
    tree["v1/gemma-2-2b/5-gemmascope-res-16k__l0-143/features/batch-0.jsonl.gz"] = _jsonl_gz([{"index": "0"}])
    return tree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Fixture:
    def __init__(self, endpoint: str, client) -> None:
        self.endpoint = endpoint
        self.url = f"{endpoint}/{BUCKET}"
        self.client = client
        self.tree = _export_tree()

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body, ACL="public-read")

    def bucket(self, transport: httpx.AsyncBaseTransport | None = None, **kw) -> ExportBucket:
        kw.setdefault("retry", FAST_RETRY)
        kw.setdefault("sleep", _no_sleep)
        return ExportBucket(self.url, transport=transport, **kw)


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        fx = S3Fixture(endpoint, client)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: fx.put(*kv), fx.tree.items()))
        _put_many(fx, pool_size=8)
        _put_multipart(fx)
        yield fx
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _put_many(fx: S3Fixture, pool_size: int) -> None:
    """N_PAGED tiny objects under one prefix, to page past ListObjectsV2's 1,000 keys.

    Straight into moto's backend (same process as the server: ~0.1 s); through boto3 and a
    thread pool (~5 s on two cores) if that internal API ever moves. Listing reads them back
    anonymously either way (moto lets anyone list; GETs need the public-read ACL).
    """
    keys = [f"{PAGED}batch-{i}.jsonl.gz" for i in range(N_PAGED)]
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key in keys:
            backend.put_object(BUCKET, key, b"x")
    except Exception:
        with ThreadPoolExecutor(pool_size) as pool:
            list(pool.map(lambda k: fx.client.put_object(Bucket=BUCKET, Key=k, Body=b"x"), keys))


def _put_multipart(fx: S3Fixture) -> None:
    body = os.urandom(PART_SIZE) + os.urandom(PART_SIZE)
    up = fx.client.create_multipart_upload(Bucket=BUCKET, Key=MULTI, ACL="public-read")
    parts = []
    for number, chunk in enumerate((body[:PART_SIZE], body[PART_SIZE:]), start=1):
        r = fx.client.upload_part(Bucket=BUCKET, Key=MULTI, PartNumber=number, UploadId=up["UploadId"], Body=chunk)
        parts.append({"PartNumber": number, "ETag": r["ETag"]})
    fx.client.complete_multipart_upload(
        Bucket=BUCKET, Key=MULTI, UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    fx.tree[MULTI] = body


class Recording(httpx.AsyncBaseTransport):
    """Real loopback HTTP, with every request kept; optionally cut the first body after `cut_after` bytes."""

    def __init__(self, cut_after: int | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []
        self.cut_after = cut_after

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await self.inner.handle_async_request(request)
        if self.cut_after is None or request.method != "GET" or "list-type" in str(request.url):
            return response
        limit, self.cut_after = self.cut_after, None
        return httpx.Response(response.status_code, headers=response.headers, stream=_Cut(response.stream, limit))

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Cut(httpx.AsyncByteStream):
    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit = inner, limit

    async def __aiter__(self):
        sent = 0
        async for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                raise httpx.ReadError("connection reset by test")
            sent += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---- layout: keys, paths, order --------------------------------------------------------------
def test_parse_key_understands_the_export_layout():
    f = parse_key("v1/gpt2-small/0-res-jb/features/batch-10.jsonl.gz")
    assert f == ExportFile(
        "v1/gpt2-small/0-res-jb/features/batch-10.jsonl.gz", "gpt2-small", "0-res-jb", "features", "features",
        "batch-10.jsonl.gz", 10,
    )
    assert f.source_id == SourceId("gpt2-small", "0-res-jb") and f.is_batch
    e = parse_key("v1/gpt2-small/0-res-jb/explanations-gpt-4o-mini/batch-3.jsonl.gz")
    assert (e.kind, e.folder, e.batch, e.explanation_model) == (
        "explanations", "explanations-gpt-4o-mini", 3, "gpt-4o-mini"
    )
    assert parse_key("v1/gpt2-small/0-res-jb/explanations/batch-0.jsonl.gz").explanation_model is None
    assert parse_key("v1/gpt2-small/0-res-jb/activations/batch-0.jsonl.gz").kind == "activations"
    m = parse_key("v1/gemma-2-2b/5-gemmascope-res-16k__l0-143/sourceset.jsonl")
    assert (m.kind, m.name, m.batch, m.folder) == ("metadata", "sourceset.jsonl", None, "")
    for not_a_source in (
        "v1/gpt2-small/headvis/0/heads.json",
        "v1/gpt2-small/jlens/lens.json",
        "v1/gpt2-small/headvis/odd name with spaces.json",  # not ours to judge: None, not written
        "v1/gpt2-small/0-res-jb/",  # a folder marker
        "v1/gpt2-small/0-res-jb/README.md",
        "v1/gpt2-small/0-res-jb/features/batch-1.jsonl",
        "v1/gpt2-small/0-res-jb/graphs/batch-1.jsonl.gz",
        "v2/gpt2-small/0-res-jb/source.jsonl",
        "v1/gpt2-small/model.jsonl",
    ):
        assert parse_key(not_a_source) is None, not_a_source
    assert source_prefix(SourceId("gpt2-small", "0-res-jb")) == "v1/gpt2-small/0-res-jb/"
    assert source_prefix("gpt2-small/0-res-jb") == SRC


UNSAFE = [
    "../x",
    "v1/../../etc/passwd",
    "v1/gpt2-small/0-res-jb/../../../x",
    "v1/gpt2-small/0-res-jb/features/..",
    "v1/gpt2-small/0-res-jb/./source.jsonl",
    "/etc/passwd",
    "/v1/gpt2-small/0-res-jb/source.jsonl",
    "C:/x/v1",
    "v1/gpt2-small/0-res-jb/features\\..\\..\\x",
    "v1/gpt2-small/0-res-jb/features/batch-0.jsonl.gz\x00",
    "v1/gpt2-small/0-res-jb/features/batch 0.jsonl.gz",
    "v1/gpt2-small/0-res-jb/features/.hidden",
    "v1/gpt2~small/0-res-jb/source.jsonl",
    "v1//0-res-jb/source.jsonl",
    "",
]


@pytest.mark.parametrize("key", UNSAFE)
def test_unsafe_keys_are_refused(key, tmp_path):
    with pytest.raises(UnsafeKey):
        parse_key(key)
    with pytest.raises(UnsafeKey):
        local_path(tmp_path, key)


def test_local_path_stays_inside_the_cache_even_through_symlinks(tmp_path):
    root, outside = tmp_path / "cache", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    key = "v1/gpt2-small/0-res-jb/source.jsonl"
    assert local_path(root, key) == root.resolve() / "v1" / "gpt2-small" / "0-res-jb" / "source.jsonl"
    (root / "v1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeKey):
        local_path(root, key)
    # A cache root that is itself a link is fine: the check is against the resolved root.
    (root / "v1").unlink()
    link_root = tmp_path / "link-to-cache"
    link_root.symlink_to(root, target_is_directory=True)
    assert local_path(link_root, key).is_relative_to(root.resolve())
    # A file-level link leading out is refused too.
    target = root / "v1" / "gpt2-small" / "0-res-jb"
    target.mkdir(parents=True)
    (target / "source.jsonl").symlink_to(outside / "stolen")
    with pytest.raises(UnsafeKey):
        local_path(root, key)


def test_sort_batches_is_numeric():
    keys = [f"{SRC}features/batch-{n}.jsonl.gz" for n in (10, 2, 0, 11, 1)] + [
        f"{SRC}activations/batch-10.jsonl.gz",
        f"{SRC}activations/batch-9.jsonl.gz",
        f"{SRC}source.jsonl",
        "v1/gpt2-small/headvis/x.json",
    ]
    ordered = sort_batches(keys)
    assert ordered == [
        f"{SRC}source.jsonl",
        f"{SRC}activations/batch-9.jsonl.gz",
        f"{SRC}activations/batch-10.jsonl.gz",
        *[f"{SRC}features/batch-{n}.jsonl.gz" for n in (0, 1, 2, 10, 11)],
        "v1/gpt2-small/headvis/x.json",
    ]
    objs = [S3Object(k, 1, "e") for k in keys]
    assert [o.key for o in sort_batches(objs)] == ordered
    parsed = [parse_key(k) for k in keys[:5]]
    assert [f.batch for f in sort_batches(parsed)] == [0, 1, 2, 10, 11]


def test_exports_url_from_argument_environment_or_default(monkeypatch):
    monkeypatch.delenv("NP_MIRROR_EXPORTS_URL", raising=False)
    assert exports_url() == DEFAULT_EXPORTS_URL
    monkeypatch.setenv("NP_MIRROR_EXPORTS_URL", "http://127.0.0.1:9/bkt/")
    assert exports_url() == "http://127.0.0.1:9/bkt"
    assert exports_url("http://h/bkt/v1/") == "http://h/bkt"
    with pytest.raises(ValueError):
        exports_url("s3://bkt")


def test_s3object_md5_only_for_plain_etags():
    assert S3Object("k", 1, "5eb63bbbe01eeed093cb22bb8f5acdc3").md5 == "5eb63bbbe01eeed093cb22bb8f5acdc3"
    multi = S3Object("k", 1, "dd3175907ec01aefcd3be08c30f0a378-2")
    assert multi.md5 is None and multi.is_multipart


# ---- listing over real S3 (moto) -------------------------------------------------------------
async def test_unsigned_listing_of_a_source(s3):
    rec = Recording()
    async with s3.bucket(rec) as bucket:
        objects = await bucket.list(SRC)
    expected = sorted(k for k in s3.tree if k.startswith(SRC))
    assert sorted(o.key for o in objects) == expected
    for o in objects:
        assert o.size == len(s3.tree[o.key])
        assert o.etag == _md5(s3.tree[o.key])  # unquoted
        assert o.last_modified is not None
    assert rec.requests and all("authorization" not in r.headers for r in rec.requests)
    assert all(r.url.path == f"/{BUCKET}/" and r.url.params["list-type"] == "2" for r in rec.requests)


async def test_listing_follows_continuation_tokens_past_1000_keys(s3):
    rec = Recording()
    async with s3.bucket(rec) as bucket:
        objects = await bucket.list(PAGED)
        assert len(objects) == N_PAGED and len({o.key for o in objects}) == N_PAGED
        assert len(rec.requests) == 2
        assert "continuation-token" in rec.requests[1].url.params
        numbers = [parse_key(o.key).batch for o in sort_batches(objects)]
        assert numbers == list(range(N_PAGED))
    async with s3.bucket(max_pages=1) as bucket:
        with pytest.raises(ExportError, match="did not end after 1 pages"):
            await bucket.list(PAGED)


async def test_list_sources_skips_non_source_folders(s3):
    async with s3.bucket() as bucket:
        assert await bucket.list_sources("gpt2-small") == [
            SourceId("gpt2-small", "0-res-jb"),
            SourceId("gpt2-small", "1-res-jb"),
        ]
        every = await bucket.list_sources()
        assert SourceId("gemma-2-2b", "5-gemmascope-res-16k__l0-143") in every
        assert SourceId("many", "0-paged") in every and SourceId("big", "0-multi") in every
        assert all(s.source not in ("headvis", "jlens") for s in every)
        files = await bucket.list_source(SourceId("gpt2-small", "0-res-jb"))
    features = [o.key for o in files if "/features/" in o.key]
    assert features == [f"{SRC}features/batch-{n}.jsonl.gz" for n in range(12)]
    assert [o.key for o in files[:4]] == [f"{SRC}{n}.jsonl" for n in ("model", "release", "source", "sourceset")]


async def test_missing_bucket_is_not_found(s3):
    async with ExportBucket(f"{s3.endpoint}/no-such-bucket", retry=FAST_RETRY, sleep=_no_sleep) as bucket:
        with pytest.raises(NotFound):
            await bucket.list("v1/")


# ---- downloads over real S3 (moto) -----------------------------------------------------------
async def test_download_then_a_second_run_fetches_nothing(s3, tmp_path):
    seen: list[tuple[str, int, int]] = []
    async with s3.bucket() as bucket:
        objects = await bucket.list_source("gpt2-small/0-res-jb")
        report = await download(bucket, objects, tmp_path, concurrency=4, progress=lambda *a: seen.append(a))
    assert report.ok and sorted(report.downloaded) == sorted(o.key for o in objects) and not report.skipped
    assert report.bytes == sum(o.size for o in objects)
    for o in objects:
        path = tmp_path / o.key
        assert path.read_bytes() == s3.tree[o.key]
        assert (tmp_path / (o.key + ".etag")).read_text().strip() == o.etag
        assert not (tmp_path / (o.key + ".part")).exists()
    records = [json.loads(line) for line in gzip.decompress((tmp_path / f"{SRC}features/batch-11.jsonl.gz").read_bytes()).splitlines()]
    assert [r["index"] for r in records] == ["44", "45", "46", "47"]
    assert {k for k, _, _ in seen} == {o.key for o in objects}

    rec = Recording()
    async with s3.bucket(rec) as bucket:
        again = await download(bucket, objects, tmp_path)
    assert again.downloaded == [] and sorted(again.skipped) == sorted(o.key for o in objects)
    assert again.bytes == 0 and rec.requests == []  # not even a HEAD


async def test_partial_file_is_resumed_with_a_range(s3, tmp_path):
    key = f"{SRC}activations/batch-1.jsonl.gz"
    data = s3.tree[key]
    half = len(data) // 2
    part = tmp_path / (key + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])
    rec = Recording()
    async with s3.bucket(rec) as bucket:
        [obj] = [o for o in await bucket.list(key)]
        report = await download(bucket, [obj], tmp_path)
    assert report.downloaded == [key] and report.resumed == [key]
    assert report.bytes == len(data) - half
    [get] = [r for r in rec.requests if r.method == "GET" and "list-type" not in str(r.url)]
    assert get.headers["range"] == f"bytes={half}-"
    assert get.headers["if-range"] == f'"{obj.etag}"'
    assert (tmp_path / key).read_bytes() == data and not part.exists()


async def test_a_cut_connection_is_resumed_in_the_same_run(s3, tmp_path):
    rec = Recording(cut_after=3 * 1024 * 1024)
    async with s3.bucket(rec) as bucket:
        [obj] = await bucket.list(MULTI)
        report = await download(bucket, [obj], tmp_path)
    assert report.ok and report.resumed == [MULTI]
    gets = [r for r in rec.requests if "list-type" not in str(r.url)]
    assert [g.headers.get("range") for g in gets] == [None, f"bytes={3 * 1024 * 1024}-"]
    assert report.bytes == obj.size
    assert (tmp_path / MULTI).read_bytes() == s3.tree[MULTI]


async def test_corrupt_partial_fails_md5_is_deleted_and_the_rerun_heals(s3, tmp_path):
    key = f"{SRC}features/batch-3.jsonl.gz"
    other = f"{SRC}features/batch-4.jsonl.gz"
    data = s3.tree[key]
    part = tmp_path / (key + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * (len(data) // 2))  # right length, wrong bytes: only the MD5 can tell
    async with s3.bucket() as bucket:
        objects = [o for o in await bucket.list(f"{SRC}features/") if o.key in (key, other)]
        report = await download(bucket, objects, tmp_path)
        assert report.downloaded == [other]
        reason = report.failed[key]
        assert reason.startswith("CorruptDownload: ") and key in reason and "MD5" in reason and "\n" not in reason
        assert not part.exists() and not (tmp_path / key).exists()
        healed = await download(bucket, objects, tmp_path)
    assert healed.downloaded == [key] and healed.skipped == [other] and healed.resumed == []
    assert (tmp_path / key).read_bytes() == data


async def test_multipart_etag_skips_md5_but_checks_size(s3, tmp_path):
    async with s3.bucket() as bucket:
        [obj] = await bucket.list(MULTI)
        assert obj.is_multipart and obj.md5 is None and obj.size == 2 * PART_SIZE
        part = tmp_path / (MULTI + ".part")
        part.parent.mkdir(parents=True)
        part.write_bytes(s3.tree[MULTI][: PART_SIZE + 7])
        report = await download(bucket, [obj], tmp_path)
        assert report.ok and report.resumed == [MULTI] and report.bytes == obj.size - PART_SIZE - 7
        assert (tmp_path / MULTI).read_bytes() == s3.tree[MULTI]
        # A listing that disagrees with what the server sends on size is refused, nothing kept.
        other = tmp_path / "other"
        wrong = S3Object(obj.key, obj.size + 1, obj.etag)
        bad = await download(bucket, [wrong], other)
    assert bad.failed[MULTI].startswith("CorruptDownload: ") and MULTI in bad.failed[MULTI]
    assert not list(other.rglob("*.gz*"))


async def test_object_gone_after_listing_is_reported_and_the_rest_continue(s3, tmp_path):
    key = f"{SRC}explanations-gpt-4o-mini/batch-1.jsonl.gz"
    async with s3.bucket() as bucket:
        objects = await bucket.list(f"{SRC}explanations-gpt-4o-mini/")
        assert len(objects) == 2
        s3.client.delete_object(Bucket=BUCKET, Key=key)
        try:
            report = await download(bucket, objects, tmp_path)
        finally:
            s3.put(key, s3.tree[key])
    assert report.downloaded == [f"{SRC}explanations-gpt-4o-mini/batch-0.jsonl.gz"]
    assert report.failed[key].startswith("NotFound: HTTP 404") and key in report.failed[key]
    assert not (tmp_path / key).exists() and not (tmp_path / (key + ".part")).exists()


async def test_object_changed_since_listing(s3, tmp_path):
    key = "v1/gpt2-small/1-res-jb/source.jsonl"
    async with s3.bucket() as bucket:
        [old] = await bucket.list(key)
        s3.put(key, b'{"id": "1-res-jb", "v": 2}\n')
        try:
            # The stale listing no longer describes what the server sends.
            report = await download(bucket, [old], tmp_path)
            assert "changed since it was listed" in report.failed[key]
            # A .part of the old version (its ETag recorded) is not continued with new bytes.
            [new] = await bucket.list(key)
            part = tmp_path / (key + ".part")
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(b'{"id": "1-')
            (tmp_path / (key + ".part.etag")).write_text(old.etag + "\n")
            report = await download(bucket, [new], tmp_path)
            assert report.ok and report.resumed == [] and report.bytes == new.size
            assert (tmp_path / key).read_bytes() == b'{"id": "1-res-jb", "v": 2}\n'
            # A complete file whose ETag no longer matches the listing is fetched again.
            report = await download(bucket, [old], tmp_path)
            assert key in report.failed  # (the stale listing again) ...
            assert (tmp_path / key).read_bytes() == b'{"id": "1-res-jb", "v": 2}\n'  # ... and nothing lost
        finally:
            s3.put(key, s3.tree[key])


async def test_unsafe_keys_are_refused_before_any_request(s3, tmp_path):
    root = tmp_path / "cache"
    bad = [S3Object(k, 1, "e") for k in ("v1/m/0-a/../../../../evil", "/tmp/evil", "v1/m/0-a/features/a b")]
    rec = Recording()
    async with s3.bucket(rec) as bucket:
        report = await download(bucket, bad, root)
    assert set(report.failed) == {o.key for o in bad}
    assert all(r.startswith("UnsafeKey: ") for r in report.failed.values())
    assert rec.requests == [] and not root.exists()


async def test_symlink_escape_in_the_cache_is_refused(s3, tmp_path):
    root, outside = tmp_path / "cache", tmp_path / "outside"
    (root / "v1" / "gpt2-small").mkdir(parents=True)
    outside.mkdir()
    (root / "v1" / "gpt2-small" / "0-res-jb").symlink_to(outside, target_is_directory=True)
    async with s3.bucket() as bucket:
        objects = await bucket.list(f"{SRC}source.jsonl")
        report = await download(bucket, objects, root)
    assert report.failed[f"{SRC}source.jsonl"].startswith("UnsafeKey: ")
    assert list(outside.iterdir()) == []


_KILLED_CHILD = textwrap.dedent(
    """
    import asyncio, sys, httpx
    from npclient.exports import ExportBucket, S3Object, download

    class Slow(httpx.AsyncByteStream):
        def __init__(self, inner): self.inner = inner
        async def __aiter__(self):
            n = 0
            async for chunk in self.inner:
                yield chunk
                n += len(chunk)
                if n >= 1 << 20:
                    await asyncio.sleep(60)  # killed here, with about 1 MiB in the .part

    class SlowTransport(httpx.AsyncBaseTransport):
        def __init__(self): self.inner = httpx.AsyncHTTPTransport()
        async def handle_async_request(self, request):
            r = await self.inner.handle_async_request(request)
            return httpx.Response(r.status_code, headers=r.headers, stream=Slow(r.stream))

    async def main(url, key, size, etag, root):
        async with ExportBucket(url, transport=SlowTransport()) as bucket:
            await download(bucket, [S3Object(key, int(size), etag)], root)

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_kill_9_mid_download_leaves_a_part_that_the_rerun_resumes(s3, tmp_path):
    async with s3.bucket() as bucket:
        [obj] = await bucket.list(MULTI)
    part = tmp_path / (MULTI + ".part")
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, s3.url, obj.key, str(obj.size), obj.etag, str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and child.poll() is None:
            if part.exists() and part.stat().st_size >= 1 << 20:
                break
            await asyncio.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()
        assert part.exists() and part.stat().st_size >= 1 << 20, "child never wrote 1 MiB"
    finally:
        child.send_signal(signal.SIGKILL)  # kill -9 (a no-op if it already ended)
        child.wait(timeout=10)
    have = part.stat().st_size
    left = sorted(p.name for p in part.parent.iterdir())
    assert left == ["batch-0.jsonl.gz.part", "batch-0.jsonl.gz.part.etag"]  # no final file
    async with s3.bucket() as bucket:
        report = await download(bucket, [obj], tmp_path)
    assert report.ok and report.resumed == [MULTI] and report.bytes == obj.size - have
    assert (tmp_path / MULTI).read_bytes() == s3.tree[MULTI]


# ---- faults moto cannot produce: in-process transport ----------------------------------------
def _object_server(versions: dict[str, bytes], current: str, log: list[httpx.Request], fail_first: int = 0):
    """An S3-like GET handler that honours If-Range the way real S3 does."""
    state = {"failures": fail_first}

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request)
        if state["failures"]:
            state["failures"] -= 1
            return httpx.Response(503, text="<Error><Code>SlowDown</Code></Error>")
        body, etag = versions[current], f'"{current}"'
        rng, if_range = request.headers.get("range"), request.headers.get("if-range")
        if rng and (if_range is None or if_range == etag):
            start = int(rng.split("=")[1].rstrip("-"))
            return httpx.Response(
                206,
                content=body[start:],
                headers={"etag": etag, "content-range": f"bytes {start}-{len(body) - 1}/{len(body)}"},
            )
        return httpx.Response(200, content=body, headers={"etag": etag})

    return handler


async def test_if_range_answered_with_200_drops_the_partial(tmp_path):
    old, new = b"A" * 100, b"B" * 120
    v_old, v_new = _md5(old), _md5(new)
    log: list[httpx.Request] = []
    key = f"{SRC}features/batch-0.jsonl.gz"
    part = tmp_path / (key + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(old[:50])
    transport = httpx.MockTransport(_object_server({v_old: old, v_new: new}, v_new, log))
    async with ExportBucket("http://s3.test/bkt", transport=transport, retry=FAST_RETRY, sleep=_no_sleep) as bucket:
        # Listed before the change: If-Range carries the old ETag, S3 answers 200 with the new body.
        report = await download(bucket, [S3Object(key, len(old), v_old)], tmp_path)
        assert log[0].headers["range"] == "bytes=50-" and log[0].headers["if-range"] == f'"{v_old}"'
        assert "changed since it was listed" in report.failed[key]
        assert not part.exists() and not (tmp_path / key).exists()  # the old bytes are gone
        # Listed again: a fresh download from zero.
        log.clear()
        report = await download(bucket, [S3Object(key, len(new), v_new)], tmp_path)
        assert [r.headers.get("range") for r in log] == [None]
        assert report.ok and (tmp_path / key).read_bytes() == new
        # A .part whose recorded ETag is not the listed one is never continued: no Range is sent.
        log.clear()
        (tmp_path / key).unlink()
        part.write_bytes(old[:50])
        (tmp_path / (key + ".part.etag")).write_text(v_old)
        report = await download(bucket, [S3Object(key, len(new), v_new)], tmp_path)
    assert [r.headers.get("range") for r in log] == [None]
    assert report.ok and report.resumed == [] and (tmp_path / key).read_bytes() == new


async def test_server_drops_the_range_with_a_200(tmp_path):
    body = b"C" * 300
    tag = _md5(body)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body, headers={"etag": f'"{tag}"'})  # If-Range failed

    key = f"{SRC}features/batch-1.jsonl.gz"
    part = tmp_path / (key + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"C" * 100)
    async with ExportBucket("http://s3.test/bkt", transport=httpx.MockTransport(handler), retry=FAST_RETRY,
                            sleep=_no_sleep) as bucket:
        report = await download(bucket, [S3Object(key, 300, tag)], tmp_path)
    assert seen[0].headers["range"] == "bytes=100-"
    assert report.ok and report.resumed == [] and report.bytes == 300
    assert (tmp_path / key).read_bytes() == body


class _Bytes(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):
        yield self.data


async def test_a_body_that_ends_early_is_resumed(tmp_path):
    body = bytes(range(256)) * 4
    tag = _md5(body)
    log: list[httpx.Request] = []
    inner = _object_server({tag: body}, tag, log)

    def handler(request: httpx.Request) -> httpx.Response:
        if not log:  # the first answer stops at byte 40, cleanly and without a Content-Length
            log.append(request)
            return httpx.Response(200, headers={"etag": f'"{tag}"'}, stream=_Bytes(body[:40]))
        return inner(request)

    key = f"{SRC}activations/batch-7.jsonl.gz"
    async with ExportBucket("http://s3.test/bkt", transport=httpx.MockTransport(handler), retry=FAST_RETRY,
                            sleep=_no_sleep) as bucket:
        report = await download(bucket, [S3Object(key, len(body), tag)], tmp_path)
    assert [r.headers.get("range") for r in log] == [None, "bytes=40-"]
    assert report.ok and report.resumed == [key] and (tmp_path / key).read_bytes() == body


async def test_transient_503_is_retried_and_403_is_typed(tmp_path):
    body = b"D" * 64
    log: list[httpx.Request] = []
    transport = httpx.MockTransport(_object_server({_md5(body): body}, _md5(body), log, fail_first=2))
    key = f"{SRC}source.jsonl"
    async with ExportBucket("http://s3.test/bkt", transport=transport, retry=FAST_RETRY, sleep=_no_sleep) as bucket:
        report = await download(bucket, [S3Object(key, 64, _md5(body))], tmp_path)
    assert report.ok and len(log) == 3 and (tmp_path / key).read_bytes() == body

    def forbidden(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>")

    async with ExportBucket("http://s3.test/bkt", transport=httpx.MockTransport(forbidden), retry=FAST_RETRY,
                            sleep=_no_sleep) as bucket:
        with pytest.raises(Unauthorized):
            await bucket.list("v1/")
        report = await download(bucket, [S3Object(f"{SRC}model.jsonl", 3, "e")], tmp_path / "x")
    assert report.failed[f"{SRC}model.jsonl"].startswith("Unauthorized: HTTP 403")
    assert not list((tmp_path / "x").rglob("*.part*"))


async def test_listing_5xx_is_retried_then_raised():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500, text="oops")

    from npclient.errors import ServerError

    async with ExportBucket("http://s3.test/bkt", transport=httpx.MockTransport(handler), retry=FAST_RETRY,
                            sleep=_no_sleep) as bucket:
        with pytest.raises(ServerError):
            await bucket.list("v1/")
    assert len(calls) == FAST_RETRY.max_attempts


def test_corrupt_download_is_an_export_error():
    assert issubclass(CorruptDownload, ExportError) and issubclass(UnsafeKey, ExportError)
