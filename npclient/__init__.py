"""np-mirror: a Neuronpedia API client and local mirror for SAE feature research.

The public surface is this short list; everything else is an implementation module.
torch, sae_lens and umap are imported only by the modules that need them, so
`import npclient` stays fast.
"""

from .errors import (
    APIStatusError,
    BadRequest,
    InvalidIdError,
    MirrorBusyError,
    MirrorNotFound,
    NotAMirrorError,
    NotFound,
    NPError,
    NPTransportError,
    PayloadError,
    QueryError,
    RateLimited,
    ServerError,
    StoreError,
    Unauthorized,
    UnknownSourceError,
    WeightsError,
)
from .ids import FeatureId, SourceId, SourceSetId

__version__ = "0.1.0"

# loaded on first use, not on import: DuckDB and Arrow (Mirror), httpx and asyncio (the clients), pydantic (the models),
# so a command that never touches the network does not pay for them
_LAZY = {
    "Mirror": "npclient.mirror",
    "BlockingClient": "npclient.blocking",
    "NeuronpediaClient": "npclient.http.client",
    "Budget": "npclient.http.pacing",
    "Pacer": "npclient.http.pacing",
    "RetryPolicy": "npclient.http.retry",
    **{name: "npclient.models" for name in ("Activation", "Explanation", "ExplanationScore", "Feature", "ModelInfo",
                                            "SearchResult", "SourceInfo", "SourceSetInfo", "VectorInfo")},
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'npclient' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = sorted(
    [
        "APIStatusError",
        "Activation",
        "BadRequest",
        "BlockingClient",
        "Budget",
        "Explanation",
        "ExplanationScore",
        "Feature",
        "FeatureId",
        "InvalidIdError",
        "Mirror",
        "MirrorBusyError",
        "MirrorNotFound",
        "ModelInfo",
        "NPError",
        "NPTransportError",
        "NeuronpediaClient",
        "NotAMirrorError",
        "NotFound",
        "Pacer",
        "PayloadError",
        "QueryError",
        "RateLimited",
        "RetryPolicy",
        "SearchResult",
        "ServerError",
        "SourceId",
        "SourceInfo",
        "SourceSetId",
        "SourceSetInfo",
        "StoreError",
        "Unauthorized",
        "UnknownSourceError",
        "VectorInfo",
        "WeightsError",
    ]
)
