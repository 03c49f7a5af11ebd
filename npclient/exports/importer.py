"""Deprecated location: the importer's SQL lives in `npclient.store.importer`, the finding of
source folders on disk in `npclient.exports.files`. Kept so existing imports still work."""

from ..store.importer import ImportReport, import_source_dir, import_tree, record_failed_download
from .files import PART_KINDS, find_source_dirs, source_id_of

__all__ = ["ImportReport", "import_source_dir", "import_tree", "find_source_dirs", "source_id_of",
           "record_failed_download", "PART_KINDS"]
