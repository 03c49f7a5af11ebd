"""Neuronpedia's bulk exports (public S3 dumps): layout, unsigned listing, resumable download.

    async with ExportBucket() as bucket:                       # or ExportBucket("http://127.0.0.1:9000/bkt")
        objects = await bucket.list_source(SourceId.parse("gpt2-small/0-res-jb"))
        report = await download(bucket, objects, exports_dir())  # resumable, verified, idempotent

Nothing here signs a request: the bucket is read anonymously.
"""

from .download import DownloadReport, ProgressFn, download, is_complete
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
from .s3 import ExportBucket, S3Object

__all__ = sorted(
    [
        "DEFAULT_EXPORTS_URL",
        "DownloadReport",
        "ExportBucket",
        "ExportFile",
        "ProgressFn",
        "S3Object",
        "download",
        "exports_url",
        "is_complete",
        "is_source_folder",
        "local_path",
        "parse_key",
        "sort_batches",
        "source_prefix",
    ]
)
