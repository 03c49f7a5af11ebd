"""Deprecated path: this moved to `npclient.http.s3`. Importing it warns; it goes in a later release."""

import warnings

from ..http.s3 import ExportBucket, S3Object  # noqa: F401

warnings.warn("npclient.exports.s3 is deprecated: import from npclient.http.s3", DeprecationWarning, stacklevel=2)
