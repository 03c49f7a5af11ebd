"""npclient.http: one mapping of httpx failures and statuses onto NPError, the same for both clients.

Both clients run against in-process `httpx.MockTransport`s here (no sockets): what matters is
that the same failure gives the same error whichever client met it.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from npclient.errors import (
    BadRequest,
    InvalidOptionError,
    NotFound,
    NPError,
    NPTransportError,
    RateLimited,
    RouteError,
    ServerError,
    Unauthorized,
)
from npclient.http import ExportBucket, NeuronpediaClient, RetryPolicy
from npclient.http.client import resolve_base_url
from npclient.http.errors import ERROR_BODY_BYTES, retry_after

API = "http://api.test"
BUCKET = "http://s3.test/bkt"
NO_RETRY = RetryPolicy.none()


def _api(handler) -> NeuronpediaClient:
    return NeuronpediaClient(API, transport=httpx.MockTransport(handler), budget=None, retry=NO_RETRY)


def _bucket(handler) -> ExportBucket:
    return ExportBucket(BUCKET, transport=httpx.MockTransport(handler), retry=NO_RETRY)


async def _api_error(handler) -> NPError:
    async with _api(handler) as client:
        with pytest.raises(NPError) as info:
            await client.list_models()
    return info.value


async def _listing_error(handler) -> NPError:
    async with _bucket(handler) as bucket:
        with pytest.raises(NPError) as info:
            await bucket.list("v1/")
    return info.value


async def _download_error(handler) -> NPError:
    async with _bucket(handler) as bucket:
        with pytest.raises(NPError) as info:
            async with bucket.stream("v1/m/0-a/features/batch-0.jsonl.gz"):
                pass
    return info.value


STATUSES = [
    (400, b'{"message": "bad"}', {}, BadRequest),
    (401, b"", {}, Unauthorized),
    (403, b"<Error><Code>AccessDenied</Code></Error>", {}, Unauthorized),
    (404, b'{"message": "Not found"}', {}, NotFound),
    (409, b"", {}, BadRequest),
    (429, b'{"error": "Too many requests"}', {"retry-after": "12"}, RateLimited),
    (429, b"", {}, RateLimited),
    (500, b'{"message": "Unknown Error"}', {}, RouteError),
    (500, b"oops", {}, ServerError),
    (503, b"<Error><Code>SlowDown</Code></Error>", {}, ServerError),
]


@pytest.mark.parametrize("status, body, headers, kind", STATUSES)
async def test_a_status_is_the_same_error_from_either_client(status, body, headers, kind):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    errors = [await _api_error(handler), await _listing_error(handler), await _download_error(handler)]
    for exc in errors:
        assert type(exc) is kind, (type(exc), exc)
        assert exc.status_code == status and exc.body == body.decode()
        if kind is RateLimited:
            assert exc.retry_after == (12.0 if headers else None)
    assert errors[0].url == API + "/api/model/list"
    assert errors[2].url == BUCKET + "/v1/m/0-a/features/batch-0.jsonl.gz"


@pytest.mark.parametrize(
    "raised, text",
    [
        (httpx.ConnectError("connection refused"), "ConnectError: connection refused"),
        (httpx.RemoteProtocolError("peer closed"), "RemoteProtocolError: peer closed"),
        (httpx.ReadTimeout("slow"), "timed out (ReadTimeout)"),
        (httpx.ConnectTimeout("slow"), "timed out (ConnectTimeout)"),
    ],
)
async def test_a_transport_failure_is_the_same_error_from_either_client(raised, text):
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    api, listing, download = await _api_error(handler), await _listing_error(handler), await _download_error(handler)
    assert str(api) == f"{text} ({API}/api/model/list)"
    assert str(listing) == f"{text} ({BUCKET}/)"
    assert str(download) == f"{text} ({BUCKET}/v1/m/0-a/features/batch-0.jsonl.gz)"
    for exc in (api, listing, download):
        assert type(exc) is NPTransportError


async def test_a_streamed_error_body_is_read_in_part():
    big = b"x" * (ERROR_BODY_BYTES * 3)
    exc = await _download_error(lambda request: httpx.Response(500, content=big))
    assert type(exc) is ServerError and exc.body == "x" * ERROR_BODY_BYTES


async def test_both_clients_retry_the_same_faults():
    """A transient fault (transport, 5xx) is retried by both; an answer (404) by neither."""
    fast = RetryPolicy(max_attempts=3, initial_wait_s=0.0, max_wait_s=0.0)

    for status, retried in ((503, True), (404, False)):
        calls = {"api": 0, "s3": 0}

        def handler(request: httpx.Request, status=status) -> httpx.Response:
            calls["s3" if request.url.host == "s3.test" else "api"] += 1
            return httpx.Response(status)

        async with NeuronpediaClient(API, transport=httpx.MockTransport(handler), budget=None, retry=fast) as client:
            with pytest.raises(NPError):
                await client.list_models()
        async with ExportBucket(BUCKET, transport=httpx.MockTransport(handler), retry=fast) as bucket:
            with pytest.raises(NPError):
                await bucket.list("v1/")
        assert calls == ({"api": 3, "s3": 3} if retried else {"api": 1, "s3": 1}), status


def test_retry_after_header():
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("7") == 7.0 and retry_after("-3") == 0.0 and retry_after("1.5") == 1.5


@pytest.mark.parametrize(
    "make, option",
    [
        (lambda: NeuronpediaClient(API, concurrency=0), "concurrency"),
        (lambda: NeuronpediaClient(API, batch_size=0), "batch_size"),
        (lambda: NeuronpediaClient("ftp://api.test"), "base_url"),
        (lambda: resolve_base_url("www.neuronpedia.org"), "base_url"),
        (lambda: ExportBucket(BUCKET, concurrency=0), "concurrency"),
        (lambda: ExportBucket("s3://bkt"), "exports_url"),
    ],
)
def test_bad_client_options_are_typed_input_errors(make, option):
    async def go():
        return make()

    with pytest.raises(InvalidOptionError) as info:
        asyncio.run(go())
    exc = info.value
    assert isinstance(exc, ValueError) and isinstance(exc, NPError)  # old `except ValueError` still works
    assert exc.option == option and "--" not in str(exc)


def test_the_package_surface_is_the_http_package():
    """`npclient` and `npclient.exports` re-export the clients from `npclient.http`: one object each."""
    import npclient
    import npclient.exports
    import npclient.http.client
    import npclient.http.pacing
    import npclient.http.retry
    import npclient.http.s3

    assert npclient.NeuronpediaClient is npclient.http.NeuronpediaClient is npclient.http.client.NeuronpediaClient
    assert npclient.Budget is npclient.http.pacing.Budget and npclient.Pacer is npclient.http.pacing.Pacer
    assert npclient.RetryPolicy is npclient.http.retry.RetryPolicy
    assert npclient.exports.ExportBucket is npclient.http.s3.ExportBucket
    assert npclient.exports.S3Object is npclient.http.s3.S3Object


OLD_PATHS = {
    "npclient.client": ("npclient.http.client", "NeuronpediaClient"),
    "npclient.pacing": ("npclient.http.pacing", "Budget"),
    "npclient.retry": ("npclient.http.retry", "RetryPolicy"),
    "npclient.transport": ("npclient.http.transport", "ShardedTransport"),
    "npclient.exports.s3": ("npclient.http.s3", "ExportBucket"),
    "npclient.exports.plan": ("npclient.sync.exports", "plan_export"),
    "npclient.exports.source_sync": ("npclient.sync.exports", "sync_source_export"),
    "npclient.exports.importer": ("npclient.store.importer", "import_tree"),
    "npclient.exports.parquet": ("npclient.store.parquet", "export_parquet"),
    "npclient.geometry.results": ("npclient.store.results", "save_neighbors"),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_module_path_still_works_and_warns(old):
    """Deprecate, don't break: each path the redesign moved still gives the same object, with a
    DeprecationWarning naming the new place (in a fresh interpreter, where the import is first)."""
    import subprocess
    import sys

    new, name = OLD_PATHS[old]
    code = (f"import warnings, importlib\nwarnings.simplefilter('always')\n"
            f"with warnings.catch_warnings(record=True) as seen:\n    o = importlib.import_module({old!r})\n"
            f"n = importlib.import_module({new!r})\nassert o.{name} is n.{name}\n"
            f"msgs = [str(w.message) for w in seen if w.category is DeprecationWarning]\n"
            f"assert any({new!r} in m for m in msgs), msgs\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_order_does_not_matter():
    """http.s3 reads the exports' layout and the exports download through http.s3: either may
    be imported first, in a fresh interpreter."""
    import subprocess
    import sys

    for first in ("npclient.http.s3", "npclient.exports", "npclient.exports.download", "npclient.exports.layout",
                  "npclient.http", "npclient"):
        code = (f"import {first}\nfrom npclient.exports import download, ExportBucket\n"
                "assert callable(download) and download.__module__ == 'npclient.exports.download'\n"
                "from npclient.http.s3 import ExportBucket as B\nassert B is ExportBucket\n")
        subprocess.run([sys.executable, "-c", code], check=True)


def test_fetch_with_a_bad_base_url_is_bad_input(capsys):
    """`fetch` builds its client straight from its flags: the client's typed error is exit 2."""
    from np_mirror.app import main

    code = main(["fetch", "gpt2-small/0-res-jb/1", "--base-url", "www.neuronpedia.org"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("np-mirror: bad input: ") and len(err.strip().splitlines()) == 1
    assert "base URL must start with http:// or https://" in err
