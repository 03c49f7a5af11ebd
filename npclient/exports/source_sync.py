"""Deprecated path: this moved to `npclient.sync.exports`. Importing it warns; it goes in a later release."""

import warnings

from ..sync.exports import ExportOutcome, activation_gaps, sync_source_export  # noqa: F401

warnings.warn("npclient.exports.source_sync is deprecated: import from npclient.sync.exports", DeprecationWarning, stacklevel=2)
