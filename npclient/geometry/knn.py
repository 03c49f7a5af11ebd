"""Deprecated location of the exact cosine top-k search; import from `npclient.geometry` instead.

This module used to hold the whole search (1,231 lines). It is now split by job, and this
facade keeps every old import working:

    topk.py         topk_cosine, query_topk, match_sources, feature_topk (queries vs keys);
                    the conventions and selection modes are documented there
    symmetric.py    all_pairs_topk and the symmetric block-pair machinery
    merge.py        TopK, merge_topk, the exact (value, index) order, the running top-k
    dense.py        the torch selections: "dense" (GPUs) and "threshold" (CPU without numba)
    heap_kernel.py  the numba heap-scan kernels ("heap", CPU), their Python sources, the heaps
    blocks.py       shared helpers: default_block_rows, the selection mode, row reading, layout
    threads.py      torch's process-wide thread count: cpu_threads(), torch_single_threaded()

The public names below are re-exported without a warning (`npclient.geometry.subspace` looks
`all_pairs_topk` up here, where tests replace it). Any other name the old module defined
(`_SUB_HEAP`, `_Heaps`, `_scan_block`, ...) is still found in its new module; reaching it
through this module warns with `DeprecationWarning` and names the new place.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .blocks import default_block_rows
from .heap_kernel import _SUB_HEAP  # noqa: F401  (benchmarks/bench_geometry.py)
from .merge import TopK, merge_topk
from .symmetric import _SUB, all_pairs_topk  # noqa: F401
from .topk import feature_topk, match_sources, query_topk, topk_cosine

__all__ = [
    "TopK",
    "merge_topk",
    "topk_cosine",
    "all_pairs_topk",
    "feature_topk",
    "query_topk",
    "match_sources",
    "default_block_rows",
]

_MODULES = ("merge", "dense", "heap_kernel", "blocks", "threads", "topk", "symmetric")
_RENAMED = {"_cpu_threads": ("threads", "cpu_threads"), "_run_exclusive": ("threads", "run_exclusive")}


def __getattr__(name: str) -> Any:
    """A name of the old module that now lives in one of the split modules (looked up on each
    access, so the numba kernels that exist only after compilation are found too)."""
    if name.startswith("__"):
        raise AttributeError(name)
    if name in _RENAMED:
        mod, new = _RENAMED[name]
        modules = [(mod, new)]
    else:
        modules = [(m, name) for m in _MODULES]
    for mod, new in modules:
        m = importlib.import_module(f"{__package__}.{mod}")
        if new in vars(m):
            warnings.warn(f"npclient.geometry.knn.{name} moved to npclient.geometry.{mod}.{new}",
                          DeprecationWarning, stacklevel=2)
            return vars(m)[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
