"""Deprecated path: this moved to `npclient.store.importer`. Importing it warns; it goes in a later release."""

import warnings

from ..store.importer import ImportReport, import_source_dir, import_tree, record_failed_download  # noqa: F401
from .files import PART_KINDS, find_source_dirs, source_id_of  # noqa: F401

warnings.warn("npclient.exports.importer is deprecated: import from npclient.store.importer", DeprecationWarning, stacklevel=2)
