"""The units of a distributed all-pairs: tiles of symmetric block pairs, and one tile's partial top-k.

`all_pairs_topk` (`geometry.symmetric`) computes each block pair (i, j >= i) of U·Uᵀ once, its
rows feeding row block i and its columns row block j. Here those same pairs are grouped into
tiles (groups I x J >= I of consecutive blocks) so a worker's partial top-k covers only the
rows of two groups; each candidate (row, column) lives in exactly one tile, so the top-k of
the union of the partial lists is the top-k of the whole (`merge_partials`, through
`merge_topk`). A tile runs `symmetric`'s own per-pair steps (`heap_pair`: one GEMM, a diagonal
block only above its diagonal, then the numba heap scan; or `dense_pair`, the torch "dense"
selection on a GPU or without numba) into heaps over its own rows. Pure torch/numpy: nothing
here knows Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..geometry.heap_kernel import _Heaps, _numba_scan
from ..geometry.merge import _Running, merge_topk
from ..geometry.symmetric import dense_pair, heap_pair

__all__ = ["Partial", "block_pairs", "merge_partials", "run_tile", "side_by_side", "tiles"]

Pair = tuple[int, int]


def block_pairs(n_blocks: int) -> list[Pair]:
    """Every block pair (i, j >= i), in `symmetric`'s order."""
    return [(bi, bj) for bi in range(n_blocks) for bj in range(bi, n_blocks)]


def tiles(n_blocks: int, n_workers: int) -> list[list[Pair]]:
    """The block pairs grouped into tiles: G groups of consecutive blocks, the tile (I, J >= I)
    holding the pairs between them; G is the smallest count giving >= 4 tiles a worker (for
    balance), at most one block a group. Off-diagonal tiles (the larger ones) come first; in
    a tile, the diagonal blocks (scanned without lower bounds) come after the others."""
    G = 1
    while G < n_blocks and G * (G + 1) // 2 < 4 * max(1, n_workers):
        G += 1
    bounds = [round(g * n_blocks / G) for g in range(G + 1)]
    groups = [range(bounds[g], bounds[g + 1]) for g in range(G)]
    off, diag = [], []
    for I in range(G):
        for J in range(I, G):
            pairs = [(bi, bj) for bi in groups[I] for bj in groups[J] if bj >= bi]
            pairs.sort(key=lambda p: p[0] == p[1])  # diagonal blocks last: by then their heaps are warm
            if pairs:
                (diag if I == J else off).append(pairs)
    return off + diag


@dataclass(frozen=True)
class Partial:
    """A tile's partial top-k: for each of `rows` (ids among the valid rows), its best `k`
    candidates seen in the tile (`vals` float32, `idx` int64 valid-row ids, -inf/-1 empty)."""

    rows: np.ndarray
    vals: np.ndarray
    idx: np.ndarray


def run_tile(U: torch.Tensor, pairs: list[Pair], block: int, k: int, *, heap: bool,
             on_pair: Optional[Callable[[], None]] = None) -> Partial:
    """The partial top-k (self excluded) of the rows in `pairs`' blocks over those block pairs
    of unit-row matrix U (all rows valid). `heap`: the numba heap scan (CPU, float32), else the
    torch dense selection on U's device. `on_pair()` is called after each pair.

    U in bfloat16/float16 selects on the low-precision products, block by block exactly as
    `all_pairs_topk` does at that dtype (the same GEMM shapes, so the same products); the
    values are those products, which the driver rescores in float32 after the merge. With
    `heap` and U in bfloat16 this is the candidate pass of `geometry.prefilter` (k = its slots)."""
    low = U.dtype != torch.float32
    nv = U.shape[0]
    touched = sorted({b for p in pairs for b in p})
    spans = {b: (b * block, min(b * block + block, nv)) for b in touched}
    off, n_loc = {}, 0
    for b in touched:
        off[b] = n_loc
        n_loc += spans[b][1] - spans[b][0]
    rows = np.concatenate([np.arange(*spans[b], dtype=np.int64) for b in touched])
    if heap:
        _numba_scan()  # loads the compiled kernel (once per process)
        h = _Heaps(n_loc, k)
        sbuf = torch.empty(min(block, nv) ** 2, dtype=torch.float32)
    else:
        run = _Running(n_loc, k, U.device)
    for bi, bj in pairs:
        (r0, r1), (c0, c1) = spans[bi], spans[bj]
        if heap:
            heap_pair(U, sbuf, h, r0, r1, c0, c1, row_off=off[bi], col_off=off[bj])
        else:  # a diagonal block whole (its diagonal masked) feeds its rows
            S = U[r0:r1] @ U[c0:c1].T
            if low and S.device.type == "cpu":
                S = S.float()  # as `symmetric._symmetric` does on a CPU
            dense_pair(run, S, r0, c0, diag=bi == bj, row_off=off[bi], col_off=off[bj])
        if on_pair is not None:
            on_pair()
    vals, idx = h.result() if heap else (run.vals.float().cpu(), run.idx.cpu())
    return Partial(rows, vals.numpy(), idx.numpy())


def side_by_side(partials: list[Partial], n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's partial lists (k wide each) side by side, (n, most lists a row * k); slots no
    list fills are empty (-inf / -1)."""
    counts = np.zeros(n, dtype=np.int64)
    for p in partials:
        counts[p.rows] += 1
    width = int(counts.max(initial=0)) * k
    V = np.full((n, width), -np.inf, dtype=np.float32)
    I = np.full((n, width), -1, dtype=np.int64)
    slot = np.zeros(n, dtype=np.int64)
    ar = np.arange(k, dtype=np.int64)
    for p in partials:
        cols = (slot[p.rows] * k)[:, None] + ar
        V[p.rows[:, None], cols] = p.vals
        I[p.rows[:, None], cols] = p.idx
        slot[p.rows] += 1
    return V, I


def merge_partials(partials: list[Partial], n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top k (sorted; value descending, ties by lower index, empty slots -inf/-1)
    over all the partial lists that cover it: the lists side by side, then `merge_topk`."""
    V, I = side_by_side(partials, n, k)
    empty = torch.empty((n, 0))
    out = merge_topk(torch.from_numpy(V), torch.from_numpy(I), empty, empty.long(), k)
    return out.values, out.indices
