"""Deprecated path: this moved to `npclient.http.transport`. Importing it warns; it goes in a later release."""

import warnings

from .http.transport import SHARD_CONNECTIONS, ShardedTransport  # noqa: F401

warnings.warn("npclient.transport is deprecated: import from npclient.http.transport", DeprecationWarning, stacklevel=2)
