"""The S3 stand-in's bucket: objects from a folder (safe keys only), their S3 ETags, the
faults it injects (`S3Faults`) and its request log. The HTTP side is `s3.py`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

__all__ = ["S3Faults", "S3Request", "s3_etag", "safe_key_path", "hostile_keys_for", "MIB"]

MIB = 1024 * 1024
_HOSTILE_BODY = b'{"hostile": "a downloader must never write this key"}\n'
_HOSTILE_MTIME = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()


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
