"""np-mirror: a Neuronpedia API client and local mirror for SAE feature research.

The public surface is this short list; everything else is an implementation module.
torch, sae_lens and umap are imported only by the modules that need them, so
`import npclient` stays fast.
"""

from .blocking import BlockingClient
from .http.client import NeuronpediaClient
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
from .models import (
    Activation,
    Explanation,
    ExplanationScore,
    Feature,
    ModelInfo,
    SearchResult,
    SourceInfo,
    SourceSetInfo,
    VectorInfo,
)
from .http.pacing import Budget, Pacer
from .http.retry import RetryPolicy

__version__ = "0.1.0"

_LAZY = {"Mirror": "npclient.mirror"}  # DuckDB and Arrow load on first use, not on import


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
