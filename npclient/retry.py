"""Deprecated path: this moved to `npclient.http.retry`. Importing it warns; it goes in a later release."""

import warnings

from .http.retry import RETRYABLE, RetryPolicy, is_retryable  # noqa: F401

warnings.warn("npclient.retry is deprecated: import from npclient.http.retry", DeprecationWarning, stacklevel=2)
