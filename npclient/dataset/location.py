"""Where a dataset lives (a local/NFS folder or `s3://bucket/prefix`) and how a file appears whole.

Everything goes through one pyarrow filesystem, so the same code writes a folder or a bucket.
A file appears whole: locally it is written under a temp name that carries the job id and the
lease (`.<name>.<job>.<lease-until>.tmp`), then renamed into place; on S3 it is one PUT, which
no reader sees half done. The temp name is how a sweep tells a crashed job's leftovers (lease
expired) from a live job's file in progress (lease still running), which it never removes.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs

from .. import faults
from ..errors import InvalidPathError

__all__ = ["Location", "open_location", "TEMP_NAME", "temp_name"]

#: `.part.parquet.<job>.<lease-until>.tmp`: what a local write leaves behind if it dies before the rename.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<job>[A-Za-z0-9_-]+)\.(?P<until>\d+)\.tmp$")


def temp_name(name: str, job_id: str, lease_until: int) -> str:
    return f".{name}.{job_id}.{lease_until}.tmp"


@dataclass(frozen=True)
class Location:
    """A dataset root: `url` as the user gave it, the pyarrow `fs` and the `root` path in it."""

    url: str
    fs: pafs.FileSystem
    root: str
    is_s3: bool

    def path(self, key: str) -> str:
        """The filesystem path of `key` (a path relative to the dataset root, `/`-separated)."""
        return f"{self.root}/{key}" if key else self.root

    def key(self, path: str) -> str:
        """The key of a filesystem path under the root."""
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

    def files(self, prefix: str = "") -> list[pafs.FileInfo]:
        """Every file under `prefix` (recursively), sorted by path; none if the folder is absent."""
        selector = pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True)
        return sorted((i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File),
                      key=lambda i: i.path)

    def read(self, key: str) -> bytes:
        with self.fs.open_input_stream(self.path(key)) as fh:
            return bytes(fh.read())

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type == pafs.FileType.File

    def write_whole(self, key: str, data: bytes, *, job_id: str, lease_until: int) -> None:
        """Put `data` at `key` so that no reader ever sees part of it (see the module's text)."""
        final = self.path(key)
        if self.is_s3:
            faults.point("dataset.before_rename")
            with self.fs.open_output_stream(final) as out:  # one object, visible only when complete
                out.write(data)
            return
        folder, _, name = final.rpartition("/")
        os.makedirs(folder, exist_ok=True)
        temp = f"{folder}/{temp_name(name, job_id, lease_until)}"
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("dataset.before_rename")
        os.replace(temp, final)

    def remove(self, key: str) -> None:
        self.fs.delete_file(self.path(key))


def open_location(url: "str | Path", filesystem: Optional[pafs.FileSystem] = None) -> Location:
    """The dataset at `url`: a local folder, or `s3://bucket/prefix` through pyarrow's S3
    filesystem (credentials and endpoint from the usual AWS variables, e.g. `AWS_ENDPOINT_URL`),
    or any path in a `filesystem` you pass."""
    text = str(url)
    if filesystem is not None:
        root = text.split("://", 1)[-1].rstrip("/")
        return Location(text, filesystem, root, is_s3=isinstance(filesystem, pafs.S3FileSystem))
    if text.startswith("s3://"):
        bucket_prefix = text[len("s3://"):].strip("/")
        if not bucket_prefix:
            raise InvalidPathError(f"{text} names no bucket; give s3://BUCKET/PREFIX", option="dataset")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, object] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        return Location(text, pafs.S3FileSystem(**kwargs), bucket_prefix, is_s3=True)
    if "://" in text:
        raise InvalidPathError(f"{text}: a dataset is a local folder or s3://BUCKET/PREFIX", option="dataset")
    path = Path(text).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InvalidPathError(f"{path} is a file, not a dataset folder", option="dataset")
    return Location(str(path), pafs.LocalFileSystem(), str(path).rstrip("/") or "/", is_s3=False)


def lease_until(lease_s: float) -> int:
    """The moment (Unix seconds) a lease taken now for `lease_s` ends."""
    return int(time.time() + lease_s)
