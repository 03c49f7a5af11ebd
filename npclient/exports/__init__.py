"""Neuronpedia's bulk exports (public S3 dumps): layout, unsigned listing, resumable download.

    async with ExportBucket() as bucket:                       # or ExportBucket("http://127.0.0.1:9000/bkt")
        objects = await bucket.list_source(SourceId.parse("gpt2-small/0-res-jb"))
        report = await download(bucket, objects, exports_dir())  # resumable, verified, idempotent

`plan_export` picks, for a `--range`, the files that hold it and weighs them against the API
requests the range needs (`BYTES_PER_REQUEST`). Nothing here signs a request: the bucket is
read anonymously.
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
from .plan import BYTES_PER_REQUEST, ExportPlan, plan_export
from .s3 import ExportBucket, S3Object

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
