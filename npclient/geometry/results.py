"""Deprecated location: geometry results are store records, `npclient.store.results`."""

from ..store.results import (  # noqa: F401
    save_clusters,
    save_coordinates,
    save_head_features,
    save_matches,
    save_neighbors,
    stored_neighbors_k,
)
