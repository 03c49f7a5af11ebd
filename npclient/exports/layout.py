"""The layout of Neuronpedia's bulk exports, and where their files go on disk.

Keys in the bucket (see docs/neuronpedia.md, "Bulk exports"):

    v1/{model}/{source}/model.jsonl | release.jsonl | source.jsonl | sourceset.jsonl
    v1/{model}/{source}/features/batch-N.jsonl.gz
    v1/{model}/{source}/activations/batch-N.jsonl.gz
    v1/{model}/{source}/explanations/batch-N.jsonl.gz   (or explanations-<model-name>/)
    v1/{model}/headvis/..., v1/{model}/jlens/...       (not sources)

A key ends up as a path under the export cache, so it is checked before anything is
written: every part must be made of `[A-Za-z0-9._-]`, start with a letter or digit and
hold no `..`; absolute keys are refused; and the resolved path must stay inside the
cache root even through symlinks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar, Union

from ..errors import InvalidIdError, InvalidOptionError, UnsafeKey
from ..ids import SourceId

__all__ = [
    "DEFAULT_EXPORTS_URL",
    "activation_spans",
    "EXPORTS_URL_ENV",
    "BATCH_KINDS",
    "METADATA_FILES",
    "NON_SOURCE_FOLDERS",
    "ExportFile",
    "exports_url",
    "is_source_folder",
    "parse_key",
    "source_prefix",
    "local_path",
    "sort_batches",
]

DEFAULT_EXPORTS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com"
EXPORTS_URL_ENV = "NP_MIRROR_EXPORTS_URL"
VERSION_PREFIX = "v1/"
BATCH_KINDS = ("features", "activations", "explanations")
METADATA_FILES = ("model.jsonl", "release.jsonl", "source.jsonl", "sourceset.jsonl")
#: Folders next to the sources of a model that are not sources themselves.
NON_SOURCE_FOLDERS = frozenset({"headvis", "jlens"})

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BATCH = re.compile(r"^batch-([0-9]{1,9})\.jsonl\.gz$")
_SOURCE_FOLDER = re.compile(r"^[0-9]+-")
_MAX_KEY = 1024
_MAX_PART = 255


def exports_url(url: Optional[str] = None) -> str:
    """The bucket root: the argument, `$NP_MIRROR_EXPORTS_URL`, or Neuronpedia's public bucket.

    Keys (`v1/...`) are appended to it, so a path-style URL such as
    `http://127.0.0.1:9000/my-bucket` works as well as a virtual-hosted one.
    """
    value = (url or os.environ.get(EXPORTS_URL_ENV) or DEFAULT_EXPORTS_URL).strip().rstrip("/")
    if value.endswith("/v1"):  # a common slip: the root is wanted, `v1/` belongs to the keys
        value = value[: -len("/v1")]
    if not value.startswith(("http://", "https://")):
        raise InvalidOptionError(f"exports URL must start with http:// or https://, got {value!r}", option="exports_url")
    return value


@dataclass(frozen=True)
class ExportFile:
    """One file of a source's export, parsed from its key.

    `kind` is `features`, `activations`, `explanations` (whatever the folder, which is kept
    in `folder`, e.g. `explanations-gpt-4o-mini`) or `metadata` (`model.jsonl` and friends,
    for which `folder` is empty and `batch` is None).
    """

    key: str
    model_id: str
    source: str
    kind: str
    folder: str
    name: str
    batch: Optional[int] = None

    @property
    def source_id(self) -> SourceId:
        return SourceId(self.model_id, self.source)

    @property
    def is_batch(self) -> bool:
        return self.batch is not None

    @property
    def explanation_model(self) -> Optional[str]:
        """`gpt-4o-mini` for a file under `explanations-gpt-4o-mini/`, else None."""
        if self.kind == "explanations" and self.folder.startswith("explanations-"):
            return self.folder[len("explanations-") :]
        return None

    def sort_key(self) -> tuple[str, str, str, int, str]:
        return (self.model_id, self.source, self.folder, -1 if self.batch is None else self.batch, self.name)


def is_source_folder(name: str) -> bool:
    """Sources start with their layer number (`0-res-jb`); `headvis`, `jlens` and the like do not."""
    return name not in NON_SOURCE_FOLDERS and bool(_SOURCE_FOLDER.match(name)) and bool(_PART.match(name))


def _refuse_traversal(key: object) -> str:
    """The checks that hold for every key, whatever folder it is in."""
    if not isinstance(key, str) or key == "":
        raise UnsafeKey(f"object key must be a non-empty string, got {key!r}")
    if len(key) > _MAX_KEY:
        raise UnsafeKey(f"object key longer than {_MAX_KEY} characters: {key[:80]!r}…")
    if key.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", key):
        raise UnsafeKey(f"absolute object key refused: {key!r}")
    if "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise UnsafeKey(f"object key with a backslash or control character refused: {key!r}")
    parts = key.split("/")
    if any(p in (".", "..") for p in parts) or any(".." in p for p in parts):
        raise UnsafeKey(f"object key with a '..' part refused: {key!r}")
    return key


def _check_key(key: object) -> list[str]:
    """Every check: no traversal, no empty part, safe characters only. Returns the parts."""
    text = _refuse_traversal(key)
    parts = text.split("/")
    for part in parts:
        if part == "":
            raise UnsafeKey(f"object key with an empty part refused: {text!r}")
        if len(part) > _MAX_PART or not _PART.match(part):
            raise UnsafeKey(
                f"object key part {part!r} has characters outside [A-Za-z0-9._-] or starts with one: {text!r}"
            )
    return parts


def parse_key(key: str) -> Optional[ExportFile]:
    """The export file a key names, or None for keys that are not part of a source.

    Raises `UnsafeKey` for keys with `..`, absolute or empty parts or unsafe characters.
    Keys outside `v1/{model}/{source}/`, folder markers (`.../`), non-source folders
    (`headvis`, `jlens`) and files a source export does not have return None.
    """
    text = _refuse_traversal(key)
    if text.endswith("/"):
        return None  # a "folder" placeholder object
    head = text.split("/")
    if len(head) < 4 or head[0] != "v1" or not is_source_folder(head[2]):
        return None
    parts = _check_key(text)
    model_id, source = parts[1], parts[2]
    try:
        SourceId(model_id, source)
    except InvalidIdError as exc:
        raise UnsafeKey(f"object key {text!r}: {exc}") from None
    if len(parts) == 4:
        if parts[3] in METADATA_FILES:
            return ExportFile(text, model_id, source, "metadata", "", parts[3], None)
        return None
    if len(parts) == 5:
        folder, name = parts[3], parts[4]
        if folder in BATCH_KINDS:
            kind = folder
        elif folder.startswith("explanations-") and len(folder) > len("explanations-"):
            kind = "explanations"
        else:
            return None
        match = _BATCH.match(name)
        if match is None:
            return None
        return ExportFile(text, model_id, source, kind, folder, name, int(match.group(1)))
    return None


def source_prefix(source: Union[SourceId, str]) -> str:
    """`v1/{model}/{source}/`, the prefix that lists one source's export."""
    sid = source if isinstance(source, SourceId) else SourceId.parse(source)
    return f"{VERSION_PREFIX}{sid.model_id}/{sid.source}/"


def _inside(root: Path, path: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return path != root


def local_path(cache_root: Union[str, os.PathLike[str]], key: str) -> Path:
    """Where `key` lives under `cache_root` (same layout as the bucket).

    Raises `UnsafeKey` when the key is unsafe or when the path, once symlinks along it are
    resolved, would land outside the (resolved) cache root.
    """
    parts = _check_key(key)
    root = Path(cache_root).expanduser().resolve()
    path = root.joinpath(*parts)
    if not _inside(root, path) or not _inside(root, path.resolve()):
        raise UnsafeKey(f"object key {key!r} would be written outside the export cache {root}")
    return path


def ensure_inside(cache_root: Union[str, os.PathLike[str]], path: Path) -> Path:
    """Raise `UnsafeKey` if `path` (after resolving symlinks) is not inside `cache_root`."""
    root = Path(cache_root).expanduser().resolve()
    if not _inside(root, Path(path).resolve()):
        raise UnsafeKey(f"{path} resolves outside the export cache {root}")
    return Path(path)


T = TypeVar("T")


def _sort_key_of(item: object) -> tuple[int, tuple[object, ...]]:
    if isinstance(item, ExportFile):
        return (0, item.sort_key())
    key = item if isinstance(item, str) else getattr(item, "key", None)
    if not isinstance(key, str):
        raise TypeError(f"sort_batches takes ExportFile, S3Object or str keys, got {type(item).__name__}")
    try:
        parsed = parse_key(key)
    except UnsafeKey:
        parsed = None
    if parsed is None:
        return (1, (key,))
    return (0, parsed.sort_key())


def sort_batches(files: Iterable[T]) -> list[T]:
    """Sort by model, source, folder, then batch number as a number (batch-2 before batch-10).

    Takes `ExportFile`s, objects with a `.key` (`S3Object`) or plain keys; metadata files come
    before the batches of their source, keys that are not export files come last.
    """
    return sorted(files, key=_sort_key_of)


def activation_spans(batches: dict[int, Optional[tuple[int, int]]], exported: Optional[int]) -> list[tuple[int, int]]:
    """Index spans (inclusive) the activations batches cover, from batch number -> its records'
    span (None: a batch without records, or not read). A batch covers its records' span widened
    to meet its neighbours (a dead feature at an edge has no record, yet is covered), batch 0
    from index 0, the last one up to `exported - 1` when the exported feature count is known
    (export-data.py's batches run to it). The local sync and `dataset sync` both ask this."""
    covered = {n: s for n, s in batches.items() if s is not None}
    last = max(batches, default=-1)
    spans = []
    for n, (lo, hi) in sorted(covered.items()):
        if n == 0:
            lo = 0
        elif n - 1 in covered:
            lo = covered[n - 1][1] + 1
        if n + 1 in covered:
            hi = covered[n + 1][0] - 1
        elif n == last and exported is not None:
            hi = max(hi, exported - 1)
        spans.append((lo, hi))
    return spans
