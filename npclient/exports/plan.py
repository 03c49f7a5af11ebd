"""Deprecated path: this moved to `npclient.sync.exports`. Importing it warns; it goes in a later release."""

import warnings

from ..sync.exports import BYTES_PER_REQUEST, FEATURES_PER_POST, ExportPlan, guess_batch_size, plan_export, text_positions  # noqa: F401

warnings.warn("npclient.exports.plan is deprecated: import from npclient.sync.exports", DeprecationWarning, stacklevel=2)
