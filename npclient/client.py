"""Deprecated path: this moved to `npclient.http.client`. Importing it warns; it goes in a later release."""

import warnings

from .http.client import (  # noqa: F401
    DEFAULT_BASE_URL,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    ENDPOINT_BUDGETS,
    MAX_BATCH_SIZE,
    FeatureResult,
    NeuronpediaClient,
    resolve_base_url,
)
from .http.pacing import DEFAULT_BUDGET, DEFAULT_COOLDOWN_S, Budget, Pacer  # noqa: F401
from .http.retry import RetryPolicy  # noqa: F401
from .http.transport import ShardedTransport  # noqa: F401

warnings.warn("npclient.client is deprecated: import from npclient.http.client", DeprecationWarning, stacklevel=2)
