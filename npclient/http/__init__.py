"""Everything npclient sends over HTTP: the two clients and what they share.

    client.py     NeuronpediaClient: the API, paced, retried, batched (`POST /api/features`)
    s3.py         ExportBucket: Neuronpedia's public export bucket, read anonymously
    errors.py     the one mapping of httpx failures and HTTP statuses onto the `NPError` tree
    pacing.py     Budget and Pacer: stay under a sliding-window request budget
    retry.py      RetryPolicy: which failures are retried, and the backoff between attempts
    transport.py  ShardedTransport: a connection pool in small shards (flat CPU per request)

Nothing outside this package imports httpx to talk to a server.
"""

from typing import Any

from .client import DEFAULT_BASE_URL, FeatureResult, NeuronpediaClient, resolve_base_url
from .pacing import DEFAULT_BUDGET, Budget, Pacer
from .retry import RetryPolicy
from .transport import ShardedTransport

#: The bucket's client loads on first use: it reads `npclient.exports`' layout, which
#: `import npclient` does not need.
_LAZY = {"ExportBucket": "npclient.http.s3", "S3Object": "npclient.http.s3"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_BUDGET",
    "Budget",
    "ExportBucket",
    "FeatureResult",
    "NeuronpediaClient",
    "Pacer",
    "RetryPolicy",
    "S3Object",
    "ShardedTransport",
    "resolve_base_url",
]
