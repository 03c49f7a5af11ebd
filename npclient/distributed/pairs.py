"""The units of a distributed all-pairs: tiles of symmetric block pairs, and one tile's partial top-k.

`all_pairs_topk` (`geometry.symmetric`) computes each block pair (i, j >= i) of U·Uᵀ once, its
rows feeding row block i and its columns row block j. Here those same pairs are grouped into
tiles (groups I x J >= I of consecutive blocks) so a worker's partial top-k covers only the
rows of two groups; each candidate (row, column) lives in exactly one tile, so the top-k of
the union of the partial lists is the top-k of the whole (`merge_partials`, through
`merge_topk`). A tile runs the per-pair steps of `symmetric` (one GEMM, a diagonal block only
above its diagonal, then the numba heap scan; or the torch "dense" selection on a GPU or
without numba) into heaps over its own rows. Pure torch/numpy: nothing here knows Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..geometry.dense import _dense
from ..geometry.heap_kernel import _floor, _Heaps, _numba_scan, _scan_block
from ..geometry.merge import _NEG, _Running, merge_topk
from ..geometry.symmetric import _SUB_HEAP

__all__ = ["Partial", "block_pairs", "merge_partials", "run_tile", "tiles"]

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
    torch dense selection on U's device. `on_pair()` is called after each pair."""
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
        lr, lc = off[bi], off[bj]
        A = U[r0:r1]
        R, C = r1 - r0, c1 - c0
        if heap and bi == bj:
            # symmetric's diagonal step: the upper triangle in strips of _SUB_HEAP rows
            for p0 in range(0, R, _SUB_HEAP):
                p1 = min(p0 + _SUB_HEAP, R)
                St = sbuf[: (p1 - p0) * (R - p0)].view(p1 - p0, R - p0)
                torch.mm(A[p0:p1], A[p0:].T, out=St)
                _scan_block(St.numpy(), lr + p0, lr + p0, rows=True, cols=True, diag=True, h=h,
                            floor_r=h.none(p1 - p0), floor_c=h.none(R - p0), cid0=r0 + p0, rid0=r0 + p0)
        elif heap:
            S = sbuf[: R * C].view(R, C)
            torch.mm(A, U[c0:c1].T, out=S)
            _scan_block(S.numpy(), lr, lc, rows=True, cols=True, diag=False, h=h, floor_r=_floor(h, S, lr, 1),
                        floor_c=_floor(h, S, lc, 0), cid0=c0, rid0=r0)
        else:
            # symmetric's dense step: a diagonal block whole (its diagonal masked) feeds its rows
            S = A @ U[c0:c1].T
            if bi == bj:
                S.diagonal().fill_(_NEG)
            _dense(run, lr, S, lambda p, c0=c0: p + c0, dim=1)
            if bi != bj:
                _dense(run, lc, S, lambda p, r0=r0: p + r0, dim=0)
        if on_pair is not None:
            on_pair()
    vals, idx = h.result() if heap else (run.vals.cpu(), run.idx.cpu())
    return Partial(rows, vals.numpy(), idx.numpy())


def merge_partials(partials: list[Partial], n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top k (sorted; value descending, ties by lower index, empty slots -inf/-1)
    over all the partial lists that cover it: the lists side by side, then `merge_topk`."""
    counts = np.zeros(n, dtype=np.int64)
    for p in partials:
        counts[p.rows] += 1
    width = int(counts.max(initial=0)) * k
    V = torch.full((n, width), _NEG, dtype=torch.float32)
    I = torch.full((n, width), -1, dtype=torch.int64)
    slot = torch.zeros(n, dtype=torch.int64)
    ar = torch.arange(k, dtype=torch.int64)
    for p in partials:
        rows = torch.tensor(p.rows)
        cols = (slot[rows] * k).unsqueeze(1) + ar
        V[rows.unsqueeze(1), cols] = torch.tensor(p.vals)
        I[rows.unsqueeze(1), cols] = torch.tensor(p.idx)
        slot[rows] += 1
    empty = torch.empty((n, 0))
    out = merge_topk(V, I, empty, empty.long(), k)
    return out.values, out.indices
