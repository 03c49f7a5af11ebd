"""Deprecated path: this moved to `npclient.store.parquet`. Importing it warns; it goes in a later release."""

import warnings

from ..store.parquet import TABLES, export_parquet  # noqa: F401

warnings.warn("npclient.exports.parquet is deprecated: import from npclient.store.parquet", DeprecationWarning, stacklevel=2)
