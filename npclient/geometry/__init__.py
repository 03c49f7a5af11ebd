"""Geometry of decoder space: exact cosine neighbours (and, later, subspace tools).

    from npclient.geometry import all_pairs_topk, topk_cosine, query_topk, match_sources
    top = all_pairs_topk(W_dec, 25)            # self first, like Neuronpedia's topkCosSim*
    values, indices = query_topk(steering_vector, W_dec, 10)

Importing this package imports torch; `import npclient` does not import it.
Device: CUDA, then MPS, then CPU unless `device=` says otherwise; float32 by default
(TF32 off on CUDA), `dtype="bfloat16"`/`"float16"` on request (meant for GPUs).
"""

from __future__ import annotations

from .device import as_float32, normalize_rows, pick_device, resolve_dtype
from .knn import (
    TopK,
    all_pairs_topk,
    default_block_rows,
    feature_topk,
    match_sources,
    merge_topk,
    query_topk,
    topk_cosine,
)

__all__ = [
    "TopK",
    "all_pairs_topk",
    "as_float32",
    "default_block_rows",
    "feature_topk",
    "match_sources",
    "merge_topk",
    "normalize_rows",
    "pick_device",
    "query_topk",
    "resolve_dtype",
    "topk_cosine",
]
