"""Download listed export objects into a local cache that mirrors the bucket's layout.

For each object, `cache_root/<key>` ends up holding exactly the listed bytes, or nothing:

* bytes go to `<path>.part` first; `<path>.part.etag` records which version (ETag) they
  belong to. A rerun after a crash or kill -9 resumes the `.part` with
  `Range: bytes=<have>-` and `If-Range: "<etag>"`; a 200 instead of a 206 (or a 206 whose
  ETag or Content-Range does not fit) means the object changed, and it restarts from zero.
* the finished `.part` must have the listed size and, when the ETag is a plain MD5 (no
  `-`), that MD5. A mismatch deletes the `.part` and reports `CorruptDownload`.
* then `os.replace` moves it to `<path>` and `<path>.etag` records the ETag. A file whose
  size and recorded ETag match the listing is never fetched again, not even with a HEAD.

Transient faults (connection errors, timeouts, 5xx, a body that ends early) are retried,
resuming from what is already on disk; a 404 or a corrupt file is reported and the other files go on. Every key
is checked (`parse_key`, `local_path`) before anything is requested or written.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

from ..errors import APIStatusError, CorruptDownload, ExportError, InvalidOptionError, NPError, NPTransportError
from ..paths import exports_dir
from .layout import ensure_inside, local_path, parse_key
from ..http.s3 import ExportBucket, S3Object, iter_raw, normalize_etag

__all__ = ["DownloadReport", "ProgressFn", "download", "is_complete"]

log = logging.getLogger("npclient.exports")

#: `progress(key, bytes_on_disk, total_bytes)`, called as bytes arrive.
ProgressFn = Callable[[str, int, int], None]

_REASON_CLIP = 300


@dataclass
class DownloadReport:
    """What one `download` call did. `bytes` counts bytes received over the network."""

    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (
            f"{len(self.downloaded)} downloaded ({self.bytes:,} bytes, {len(self.resumed)} resumed), "
            f"{len(self.skipped)} already complete, {len(self.failed)} failed"
        )


def _size(path: Path) -> int:
    """Size of a regular file; 0 when missing or a symlink (never resumed through a link)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _reason(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _REASON_CLIP else text[: _REASON_CLIP - 1] + "…"


@dataclass(frozen=True)
class _Paths:
    final: Path
    part: Path
    part_etag: Path
    etag: Path

    @classmethod
    def of(cls, root: Path, key: str) -> "_Paths":
        final = local_path(root, key)
        paths = cls(
            final,
            final.with_name(final.name + ".part"),
            final.with_name(final.name + ".part.etag"),
            final.with_name(final.name + ".etag"),
        )
        for p in (paths.part, paths.part_etag, paths.etag):
            ensure_inside(root, p)  # a planted symlink next to the file must not lead out either
        return paths


def _read_tag(path: Path) -> Optional[str]:
    try:
        if path.is_symlink():
            return None
        return normalize_etag(path.read_text(encoding="ascii", errors="replace").strip()) or None
    except OSError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "x", encoding="ascii") as f:  # "x": never through a planted symlink
        f.write(text)
    os.replace(tmp, path)


def _clear_part(paths: "_Paths") -> None:
    for p in (paths.part, paths.part_etag):
        p.unlink(missing_ok=True)


def file_md5(path: Path) -> str:
    """The hex MD5 of a file (an S3 ETag of a single-part upload), read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(path: Path, obj: S3Object) -> bool:
    """True when `path` holds `obj` as listed: same size, and its `.etag` sidecar matches.

    Without a sidecar (a crash between the rename and writing it), a plain-MD5 object is
    checked by hashing the local file, and the sidecar is written when it matches.
    Never touches the network.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not os.path.isfile(path) or os.path.islink(path) or st.st_size != obj.size:
        return False
    sidecar = path.with_name(path.name + ".etag")
    tag = _read_tag(sidecar)
    if tag is not None:
        return tag == obj.etag
    if obj.md5 is not None and file_md5(path) == obj.md5:
        try:
            _write_atomic(sidecar, obj.etag + "\n")
        except OSError:
            pass
        return True
    return False


class _Restart(Exception):
    """The partial bytes do not belong to the listed version: start again from zero."""


class _Downloader:
    def __init__(
        self, bucket: ExportBucket, root: Path, report: DownloadReport, progress: Optional[ProgressFn]
    ) -> None:
        self.bucket = bucket
        self.root = root
        self.report = report
        self.progress = progress

    async def fetch(self, obj: S3Object, paths: _Paths) -> None:
        report = self.report
        try:
            if await asyncio.to_thread(is_complete, paths.final, obj):
                report.skipped.append(obj.key)
                return
            paths.final.parent.mkdir(parents=True, exist_ok=True)
            ensure_inside(self.root, paths.final.parent)
            resumed = False
            async for attempt in self.bucket.retry.retrying(self.bucket.sleep):
                with attempt:
                    resumed = await self._transfer(obj, paths) or resumed
            await self._verify(obj, paths)
            self._finish(obj, paths)
        except (NPError, OSError) as exc:
            if isinstance(exc, CorruptDownload) or _size(paths.part) == 0:
                _clear_part(paths)  # nothing worth resuming
            report.failed[obj.key] = _reason(exc)
            if isinstance(exc, OSError):
                report.failed[obj.key] = f"{obj.key}: {report.failed[obj.key]}"
            log.info("export download failed: %s", report.failed[obj.key])
            return
        report.downloaded.append(obj.key)
        if resumed:
            report.resumed.append(obj.key)

    @staticmethod
    def _open_part(obj: S3Object, paths: _Paths, resume: bool) -> BinaryIO:
        if resume:
            return open(paths.part, "ab")
        _clear_part(paths)
        _write_atomic(paths.part_etag, obj.etag + "\n")  # before any byte: which version they are
        return open(paths.part, "xb")

    async def _transfer(self, obj: S3Object, paths: _Paths) -> bool:
        """Bring `.part` up to the listed size; True when it continued earlier bytes."""
        for _ in range(3):  # at most: a resume that turns out stale, then a fresh start
            have = _size(paths.part)
            part_tag = _read_tag(paths.part_etag) or obj.etag
            if have and (have > obj.size or part_tag != obj.etag):
                have = 0  # too long, or bytes of a version the listing no longer has
            if have == 0:
                _clear_part(paths)
                if obj.size == 0:
                    self._open_part(obj, paths, resume=False).close()
                    return False
            elif have == obj.size:
                return True  # complete but not renamed yet (killed between the last write and the rename)
            try:
                return await self._get(obj, paths, have)
            except _Restart as why:
                log.info("restarting %s from zero: %s", obj.key, why)
                _clear_part(paths)
            except APIStatusError as exc:
                if exc.status_code != 416 or have == 0:
                    raise
                _clear_part(paths)  # a range past the end: the object changed
        raise ExportError(f"{obj.key}: could not get a consistent copy after restarting")

    async def _get(self, obj: S3Object, paths: _Paths, have: int) -> bool:
        key = obj.key
        async with self.bucket.stream(key, start=have, if_range=obj.etag if have else None) as response:
            sent_tag = normalize_etag(response.headers.get("etag"))
            if sent_tag and sent_tag != obj.etag:
                if response.status_code == 206:
                    raise _Restart(f"206 with ETag {sent_tag}, expected {obj.etag}")
                raise CorruptDownload(
                    f"{key}: the server sends ETag {sent_tag} but the listing says {obj.etag} "
                    "(changed since it was listed; list again)"
                )
            if response.status_code == 206:
                start, total = _content_range(response.headers.get("content-range"))
                if start != have or (total is not None and total != obj.size):
                    raise _Restart(f"206 with Content-Range {response.headers.get('content-range')!r}")
                mode, resumed = "ab", True
            elif response.status_code == 200:
                length = response.headers.get("content-length")
                if length is not None and length.strip().isdigit() and int(length) != obj.size:
                    raise CorruptDownload(
                        f"{key}: the server sends {int(length)} bytes but the listing says {obj.size} "
                        "(changed since it was listed; list again)"
                    )
                if have:
                    log.info("%s changed or ignored the range: downloading it again", key)
                mode, resumed, have = "wb", False, 0
            else:
                raise ExportError(f"{key}: unexpected HTTP {response.status_code}")
            done = have
            with self._open_part(obj, paths, resume=mode == "ab") as f:
                try:
                    async for chunk in iter_raw(response, self.bucket.object_url(key)):
                        f.write(chunk)
                        done += len(chunk)
                        self.report.bytes += len(chunk)
                        if done > obj.size:
                            break
                        if self.progress is not None:
                            self.progress(key, done, obj.size)
                finally:
                    f.flush()
                    os.fsync(f.fileno())
            if done < obj.size:  # the body ended early without an error: resumable, so retried
                raise NPTransportError(f"{key}: the body ended at byte {done} of {obj.size}")
            return resumed

    async def _verify(self, obj: S3Object, paths: _Paths) -> None:
        size = paths.part.stat().st_size
        problem = None
        if size != obj.size:
            problem = f"{obj.key}: got {size} bytes, the listing says {obj.size}"
        elif obj.md5 is not None:
            got = await asyncio.to_thread(file_md5, paths.part)
            if got != obj.md5:
                problem = f"{obj.key}: MD5 {got} does not match the ETag {obj.md5}"
        if problem is not None:
            _clear_part(paths)
            raise CorruptDownload(problem)

    def _finish(self, obj: S3Object, paths: _Paths) -> None:
        paths.etag.unlink(missing_ok=True)  # never leave an old sidecar next to new bytes
        os.replace(paths.part, paths.final)
        _write_atomic(paths.etag, obj.etag + "\n")
        paths.part_etag.unlink(missing_ok=True)


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """`bytes 5-10/11` -> (5, 11); `bytes 5-10/*` -> (5, None); unparsable -> (None, None)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[len("bytes ") :].partition("/")
    start = span.split("-", 1)[0].strip()
    return (
        int(start) if start.isdigit() else None,
        int(total) if total.strip().isdigit() else None,
    )


async def download(
    bucket: ExportBucket,
    objects: Iterable[S3Object],
    cache_root: Union[str, os.PathLike[str], None] = None,
    *,
    concurrency: int = 4,
    progress: Optional[ProgressFn] = None,
) -> DownloadReport:
    """Download `objects` into `cache_root/<key>` (default `exports_dir()`), `concurrency` at a time.

    Never raises for one file's failure: unsafe keys, 404s, corrupt downloads and exhausted
    retries land in `report.failed` (key -> one-line reason) and the other files go on.
    """
    if concurrency < 1:
        raise InvalidOptionError("concurrency must be >= 1", option="concurrency")
    root = Path(cache_root if cache_root is not None else exports_dir()).expanduser()
    report = DownloadReport()
    jobs: list[tuple[S3Object, _Paths]] = []
    seen: set[str] = set()
    for obj in objects:
        if obj.key in seen:
            continue
        seen.add(obj.key)
        try:
            parse_key(obj.key)
            if obj.size < 0:
                raise ExportError(f"{obj.key}: negative size {obj.size} in the listing")
            jobs.append((obj, _Paths.of(root, obj.key)))
        except NPError as exc:
            report.failed[obj.key] = _reason(exc)
            log.warning("refusing export object: %s", report.failed[obj.key])
    if not jobs:
        return report
    root.mkdir(parents=True, exist_ok=True)
    downloader = _Downloader(bucket, root.resolve(), report, progress)
    queue: asyncio.Queue[tuple[S3Object, _Paths]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while True:
            try:
                obj, paths = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await downloader.fetch(obj, paths)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(jobs)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return report
