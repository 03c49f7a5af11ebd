"""Read-only access to a public S3 bucket over plain HTTP: listing and ranged GETs, unsigned.

Neuronpedia's export bucket is readable anonymously, so nothing here signs a request: a
listing is `GET {bucket}/?list-type=2&prefix=...` (ListObjectsV2, followed through its
continuation tokens) and a download is a `GET {bucket}/{key}`, optionally with `Range`.
One pooled `httpx.AsyncClient` serves every request; tests pass `transport=` or point the
URL at a local S3 (moto) instead of patching anything. httpx failures and error statuses
become `NPError`s through `errors.py`, the mapping the Neuronpedia client uses too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Awaitable, Callable, Optional, Union
from urllib.parse import quote

import httpx

from ..errors import ExportError, InvalidIdError, InvalidOptionError, NPTransportError, PayloadError
from ..ids import SourceId
from .errors import TRANSPORT_ERRORS, raise_for_status, raise_for_stream_status, transport_error
from .retry import RetryPolicy

__all__ = [
    "S3Object",
    "ExportBucket",
    "DEFAULT_TIMEOUT",
    "DEFAULT_RETRY",
    "MAX_LIST_PAGES",
]

log = logging.getLogger("npclient.exports")

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_RETRY = RetryPolicy(max_attempts=4, initial_wait_s=0.5, max_wait_s=8.0)
#: A listing that has not ended after this many pages (10 million keys) is a server bug.
MAX_LIST_PAGES = 10_000
_CHUNK = 1 << 16
_MD5 = re.compile(r"^[0-9a-f]{32}$")

Sleep = Callable[[float], Awaitable[None]]


def normalize_etag(value: Optional[str]) -> str:
    """`"abc"` / `W/"abc"` / `abc` -> `abc` (S3 quotes its ETags, in headers and listings)."""
    if not value:
        return ""
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    return text.strip('"')


@dataclass(frozen=True)
class S3Object:
    """One listed object. `etag` is unquoted; `last_modified` is None when not given."""

    key: str
    size: int
    etag: str
    last_modified: Optional[datetime] = None

    @property
    def md5(self) -> Optional[str]:
        """The MD5 of the content when the ETag is a plain MD5 (not a multipart `…-N` one)."""
        tag = self.etag.lower()
        return tag if _MD5.match(tag) else None

    @property
    def is_multipart(self) -> bool:
        return "-" in self.etag


def _parse_time(text: Optional[str]) -> Optional[datetime]:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _text(node: ET.Element, tag: str) -> Optional[str]:
    child = node.find(f"{{*}}{tag}")
    if child is None:
        child = node.find(tag)
    return None if child is None else (child.text or "")


def _parse_listing(content: bytes, url: str) -> tuple[list[S3Object], list[str], bool, Optional[str]]:
    """(objects, common prefixes, is_truncated, next token) from a ListObjectsV2 body."""
    if b"<!DOCTYPE" in content[:2048] or b"<!ENTITY" in content[:2048]:
        raise PayloadError(f"listing with a DOCTYPE refused ({url})")
    try:
        root = ET.fromstring(content)
    except ET.ParseError as exc:
        raise NPTransportError(f"malformed listing XML ({exc})", url=url) from None
    if not root.tag.endswith("ListBucketResult"):
        raise PayloadError(f"not a ListObjectsV2 result: <{root.tag}> ({url})")
    objects: list[S3Object] = []
    for node in root.iterfind("{*}Contents"):
        key = _text(node, "Key")
        size = _text(node, "Size")
        if key is None or size is None or not size.strip().isdigit():
            raise PayloadError(f"listing entry without a key or size ({url})")
        objects.append(
            S3Object(key, int(size), normalize_etag(_text(node, "ETag")), _parse_time(_text(node, "LastModified")))
        )
    prefixes = [p for node in root.iterfind("{*}CommonPrefixes") if (p := _text(node, "Prefix"))]
    truncated = (_text(root, "IsTruncated") or "false").strip().lower() == "true"
    token = _text(root, "NextContinuationToken") or None
    return objects, prefixes, truncated, token


async def iter_raw(response: httpx.Response, url: str, chunk_size: int = _CHUNK) -> AsyncIterator[bytes]:
    """The body's bytes as sent (no content decoding), with httpx errors mapped to `NPTransportError`."""
    if response.is_stream_consumed:  # an in-process transport (httpx.MockTransport) built the body eagerly
        if response.content:
            yield response.content
        return
    try:
        async for chunk in response.aiter_raw(chunk_size):
            yield chunk
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, url) from None


class ExportBucket:
    """An anonymous, read-only view of an S3 bucket (Neuronpedia's exports by default).

    `url` is the bucket root (`exports_url()` explains the default); `concurrency` bounds the
    requests in flight; `retry` retries transient faults (connection errors, timeouts, 5xx)
    of each request; 403/404 raise `Unauthorized`/`NotFound`.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        timeout: Union[httpx.Timeout, float] = DEFAULT_TIMEOUT,
        concurrency: int = 8,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = asyncio.sleep,
        max_pages: int = MAX_LIST_PAGES,
    ) -> None:
        if concurrency < 1:
            raise InvalidOptionError("concurrency must be >= 1", option="concurrency")
        try:
            self.url = exports_url(url)
        except ValueError as exc:  # exports_url's own check (layout.py): an input error like the others
            raise InvalidOptionError(str(exc), option="exports_url") from None
        self.concurrency = concurrency
        self.retry = retry
        self.sleep = sleep
        self.max_pages = max_pages
        self._semaphore = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"user-agent": "np-mirror (npclient.exports)", "accept-encoding": "identity"},
            follow_redirects=False,
        )
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"ExportBucket(url={self.url!r}, concurrency={self.concurrency}, retry={self.retry!r})"

    async def __aenter__(self) -> "ExportBucket":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def object_url(self, key: str) -> str:
        return f"{self.url}/{quote(key, safe='/-_.~')}"

    # ---- listing ---------------------------------------------------------------------------
    async def _get_listing_page(self, params: dict[str, str]) -> bytes:
        url = self.url + "/"
        async for attempt in self.retry.retrying(self.sleep):
            with attempt:
                async with self._semaphore:
                    self.requests_sent += 1
                    try:
                        response = await self._http.get(url, params=params)
                    except TRANSPORT_ERRORS as exc:
                        raise transport_error(exc, url) from None
                raise_for_status(response, str(response.url))
                if response.status_code != 200:
                    raise ExportError(f"unexpected HTTP {response.status_code} listing {url}")
                return response.content
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _list(self, prefix: str, delimiter: Optional[str]) -> tuple[list[S3Object], list[str]]:
        objects: list[S3Object] = []
        prefixes: list[str] = []
        token: Optional[str] = None
        seen: set[str] = set()
        for _ in range(self.max_pages):
            params = {"list-type": "2", "prefix": prefix}
            if delimiter:
                params["delimiter"] = delimiter
            if token:
                params["continuation-token"] = token
            content = await self._get_listing_page(params)
            page_objects, page_prefixes, truncated, token = _parse_listing(content, self.url)
            objects.extend(page_objects)
            prefixes.extend(page_prefixes)
            if not truncated:
                return objects, prefixes
            if not token:
                raise PayloadError(f"listing of {prefix!r} is truncated but has no continuation token")
            if token in seen:
                raise ExportError(f"listing of {prefix!r} repeats a continuation token; giving up")
            seen.add(token)
        raise ExportError(f"listing of {prefix!r} did not end after {self.max_pages} pages")

    async def list(self, prefix: Optional[str] = None) -> list[S3Object]:
        """Every object under `prefix` (default: the exports, `v1/`), in the bucket's (UTF-8 binary) key order."""
        objects, _ = await self._list(VERSION_PREFIX if prefix is None else prefix, None)
        return objects

    async def list_folders(self, prefix: str) -> list[str]:
        """The names of the "folders" right under `prefix` (a `delimiter=/` listing)."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        _, prefixes = await self._list(prefix, "/")
        names = []
        for p in prefixes:
            name = p[len(prefix) :].rstrip("/")
            if name and "/" not in name:
                names.append(name)
        return names

    async def list_models(self) -> list[str]:
        return await self.list_folders(VERSION_PREFIX)

    async def list_sources(self, model: Optional[str] = None) -> list[SourceId]:
        """The sources that have an export, for one model or for all; `headvis`/`jlens` are skipped."""
        models = [model] if model is not None else await self.list_models()
        sources: list[SourceId] = []
        for model_id in models:
            try:
                SourceId(model_id, "0-probe")  # validates the model id before it goes in a URL
            except InvalidIdError:
                if model is not None:
                    raise
                log.warning("skipping model folder with an unusable name: %r", model_id)
                continue
            for name in await self.list_folders(f"{VERSION_PREFIX}{model_id}/"):
                if not is_source_folder(name):
                    continue
                try:
                    sources.append(SourceId(model_id, name))
                except InvalidIdError:
                    log.warning("skipping source folder with an unusable name: %r", name)
        return sorted(sources)

    async def list_source(self, source: Union[SourceId, str]) -> list[S3Object]:
        """The export files of one source (metadata, then each folder's batches in numeric order).

        Objects that are not export files (see `parse_key`) are left out; an unsafe key raises
        `UnsafeKey`.
        """
        objects = await self.list(source_prefix(source))
        return sort_batches([o for o in objects if parse_key(o.key) is not None])

    # ---- objects ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def stream(
        self, key: str, *, start: int = 0, if_range: Optional[str] = None
    ) -> AsyncIterator[httpx.Response]:
        """Open `GET key` (from byte `start`, with `If-Range` when given) as a streaming response.

        Raises the `APIStatusError` for a status >= 400. Read the body with `iter_raw`.
        No retry happens here: the caller resumes from what it has.
        """
        url = self.object_url(key)
        headers: dict[str, str] = {}
        if start > 0:
            headers["range"] = f"bytes={start}-"
            if if_range:
                headers["if-range"] = f'"{normalize_etag(if_range)}"'
        async with self._semaphore:
            self.requests_sent += 1
            try:
                response = await self._http.send(self._http.build_request("GET", url, headers=headers), stream=True)
            except TRANSPORT_ERRORS as exc:
                raise transport_error(exc, url) from None
            try:
                await raise_for_stream_status(response, url)
                yield response
            finally:
                await response.aclose()


# Imported last, not first: `npclient.exports` (whose key layout the listings above follow)
# imports this module for its downloads, so whichever of the two is imported first finds the
# other's names defined.
from ..exports.layout import (  # noqa: E402
    VERSION_PREFIX,
    exports_url,
    is_source_folder,
    parse_key,
    sort_batches,
    source_prefix,
)
