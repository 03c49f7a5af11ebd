"""Deprecated path: this moved to `npclient.store.results`. Importing it warns; it goes in a later release."""

import warnings

from ..store.results import (  # noqa: F401
    save_clusters,
    save_coordinates,
    save_head_features,
    save_matches,
    save_neighbors,
    stored_neighbors_k,
)

warnings.warn("npclient.geometry.results is deprecated: import from npclient.store.results", DeprecationWarning, stacklevel=2)
