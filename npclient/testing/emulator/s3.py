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
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus
from xml.sax.saxutils import escape

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

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
MIB = 1024 * 1024
_XML_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_CHUNK = 64 * 1024
_HOSTILE_BODY = b'{"hostile": "a downloader must never write this key"}\n'
_HOSTILE_MTIME = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()

ConnectionCloser = Callable[[Any, bool], bool]


# --------------------------------------------------------------------------- faults


def hostile_keys_for(source_prefix: str = "v1/gpt2-small/0-res-jb/") -> tuple[str, ...]:
    """Keys a hostile (or merely odd) listing adds, built around one source's prefix.

    Traversal, absolute paths (also ones that become absolute once a prefix is cut off),
    backslashes, a folder marker, and names with spaces, unicode and XML-special characters.
    Absolute ones point under /tmp, so a downloader that fails the test does little harm.
    """
    p = source_prefix
    model_prefix = p.rsplit("/", 2)[0] + "/"
    return (
        "v1/../../etc/passwd",
        p + "features/../../../x.jsonl.gz",
        p + "explanations/../../../../../../../tmp/npclient-s3-hostile/escape.jsonl.gz",
        "/tmp/npclient-s3-hostile/absolute.jsonl.gz",
        model_prefix + "/tmp/npclient-s3-hostile/double-slash.jsonl.gz",
        p + "features//tmp/npclient-s3-hostile/inner-double-slash.jsonl.gz",
        p + "activations/..\\..\\..\\backslash.jsonl.gz",
        p + "features/./batch-0.jsonl.gz",
        p + "features/",
        p + "features/batch-1 (copy).jsonl.gz",
        p + "features/bätch-東京-🙂.jsonl.gz",
        p + "features/a&b<c>\"d'e.jsonl.gz",
        p + "features/%2e%2e%2fpercent.jsonl.gz",
        p + "features/new\nline.jsonl.gz",
        model_prefix + "..",
    )


@dataclass(frozen=True)
class S3Faults:
    """Faults of the S3 stand-in (all off by default).

    - `missing`: keys that stay in the listing but answer 404 NoSuchKey.
    - `flaky`: key -> how many GET/HEAD requests answer 404 before it is served normally.
    - `truncated`: key -> bytes of body sent before the connection is closed, while the
      headers claim the full length (a set or list of keys means: half the body). Over a
      real socket the connection is closed; in-process the short body simply ends.
    - `corrupt`: keys whose bytes are flipped (same length, same ETag as the true object,
      so a client checking the MD5 sees the mismatch); ranged reads see the same damage.
    - `hostile_listing`: the listing also holds `hostile_keys` (default: `hostile_keys_for()`,
      built around `v1/gpt2-small/0-res-jb/`, plus the same built around the first source
      found under root), served from memory with a small body.
    """

    missing: frozenset[str] = frozenset()
    flaky: Mapping[str, int] = field(default_factory=dict)
    truncated: Mapping[str, int] = field(default_factory=dict)
    corrupt: frozenset[str] = frozenset()
    hostile_listing: bool = False
    hostile_keys: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "missing", frozenset(self.missing))
        object.__setattr__(self, "corrupt", frozenset(self.corrupt))
        object.__setattr__(self, "flaky", dict(self.flaky))
        trunc = self.truncated
        if not isinstance(trunc, Mapping):
            trunc = {k: -1 for k in trunc}
        for k, n in trunc.items():
            if n < -1:
                raise ValueError(f"truncated[{k!r}] must be >= 0 (or -1 for half)")
        object.__setattr__(self, "truncated", dict(trunc))
        if self.hostile_keys is not None:
            object.__setattr__(self, "hostile_keys", tuple(self.hostile_keys))


def _corrupt_positions(size: int) -> list[int]:
    """Object offsets whose bytes a corrupt object has flipped (deterministic)."""
    if size <= 0:
        return []
    return sorted({size // 3, size // 2, (2 * size) // 3})


# --------------------------------------------------------------------------- keys and ETags


def safe_key_path(root: Path, key: str) -> Path | None:
    """The file under `root` that `key` names, or None when the key is unsafe or escapes.

    Rejected: empty keys and segments, `.` and `..` segments, absolute keys, backslashes,
    NUL, and any key whose resolved path (symlinks followed) leaves `root`.
    """
    if not key or "\x00" in key or "\\" in key or key.startswith("/"):
        return None
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    base = Path(root).resolve()
    try:
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target != base and base not in target.parents:
        return None
    try:
        if not stat.S_ISREG(target.stat().st_mode):
            return None
    except OSError:
        return None
    return target


def s3_etag(data: bytes | Path, *, multipart_threshold: int = 8 * MIB, part_size: int = 8 * MIB) -> str:
    """The ETag S3 would give an object (quoted): MD5 hex, or `"<md5 of part md5s>-<parts>"`
    for objects of `multipart_threshold` bytes or more uploaded in `part_size` parts."""
    if isinstance(data, Path):
        size = data.stat().st_size
        with data.open("rb") as fh:
            return _etag_stream(fh.read, size, multipart_threshold, part_size)
    view = memoryview(data)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = bytes(view[pos : pos + n])
        pos += len(out)
        return out

    return _etag_stream(read, len(data), multipart_threshold, part_size)


def _etag_stream(read: Callable[[int], bytes], size: int, threshold: int, part_size: int) -> str:
    if size < threshold:
        h = hashlib.md5()
        while chunk := read(MIB):
            h.update(chunk)
        return f'"{h.hexdigest()}"'
    digests = []
    remaining = size
    while remaining > 0:
        h = hashlib.md5()
        want = min(part_size, remaining)
        got = 0
        while got < want:
            chunk = read(min(MIB, want - got))
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        digests.append(h.digest())
        remaining -= want
        if got < want:
            break
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class _Object:
    key: str
    size: int
    mtime: float  # whole seconds (S3 has second precision in headers)
    etag: str
    path: Path | None = None  # None: in memory
    data: bytes | None = None

    @property
    def http_date(self) -> str:
        return format_datetime(datetime.fromtimestamp(self.mtime, timezone.utc), usegmt=True)

    @property
    def iso(self) -> str:
        return datetime.fromtimestamp(self.mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(slots=True)
class S3Request:
    """One request as the S3 stand-in saw it."""

    method: str
    path: str
    query: str
    key: str | None
    range: str | None
    status: int | None = None
    fault: str | None = None


class _Store:
    """The bucket's objects: files under root (re-scanned on each listing) + hostile keys."""

    def __init__(self, root: Path, bucket: str, faults: S3Faults, threshold: int, part_size: int) -> None:
        self.root = Path(root)
        self.bucket = bucket
        self.faults = faults
        self.threshold = threshold
        self.part_size = part_size
        self.requests: list[S3Request] = []
        self._etags: dict[tuple[str, int, int], str] = {}
        self._flaky_seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ids = 0

    # ---------------------------------------------------------------- bookkeeping

    def reset(self) -> None:
        """Forget the request log and the flaky-404 counters."""
        with self._lock:
            self.requests.clear()
            self._flaky_seen.clear()

    def log(self, rec: S3Request) -> S3Request:
        with self._lock:
            self.requests.append(rec)
        return rec

    def request_id(self) -> str:
        with self._lock:
            self._ids += 1
            n = self._ids
        return hashlib.md5(f"req{n}".encode()).hexdigest()[:16].upper()

    def flaky_hit(self, key: str) -> bool:
        """True when this GET/HEAD of `key` must still answer 404."""
        n = self.faults.flaky.get(key, 0)
        if n <= 0:
            return False
        with self._lock:
            seen = self._flaky_seen.get(key, 0)
            self._flaky_seen[key] = seen + 1
        return seen < n

    # ---------------------------------------------------------------- objects

    def _etag_of(self, path: Path, st: os.stat_result) -> str:
        ck = (str(path), st.st_size, st.st_mtime_ns)
        got = self._etags.get(ck)
        if got is None:
            got = s3_etag(path, multipart_threshold=self.threshold, part_size=self.part_size)
            with self._lock:
                self._etags[ck] = got
        return got

    def _file_object(self, key: str, path: Path) -> _Object | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return _Object(key, st.st_size, float(int(st.st_mtime)), self._etag_of(path, st), path=path)

    def hostile_keys(self) -> tuple[str, ...]:
        if self.faults.hostile_keys is not None:
            return self.faults.hostile_keys
        keys = list(hostile_keys_for())
        v1 = self.root / "v1"
        try:
            for model in sorted(p for p in v1.iterdir() if p.is_dir() and not p.is_symlink()):
                for src in sorted(p for p in model.iterdir() if p.is_dir() and not p.is_symlink()):
                    if (src / "source.jsonl").is_file():
                        keys.extend(hostile_keys_for(f"v1/{model.name}/{src.name}/"))
                        return tuple(dict.fromkeys(keys))
        except OSError:
            pass
        return tuple(keys)

    def _hostile_object(self, key: str) -> _Object:
        return _Object(key, len(_HOSTILE_BODY), _HOSTILE_MTIME, f'"{hashlib.md5(_HOSTILE_BODY).hexdigest()}"',
                       data=_HOSTILE_BODY)

    def get(self, key: str) -> _Object | None:
        if self.faults.hostile_listing and key in self.hostile_keys():
            return self._hostile_object(key)
        path = safe_key_path(self.root, key)
        return None if path is None else self._file_object(key, path)

    def scan(self) -> list[tuple[str, Path | None]]:
        """Every listable key, binary (UTF-8) order, with its file (None: a hostile key in memory).

        Regular files are found without following directory symlinks; a symlinked file is
        listed only when it resolves to a regular file under root (`safe_key_path`).
        """
        base = self.root.resolve()
        found: dict[str, Path | None] = {}
        stack: list[tuple[str, str]] = [(str(base), "")]
        while stack:
            folder, rel = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                key = rel + entry.name
                if "\\" in entry.name or "\x00" in entry.name:
                    continue
                try:
                    if entry.is_symlink():
                        target = safe_key_path(base, key)
                        if target is not None:
                            found[key] = Path(entry.path)
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, key + "/"))
                    elif entry.is_file(follow_symlinks=False):
                        found[key] = Path(entry.path)
                except OSError:
                    continue
        if self.faults.hostile_listing:
            for key in self.hostile_keys():
                found[key] = None
        return sorted(found.items(), key=lambda kv: kv[0].encode("utf-8", "surrogateescape"))

    def keys(self) -> list[str]:
        """Every listable key under root, binary (UTF-8) order, plus hostile ones if enabled."""
        return [k for k, _ in self.scan()]

    def listed(self, key: str, path: Path | None) -> _Object | None:
        """The object a listing shows (its real size/ETag, even if a fault will 404 it)."""
        if path is None:
            return self._hostile_object(key)
        return self._file_object(key, path)


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

