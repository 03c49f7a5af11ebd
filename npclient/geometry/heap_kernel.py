"""The "heap" selection (CPU, float32): numba kernels, their Python sources, and the heaps they fill.

One pass over a block, single-threaded, compiled with numba (a dependency of umap-learn,
hence of this project; without it the torch `threshold` path is used). Each row's running
top-k is a min-heap on (value, -index) whose root is the row's k-th best, so the threshold
is always exact and ties keep the lower index. Each row of the block is read in chunks of
64: one branch-free (vectorised) count of the entries at or above min(row threshold, column
threshold) skips a chunk with none, about 0.1 ns an entry; the rest are offered entry by entry.

The kernels are the plain-Python functions `_heap_push_py`, `_scan_py` and `_query_scan_py`,
compiled on first use by `_numba_scan()` (once per process) with `cache=True`: numba keeps
the machine code in this package's `__pycache__` (`heap_kernel.<name>-<line>.py311.nbi/.nbc`,
or its user cache dir where that is read-only), keyed on this file's path and timestamp, so a
fresh process loads it instead of compiling. Callers go through `_scan_block` and
`_query_block` (the compiled functions are module globals that exist only after
`_numba_scan()`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np


_EMPTY_ID = 1 << 62  # index of an empty heap slot: ranks below every real entry
_LOWEST = float(np.finfo(np.float32).min)


def _heap_push_py(hv, hi, r, v, i, k):  # pragma: no cover - compiled by numba
    """Offer (v, i) to row r's heap; True if it entered (the root changed)."""
    rv = hv[r, 0]
    if v < rv or (v == rv and i > hi[r, 0]):
        return False
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= k:
            break
        c2 = c + 1
        if c2 < k and (hv[r, c2] < hv[r, c] or (hv[r, c2] == hv[r, c] and hi[r, c2] > hi[r, c])):
            c = c2
        cv = hv[r, c]
        if cv < v or (cv == v and hi[r, c] > i):
            hv[r, pos] = cv
            hi[r, pos] = hi[r, c]
            pos = c
        else:
            break
    hv[r, pos] = v
    hi[r, pos] = i
    return True


def _scan_py(S, a0, a1, b0, b1, r0, c0, cid0, rid0, rows, cols, diag, hv, hi, floor_r, floor_c, k):  # pragma: no cover
    """Offer the entries S[a0:a1, b0:b1] to the heaps: the row side (row a -> heap r0 + a,
    id cid0 + b) and/or the column side (column b -> heap c0 + b, id rid0 + a). `diag`: only
    entries above the diagonal (b > a) are read. floor_r[a] / floor_c[b]: known lower bounds
    of the final k-th values (-inf if none). -inf entries are never taken."""
    CH = 64
    inf = np.float32(np.inf)
    lowest = np.float32(-3.4028234663852886e38)
    tc = np.empty(b1, np.float32)
    for b in range(b0, b1):
        t = inf
        if cols:
            t = hv[c0 + b, 0]
            if floor_c[b] > t:
                t = floor_c[b]
            if t < lowest:
                t = lowest
        tc[b] = t
    for a in range(a0, a1):
        row = S[a]
        tr = inf
        if rows:
            tr = hv[r0 + a, 0]
            if floor_r[a] > tr:
                tr = floor_r[a]
            if tr < lowest:
                tr = lowest
        start = b0
        if diag and a + 1 > start:
            start = a + 1
        if start >= b1:
            continue
        nfull = (b1 - b0) // CH
        for ch in range((start - b0) // CH, nfull + 1):
            lo = b0 + ch * CH
            if ch < nfull:
                seg = row[lo:lo + CH]
                tseg = tc[lo:lo + CH]
                hit = 0
                for j in range(CH):  # branch-free, vectorised: does any entry pass either side?
                    hit += seg[j] >= min(tr, tseg[j])
                if hit == 0:
                    continue
                end = lo + CH
            else:
                end = b1
            if lo < start:
                lo = start
            for b in range(lo, end):
                v = row[b]
                if v >= tr:
                    if _heap_push(hv, hi, r0 + a, v, cid0 + b, k):
                        tr = hv[r0 + a, 0]
                        if floor_r[a] > tr:
                            tr = floor_r[a]
                        if tr < lowest:
                            tr = lowest
                if v >= tc[b]:
                    if _heap_push(hv, hi, c0 + b, v, rid0 + a, k):
                        t2 = hv[c0 + b, 0]
                        if floor_c[b] > t2:
                            t2 = floor_c[b]
                        if t2 < lowest:
                            t2 = lowest
                        tc[b] = t2


def _query_scan_py(K, Q, base, ex, hv, hi, bad, k):  # pragma: no cover - compiled by numba
    """Few queries against key rows K (one read of K): each key's norm and its dots with the
    unit queries Q are accumulated in float64, cos = dot / |key| goes to query qi's heap.
    Keys with norm 0 or non-finite are marked in `bad` and skipped; ex[qi] (a global key id,
    -1 for none) is left out for query qi; ids are base + row."""
    n, d = K.shape
    m = Q.shape[0]
    for i in range(n):
        row = K[i]
        s2 = 0.0
        for j in range(d):
            x = np.float64(row[j])
            s2 += x * x
        if not (s2 > 0.0 and s2 < np.inf):
            bad[i] = True
            continue
        inv = 1.0 / np.sqrt(s2)
        for qi in range(m):
            if ex[qi] == base + i:
                continue
            qrow = Q[qi]
            dot = 0.0
            for j in range(d):
                dot += np.float64(row[j]) * np.float64(qrow[j])
            v = np.float32(dot * inv)
            if v >= hv[qi, 0]:
                _heap_push(hv, hi, qi, v, base + i, k)


_heap_push = None
_scan = None
_query_scan = None
_NUMBA: Optional[bool] = None


def _numba_scan():
    """The compiled `_scan_py` (compiled once per process, cached on disk), or None when
    numba is missing."""
    global _heap_push, _scan, _query_scan, _NUMBA
    if _NUMBA is None:
        try:
            import numba
        except Exception:
            _NUMBA = False
            return None
        _heap_push = numba.njit(cache=True, nogil=True, inline="always")(_heap_push_py)
        _scan = numba.njit(cache=True, nogil=True, fastmath=True)(_scan_py)
        _query_scan = numba.njit(cache=True, nogil=True, fastmath=True)(_query_scan_py)
        _NUMBA = True
    return _scan if _NUMBA else None


class _Heaps:
    """Running top-k of n rows as min-heaps (numpy arrays shared with the numba kernel)."""

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.hv = np.full((n, k), -np.inf, dtype=np.float32)
        self.hi = np.full((n, k), _EMPTY_ID, dtype=np.int64)
        self._neg_r: Optional[np.ndarray] = None

    def none(self, m: int) -> np.ndarray:
        if self._neg_r is None or self._neg_r.shape[0] < m:
            self._neg_r = np.full(max(m, 1), -np.inf, dtype=np.float32)
        return self._neg_r[:m]

    def cold(self, r0: int, r1: int) -> bool:
        return bool(np.isneginf(self.hv[r0:r1, 0]).any())

    def result(self) -> tuple[Any, Any]:
        """(values, ids) as torch tensors, unsorted; empty slots -inf / -1."""
        import torch

        v, i = self.arrays()
        return torch.from_numpy(v), torch.from_numpy(i)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, ids) as numpy arrays, unsorted; empty slots -inf / -1 (the heaps' own arrays)."""
        empty = self.hi == _EMPTY_ID
        if empty.any():
            self.hv[empty] = -np.inf
            self.hi[empty] = -1
        return self.hv, self.hi


def _scan_block(S: np.ndarray, r0: int, c0: int, *, rows: bool, cols: bool, diag: bool, h: "_Heaps",
                floor_r: np.ndarray, floor_c: np.ndarray, cid0: int, rid0: int) -> None:
    """One single-threaded pass of the numba kernel over block S. (Two threads on tiles that
    share no heap row were measured no faster on 2 cores: the pass is ~0.1 ns an entry, close
    to memory speed, and the GEMM between passes already uses every core.)"""
    R, C = S.shape
    _scan(S, 0, R, 0, C, r0, c0, cid0, rid0, rows, cols, diag, h.hv, h.hi, floor_r, floor_c, h.k)


def _query_block(K: np.ndarray, Q: np.ndarray, base: int, ex: np.ndarray, h: _Heaps, bad: np.ndarray,
                 k: int) -> None:
    """One pass of the compiled `_query_scan_py` over key rows K (ids base..) into heaps h."""
    _query_scan(K, Q, base, ex, h.hv, h.hi, bad, k)


def _floor(h: _Heaps, S: Any, r0: int, dim: int) -> np.ndarray:
    """Lower bounds for the heap rows fed by S (a numpy array, or a CPU torch tensor) along
    `dim` while they are not yet full."""
    n = S.shape[0] if dim == 1 else S.shape[1]
    if not h.cold(r0, r0 + n):
        return h.none(n)
    t = lower_bounds(S if isinstance(S, np.ndarray) else S.numpy(), h.k, dim)
    return h.none(n) if t is None else t


def bound_groups(L: int, k: int) -> Optional[int]:
    """The G disjoint groups of L entries whose maxima bound a k-th largest value from below
    (G >= 2k: enough maxima to choose k of, 4k where groups stay >= 16 wide); None when L is too short."""
    G = min(L // 2, max(2 * k, 4 * k if L >= 64 * k else 2 * k))
    return None if G < 2 * k or G < 1 else G


def lower_bounds(S: np.ndarray, k: int, dim: int) -> Optional[np.ndarray]:
    """`dense._lower_bounds` on a numpy block: per row (dim=1) or column (dim=0), the k-th
    largest of the maxima of G >= 2k disjoint groups (k group maxima are k distinct entries,
    all >= it); None when S is too small along `dim` or the bound is not finite."""
    L = S.shape[dim]
    G = bound_groups(L, k)
    if G is None:
        return None
    g = L // G
    if dim == 1:
        M = S[:, : G * g].reshape(S.shape[0], G, g).max(axis=2)
    else:
        M = S[: G * g].reshape(G, g, S.shape[1]).max(axis=1).T
    t = np.partition(M, G - k, axis=1)[:, G - k]
    if not np.isfinite(t).all():
        return None
    return np.ascontiguousarray(t, dtype=np.float32)


_SUB_HEAP = 256  # rows per strip of a diagonal block

Gemm = Callable[[np.ndarray, int, int, int, int], None]


def heap_step(gemm: Gemm, sbuf: np.ndarray, h: _Heaps, r0: int, r1: int, c0: int, c1: int, *,
              row_off: int, col_off: int) -> None:
    """One block pair's heap step: rows r0:r1 against columns c0:c1 (c0 >= r0) of the rows that
    `gemm(out, a0, a1, b0, b1)` multiplies (out = rows a0:a1 · rows b0:b1ᵀ, float32, into the
    numpy view `out`), fed into heaps `h` at rows `row_off`/`col_off` (the block's own offsets in
    `h`: r0/c0 for the whole matrix, a tile's local ones in `distributed.pairs`); the ids written
    stay global. A diagonal block (c0 == r0) is computed only above its diagonal, in strips of
    _SUB_HEAP rows; `sbuf` (float32) holds at least (r1 - r0) * (c1 - c0) values."""
    R, C = r1 - r0, c1 - c0
    if c0 == r0:
        # strip p is rows p0..p1 of the block against its columns p0.., scanned above its own diagonal
        for p0 in range(0, R, _SUB_HEAP):
            p1 = min(p0 + _SUB_HEAP, R)
            St = sbuf[: (p1 - p0) * (R - p0)].reshape(p1 - p0, R - p0)
            gemm(St, r0 + p0, r0 + p1, r0 + p0, r1)
            _scan_block(St, row_off + p0, row_off + p0, rows=True, cols=True, diag=True, h=h,
                        floor_r=h.none(p1 - p0), floor_c=h.none(R - p0), cid0=r0 + p0, rid0=r0 + p0)
    else:
        S = sbuf[: R * C].reshape(R, C)
        gemm(S, r0, r1, c0, c1)
        _scan_block(S, row_off, col_off, rows=True, cols=True, diag=False, h=h,
                    floor_r=_floor(h, S, row_off, 1), floor_c=_floor(h, S, col_off, 0), cid0=c0, rid0=r0)
