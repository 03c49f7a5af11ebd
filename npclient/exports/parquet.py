"""Deprecated location: the Parquet export reads the store, `npclient.store.parquet`."""

from ..store.parquet import TABLES, export_parquet  # noqa: F401
