"""Geometry of decoder space: exact cosine neighbours (and, later, subspace tools).

    from npclient.geometry import all_pairs_topk, topk_cosine, query_topk, match_sources
    top = all_pairs_topk(W_dec, 25)            # self first, like Neuronpedia's topkCosSim*
    values, indices = query_topk(steering_vector, W_dec, 10)

Importing this package does not import torch: each name loads its module (and torch) on first
use, so the torch-free CPU all-pairs (`cpu_allpairs`, used by `jobs.all_pairs`) never pays for it.
Device: CUDA, then MPS, then CPU unless `device=` says otherwise; float32 by default
(TF32 off on CUDA), `dtype="bfloat16"`/`"float16"` on request (meant for GPUs).

The search, by job: `topk` (queries vs keys; conventions), `symmetric` (all pairs), `merge`
(`TopK`, `merge_topk`), `dense` and `heap_kernel` (the selections), `prefilter` (bfloat16
candidates for the float32 all-pairs on AMX CPUs, rescored exactly), `cpu_allpairs` (that
all-pairs without torch: `mkl_bf16`'s GEMM, `unit_rows`, `exclusive`'s worker threads), `blocks`
(shared helpers), `threads` (torch's thread count). `knn` is their old single module, kept as a facade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as type checkers see them; loaded on first use at run time
    from .blocks import default_block_rows
    from .device import as_float32, normalize_rows, pick_device, resolve_dtype
    from .merge import TopK, merge_topk
    from .symmetric import all_pairs_topk
    from .topk import feature_topk, match_sources, query_topk, topk_cosine

_LAZY = {
    "default_block_rows": "blocks",
    **{name: "device" for name in ("as_float32", "normalize_rows", "pick_device", "resolve_dtype")},
    **{name: "merge" for name in ("TopK", "merge_topk")},
    "all_pairs_topk": "symmetric",
    **{name: "topk" for name in ("feature_topk", "match_sources", "query_topk", "topk_cosine")},
}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
