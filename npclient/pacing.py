"""Deprecated path: this moved to `npclient.http.pacing`. Importing it warns; it goes in a later release."""

import warnings

from .http.pacing import DEFAULT_BUDGET, DEFAULT_COOLDOWN_S, SERVER_LIMIT_PER_HOUR, Budget, Pacer  # noqa: F401

warnings.warn("npclient.pacing is deprecated: import from npclient.http.pacing", DeprecationWarning, stacklevel=2)
