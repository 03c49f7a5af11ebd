"""Free the export cache: delete downloaded batches the mirror has already imported.

A sync keeps every export batch it downloads under `$NP_MIRROR_HOME/exports/` (same layout as
the bucket), so a killed download resumes and a rerun need not fetch again. Once a batch's rows
are in the mirror the file is only disk space: a rerun of a complete source asks for nothing.

`plan_prune` decides from the mirror's records (`npclient.store.downloads`) and the bytes on
disk, and deletes nothing; `prune` deletes what a plan chose. A file is chosen only when all hold:

- the mirror records its key as `imported` (not `failed`: the next sync reads it again; not
  `partial`: a `--range` import that left rows out);
- the file on disk is the version that was imported: the recorded size, and the recorded ETag
  (from the `.etag` sidecar the download wrote, else the file's MD5 when the ETag is a plain
  MD5);
- it is a plain file inside the cache (no symlink, no key that escapes the root).

Never touched: a download in progress (`.part`, `.part.etag`), files no record names, the
sources' metadata files (`source.jsonl`, ...: a few hundred bytes each).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

from ..errors import InvalidPathError, NPError
from ..http.s3 import normalize_etag
from .download import file_md5
from .layout import local_path

__all__ = ["PruneItem", "PrunePlan", "plan_prune", "prune"]


class _Record(Protocol):  # npclient.store.downloads.DownloadRecord (not imported: it loads DuckDB)
    key: str
    size: Optional[int]
    etag: Optional[str]
    status: str


@dataclass(frozen=True)
class PruneItem:
    """One file to delete (with its `.etag` sidecar, if any): its key, path and size in bytes."""

    key: str
    path: Path
    size: int


@dataclass
class PrunePlan:
    """What `prune` will delete under `root`, and why each other recorded file on disk stays."""

    root: Path
    delete: list[PruneItem] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # key -> reason

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.delete)


def _mismatch(path: Path, size: int, record: _Record) -> Optional[str]:
    """Why the bytes at `path` may not be the version the mirror imported; None when they are."""
    if record.size is not None and size != record.size:
        return f"size {size:,} differs from the imported {record.size:,} bytes"
    want = normalize_etag(record.etag)
    if not want:
        return None if record.size is not None else "no size or ETag recorded to compare"
    sidecar = path.with_name(path.name + ".etag")
    if sidecar.is_file():
        have = normalize_etag(sidecar.read_text(encoding="ascii", errors="replace").strip())
        return None if have == want else f"ETag {have or '?'} differs from the imported {want}"
    if "-" not in want:  # a plain MD5: the bytes themselves tell
        return None if file_md5(path) == want else "MD5 differs from the imported ETag"
    return None if record.size is not None else "no sidecar to compare a multipart ETag with"


def plan_prune(records: Iterable[_Record], cache_root: str | os.PathLike[str]) -> PrunePlan:
    """Choose the imported files under `cache_root` that may go (see the module docstring)."""
    root = Path(cache_root).expanduser()
    if root.exists() and not root.is_dir():
        raise InvalidPathError(f"the export cache {root} is not a folder", option="cache_root")
    plan = PrunePlan(root)
    if not root.is_dir():
        return plan
    for record in records:
        try:
            path = local_path(root, record.key)
        except NPError:
            plan.kept[record.key] = "key outside the cache layout"
            continue
        if not path.is_file() or path.is_symlink():
            if path.is_symlink():
                plan.kept[record.key] = "a symlink, not a downloaded file"
            continue  # not on disk (never downloaded here, or pruned before)
        if record.status != "imported":
            plan.kept[record.key] = f"recorded {record.status}, not imported"
            continue
        size = path.stat().st_size
        reason = _mismatch(path, size, record)
        if reason is not None:
            plan.kept[record.key] = reason
            continue
        plan.delete.append(PruneItem(record.key, path, size))
    return plan


def prune(plan: PrunePlan) -> list[PruneItem]:
    """Delete the plan's files and their `.etag` sidecars, then folders left empty (never the
    root). A file whose size changed since the plan was made stays. Returns what was deleted."""
    done: list[PruneItem] = []
    folders: set[Path] = set()
    for item in plan.delete:
        try:
            if item.path.is_symlink() or item.path.stat().st_size != item.size:
                continue
            item.path.unlink()
        except FileNotFoundError:
            continue
        item.path.with_name(item.path.name + ".etag").unlink(missing_ok=True)
        done.append(item)
        folders.add(item.path.parent)
    root = plan.root.resolve()
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder.resolve() != root and root in folder.resolve().parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
    return done
