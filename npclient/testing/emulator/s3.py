"""A read-only, public, unsigned S3 bucket served from a folder: the bulk exports' stand-in.

Path-style only: `GET /{bucket}?list-type=2&...` lists (ListObjectsV2, and V1 without
`list-type`), `GET|HEAD /{bucket}/{key}` reads, with `Range`, `If-Range`, `If-Match`,
`If-None-Match`. Answers are formatted as S3 formats them (XML bodies, quoted ETags,
`x-amz-request-id`, `Server: AmazonS3`). Every request is logged in `app.state.s3.requests`.

Safety: a key maps to a file under `root` only when it has no empty, `.` or `..` segment,
no backslash or NUL, is not absolute, and its resolved path stays under `root` (so symlinks
that escape are neither listed nor served).

ETags: the quoted MD5 hex of the content; objects of `multipart_threshold` bytes or more
(default 8 MiB, as the AWS CLI uploads) get S3's multipart ETag: the MD5 of the
concatenated binary MD5s of the `part_size` parts, then `-<number of parts>`.

`S3Faults` injects what the real bucket does now and then: listed keys that 404, bodies
cut short under a full `Content-Length`, bytes flipped, and a hostile listing with keys
that try to escape a downloader's folder.

This module is the HTTP side (XML answers, ranges, conditional requests, the server); the
bucket's objects, ETags, faults and request log are `s3_store.py`'s, re-exported here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable, Iterable
from datetime import timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus
from xml.sax.saxutils import escape

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .s3_store import (
    MIB,
    S3Faults,
    S3Request,
    _corrupt_positions,
    _Object,
    _Store,
    hostile_keys_for,
    s3_etag,
    safe_key_path,
)
from .server import ThreadedServer

__all__ = [
    "S3Faults",
    "S3Request",
    "S3Server",
    "create_s3_app",
    "s3_etag",
    "safe_key_path",
    "hostile_keys_for",
    "DEFAULT_BUCKET",
    "S3_NAMESPACE",
]

DEFAULT_BUCKET = "neuronpedia-datasets"
S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_XML_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_CHUNK = 64 * 1024

ConnectionCloser = Callable[[Any, bool], bool]


# --------------------------------------------------------------------------- XML


def _x(text: str) -> str:
    return escape(text, {'"': "&quot;"})


def _error_xml(code: str, message: str, request_id: str, **extra: str) -> bytes:
    body = f"<Error><Code>{code}</Code><Message>{_x(message)}</Message>"
    for k, v in extra.items():
        body += f"<{k}>{_x(v)}</{k}>"
    host_id = base64.b64encode(hashlib.sha256(request_id.encode()).digest()).decode()
    body += f"<RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>"
    return _XML_HEAD + body.encode()


def _encode_token(key: str) -> str:
    return base64.b64encode(b"\x01npemu" + key.encode("utf-8", "surrogateescape")).decode()


def _decode_token(token: str) -> str | None:
    try:
        raw = base64.b64decode(token.encode(), validate=True)
    except (ValueError, UnicodeEncodeError):
        return None
    if not raw.startswith(b"\x01npemu"):
        return None
    return raw[6:].decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- app


class _S3App:
    def __init__(self, store: _Store, closer_ref: list[ConnectionCloser | None]) -> None:
        self.store = store
        self.closer_ref = closer_ref

    # ---------------------------------------------------------------- helpers

    def _headers(self, rid: str, extra: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
        h = {
            "x-amz-request-id": rid,
            "x-amz-id-2": base64.b64encode(hashlib.sha256(rid.encode()).digest()).decode(),
            "server": "AmazonS3",
        }
        h.update(extra)
        return h

    def _error(self, rec: S3Request, status: int, code: str, message: str, head: bool = False,
               **extra: str) -> Response:
        rid = self.store.request_id()
        rec.status = status
        body = b"" if head else _error_xml(code, message, rid, **extra)
        headers = self._headers(rid)
        if head:
            return Response(b"", status_code=status, headers=headers)
        return Response(body, status_code=status, headers=headers, media_type="application/xml")

    # ---------------------------------------------------------------- dispatch

    async def endpoint(self, request: Request) -> Response:
        scope = request.scope
        path: str = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        method = request.method
        bucket, _, key = path.lstrip("/").partition("/")
        has_key = "/" in path.lstrip("/") and key != ""
        rec = self.store.log(S3Request(method, path, query, key if has_key else None, request.headers.get("range")))
        head = method == "HEAD"
        if not bucket:
            return self._error(rec, 403, "AccessDenied", "Access Denied", head)
        if bucket != self.store.bucket:
            return self._error(rec, 404, "NoSuchBucket", "The specified bucket does not exist", head,
                               BucketName=bucket)
        if method not in ("GET", "HEAD"):
            return self._error(rec, 403, "AccessDenied", "Access Denied", head)
        if not has_key:
            return self._list(request, rec)
        return self._object(request, rec, key)

    # ---------------------------------------------------------------- listing

    def _list(self, request: Request, rec: S3Request) -> Response:
        q = request.query_params
        v2 = q.get("list-type") == "2"
        if "list-type" in q and not v2:
            return self._error(rec, 400, "InvalidArgument", "Invalid List Type specified",
                               ArgumentName="list-type", ArgumentValue=q["list-type"])
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        encoding = q.get("encoding-type")
        if encoding not in (None, "url"):
            return self._error(rec, 400, "InvalidArgument", "Invalid Encoding Method specified in Request",
                               ArgumentName="encoding-type", ArgumentValue=encoding)
        raw_max = q.get("max-keys", "1000")
        try:
            max_keys = int(raw_max)
            if max_keys < 0:
                raise ValueError
        except ValueError:
            return self._error(rec, 400, "InvalidArgument", "Provided max-keys not an integer or within integer range",
                               ArgumentName="max-keys", ArgumentValue=raw_max)
        max_keys = min(max_keys, 1000)
        token = q.get("continuation-token")
        start_after = q.get("start-after", "") if v2 else q.get("marker", "")
        after = start_after
        if v2 and token is not None:
            decoded = _decode_token(token)
            if decoded is None:
                return self._error(rec, 400, "InvalidArgument", "The continuation token provided is incorrect",
                                   ArgumentName="continuation-token", ArgumentValue=token)
            after = decoded
        after_b = after.encode("utf-8", "surrogateescape")

        contents: list[_Object] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for key, fpath in self.store.scan():
            kb = key.encode("utf-8", "surrogateescape")
            if not key.startswith(prefix) or (after and kb <= after_b):
                continue
            if delimiter:
                pos = key.find(delimiter, len(prefix))
                if pos >= 0:
                    cp = key[: pos + len(delimiter)]
                    if prefixes and prefixes[-1] == cp:
                        continue
                    if token is not None and after_b.startswith(cp.encode("utf-8", "surrogateescape")):
                        continue  # the previous page ended with (or inside) this common prefix
                    if len(contents) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(cp)
                    last = cp
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            obj = self.store.listed(key, fpath)
            if obj is None:  # vanished between scan and stat
                continue
            contents.append(obj)
            last = key

        enc: Callable[[str], str] = (lambda s: quote_plus(s, safe="/")) if encoding == "url" else (lambda s: s)
        parts = [f'<ListBucketResult xmlns="{S3_NAMESPACE}">', f"<Name>{_x(self.store.bucket)}</Name>",
                 f"<Prefix>{_x(enc(prefix))}</Prefix>"]
        if v2:
            if token is not None:
                parts.append(f"<ContinuationToken>{_x(token)}</ContinuationToken>")
            if truncated:
                parts.append(f"<NextContinuationToken>{_encode_token(last)}</NextContinuationToken>")
            if start_after:
                parts.append(f"<StartAfter>{_x(enc(start_after))}</StartAfter>")
            parts.append(f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>")
        else:
            parts.append(f"<Marker>{_x(enc(start_after))}</Marker>")
            if truncated and delimiter:
                parts.append(f"<NextMarker>{_x(enc(last))}</NextMarker>")
        parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            parts.append(f"<Delimiter>{_x(enc(delimiter))}</Delimiter>")
        if encoding:
            parts.append(f"<EncodingType>{encoding}</EncodingType>")
        parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        for obj in contents:
            parts.append(
                f"<Contents><Key>{_x(enc(obj.key))}</Key><LastModified>{obj.iso}</LastModified>"
                f"<ETag>{_x(obj.etag)}</ETag><Size>{obj.size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            )
        for cp in prefixes:
            parts.append(f"<CommonPrefixes><Prefix>{_x(enc(cp))}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        rec.status = 200
        rid = self.store.request_id()
        return Response(_XML_HEAD + "".join(parts).encode("utf-8", "surrogateescape"), status_code=200,
                        headers=self._headers(rid), media_type="application/xml")

    # ---------------------------------------------------------------- objects

    def _object(self, request: Request, rec: S3Request, key: str) -> Response:
        head = request.method == "HEAD"
        faults = self.store.faults
        obj = self.store.get(key)
        if obj is not None and key in faults.missing:
            rec.fault = "missing"
            obj = None
        elif obj is not None and self.store.flaky_hit(key):
            rec.fault = "flaky"
            obj = None
        if obj is None:
            return self._error(rec, 404, "NoSuchKey", "The specified key does not exist.", head, Key=key)

        h = request.headers
        if_match, if_none_match = h.get("if-match"), h.get("if-none-match")
        if if_match is not None and not _etag_in(obj.etag, if_match):
            return self._error(rec, 412, "PreconditionFailed", "At least one of the pre-conditions you "
                               "specified did not hold", head, Condition="If-Match")
        if if_none_match is not None and _etag_in(obj.etag, if_none_match):
            rec.status = 304
            rid = self.store.request_id()
            return Response(b"", status_code=304, headers=self._headers(
                rid, [("etag", obj.etag), ("last-modified", obj.http_date)]))

        start, end = 0, obj.size - 1
        partial = False
        rng = h.get("range")
        if rng is not None and _if_range_ok(h.get("if-range"), obj):
            parsed = _parse_range(rng, obj.size)
            if parsed == "unsatisfiable":
                return self._error(rec, 416, "InvalidRange", "The requested range is not satisfiable", head,
                                   RangeRequested=rng, ActualObjectSize=str(obj.size))
            if parsed is not None:
                start, end = parsed
                partial = True
        length = max(end - start + 1, 0)
        headers = [
            ("last-modified", obj.http_date),
            ("etag", obj.etag),
            ("accept-ranges", "bytes"),
            ("content-type", "binary/octet-stream"),
        ]
        if partial:
            headers.append(("content-range", f"bytes {start}-{end}/{obj.size}"))
        status = 206 if partial else 200
        rec.status = status
        rid = self.store.request_id()
        send_n: int | None = None
        corrupt = key in faults.corrupt
        if key in faults.truncated and not head:
            n = faults.truncated[key]
            send_n = length // 2 if n < 0 else min(n, max(length - 1, 0))
            rec.fault = "truncated"
        elif corrupt:
            rec.fault = "corrupt"
        return _ObjectResponse(
            obj, start, length, status, self._headers(rid, headers), head=head, send_n=send_n,
            corrupt=corrupt, closer=self.closer_ref[0],
        )


def _etag_in(etag: str, header: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    bare = etag.strip('"')
    return any(t == "*" or t.removeprefix("W/").strip('"') == bare for t in tags)


def _if_range_ok(if_range: str | None, obj: _Object) -> bool:
    """Whether a Range applies: no If-Range, or one naming the current ETag / a date not older."""
    if if_range is None:
        return True
    v = if_range.strip()
    if v.startswith('"') or v.startswith("W/"):
        return v.removeprefix("W/").strip('"') == obj.etag.strip('"')
    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp() >= obj.mtime


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive; "unsatisfiable"; or None (ignored: malformed or multi-range)."""
    h = header.strip()
    if not h.lower().startswith("bytes="):
        return None
    spec = h[6:].strip()
    if "," in spec or "-" not in spec:
        return None
    a, _, b = spec.partition("-")
    a, b = a.strip(), b.strip()
    try:
        if a == "":
            if not b.isdigit():
                return None
            n = int(b)
            if n == 0 or size == 0:
                return "unsatisfiable"
            return max(size - n, 0), size - 1
        if not a.isdigit() or (b and not b.isdigit()):
            return None
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        return None
    if b and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class _ObjectResponse(Response):
    """Streams (a range of) an object; may flip bytes or stop early and close the connection."""

    def __init__(self, obj: _Object, start: int, length: int, status: int, headers: dict[str, str], *,
                 head: bool, send_n: int | None, corrupt: bool, closer: ConnectionCloser | None) -> None:
        super().__init__(b"", status_code=status, headers=headers)
        self.headers["content-length"] = str(length)
        self.obj = obj
        self.start = start
        self.length = length
        self.head = head
        self.send_n = send_n
        self.corrupt = corrupt
        self.closer = closer

    def _chunks(self, limit: int) -> Iterable[bytes]:
        obj, pos, end = self.obj, self.start, self.start + limit
        flips = _corrupt_positions(obj.size) if self.corrupt else []
        fh = obj.path.open("rb") if obj.path is not None else None
        try:
            if fh is not None:
                fh.seek(pos)
            while pos < end:
                n = min(_CHUNK, end - pos)
                chunk = fh.read(n) if fh is not None else obj.data[pos : pos + n]  # type: ignore[index]
                if not chunk:
                    break
                if flips:
                    buf = bytearray(chunk)
                    for f in flips:
                        if pos <= f < pos + len(buf):
                            buf[f - pos] ^= 0xFF
                    chunk = bytes(buf)
                yield chunk
                pos += len(chunk)
        finally:
            if fh is not None:
                fh.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if self.head:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        limit = self.length if self.send_n is None else self.send_n
        for chunk in self._chunks(limit):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.send_n is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # Truncated: close the connection with the body short of its Content-Length.
        if self.closer is not None and self.closer(scope.get("client"), False):
            await _await_disconnect(receive)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _await_disconnect(receive: Receive) -> None:
    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(wait(), 2.0)
    except asyncio.TimeoutError:
        pass


class _Dispatch:
    """Every HTTP request goes to the bucket handler (any path, any method)."""

    def __init__(self, app: ASGIApp, handler: _S3App) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = await self.handler.endpoint(Request(scope, receive))
        await response(scope, receive, send)


def create_s3_app(
    root: Path,
    bucket: str = DEFAULT_BUCKET,
    *,
    faults: S3Faults | None = None,
    multipart_threshold: int = 8 * MIB,
    part_size: int = 8 * MIB,
) -> Starlette:
    """A Starlette app serving the files under `root` as a public read-only S3 bucket.

    `app.state.s3` holds the bucket: `.faults` (settable), `.requests` (log), `.reset()`.
    `app.state.s3_closer` is a one-element list where a hosting server puts its connection
    closer (`(client, hard) -> bool`); without one, truncated bodies just end early.
    """
    if not bucket or "/" in bucket:
        raise ValueError(f"invalid bucket name {bucket!r}")
    if multipart_threshold < 1 or part_size < 1:
        raise ValueError("multipart_threshold and part_size must be >= 1")
    store = _Store(Path(root), bucket, faults or S3Faults(), multipart_threshold, part_size)
    closer_ref: list[ConnectionCloser | None] = [None]
    handler = _S3App(store, closer_ref)
    # Dispatch in a middleware, not a Route: route patterns ('.*') do not match keys with '\n'.
    app = Starlette(middleware=[Middleware(_Dispatch, handler=handler)])
    app.state.s3 = store
    app.state.s3_closer = closer_ref
    return app


# --------------------------------------------------------------------------- server


class S3Server(ThreadedServer):
    """`with S3Server(root) as s3: httpx.get(s3.url + "/neuronpedia-datasets?list-type=2")`.

    uvicorn in a daemon thread, 127.0.0.1 and an ephemeral port by default. `bucket_url` is
    `url + "/" + bucket`. `faults` may be changed while it runs; `requests` is the log.
    """

    thread_name = "npclient-s3"

    def __init__(
        self,
        root: Path,
        bucket: str = DEFAULT_BUCKET,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: S3Faults | None = None,
        *,
        multipart_threshold: int = 8 * MIB,
        part_size: int = 8 * MIB,
    ) -> None:
        super().__init__(host, port)
        self.root = Path(root)
        self.bucket = bucket
        self.app = create_s3_app(self.root, bucket, faults=faults, multipart_threshold=multipart_threshold,
                                 part_size=part_size)
        self.app.state.s3_closer[0] = self._close_connection

    @property
    def store(self) -> _Store:
        store: _Store = self.app.state.s3
        return store

    @property
    def faults(self) -> S3Faults:
        return self.store.faults

    @faults.setter
    def faults(self, value: S3Faults | None) -> None:
        self.store.faults = value or S3Faults()

    @property
    def requests(self) -> list[S3Request]:
        with self.store._lock:
            return list(self.store.requests)

    def reset(self) -> None:
        self.store.reset()

    @property
    def bucket_url(self) -> str:
        return f"{self.url}/{self.bucket}"
