"""np-mirror: a Neuronpedia API client and local mirror for SAE feature research.

The public surface is this short list; everything else is an implementation module.
torch, sae_lens and umap are imported only by the modules that need them, so
`import npclient` stays fast.
"""

from .blocking import BlockingClient
from .client import NeuronpediaClient
from .errors import (
    APIStatusError,
    BadRequest,
    InvalidIdError,
    MirrorBusyError,
    NotAMirrorError,
    NotFound,
    NPError,
    NPTransportError,
    PayloadError,
    RateLimited,
    ServerError,
    StoreError,
    Unauthorized,
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
from .pacing import Budget, Pacer
from .retry import RetryPolicy

__version__ = "0.1.0"

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
        "MirrorBusyError",
        "ModelInfo",
        "NPError",
        "NPTransportError",
        "NeuronpediaClient",
        "NotAMirrorError",
        "NotFound",
        "Pacer",
        "PayloadError",
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
        "VectorInfo",
        "WeightsError",
    ]
)
