"""Neuronpedia's bulk exports (public S3 dumps): their layout, download and files on disk.

    async with ExportBucket() as bucket:                       # or ExportBucket("http://127.0.0.1:9000/bkt")
        objects = await bucket.list_source(SourceId.parse("gpt2-small/0-res-jb"))
        report = await download(bucket, objects, exports_dir())  # resumable, verified, idempotent

`layout.py` says where each file sits (in the bucket and in the cache), `download.py` fetches
them, `files.py` finds and reads them on disk. The bucket's client is `npclient.http.s3`; what
a sync takes from an export, and whether a range's files cost less than the API
(`plan_export`, `BYTES_PER_REQUEST`), is `npclient.sync.exports` (loaded on first use, since it
needs the store). Nothing here signs a request: the bucket is read anonymously.
"""

from typing import Any

from .layout import (
    DEFAULT_EXPORTS_URL,
    ExportFile,
    exports_url,
    is_source_folder,
    local_path,
    parse_key,
    sort_batches,
    source_prefix,
)
from .download import DownloadReport, ProgressFn, download, is_complete  # noqa: I001 (after layout)
from ..http.s3 import ExportBucket, S3Object

#: Names that live in `npclient.sync.exports`, loaded on first use (it needs the store, and so DuckDB).
_LAZY = {"BYTES_PER_REQUEST": "npclient.sync.exports", "ExportPlan": "npclient.sync.exports",
         "plan_export": "npclient.sync.exports"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(
    [
        "BYTES_PER_REQUEST",
        "DEFAULT_EXPORTS_URL",
        "DownloadReport",
        "ExportBucket",
        "ExportFile",
        "ExportPlan",
        "ProgressFn",
        "S3Object",
        "download",
        "exports_url",
        "is_complete",
        "is_source_folder",
        "local_path",
        "parse_key",
        "plan_export",
        "sort_batches",
        "source_prefix",
    ]
)
