"""Exact top-k cosine neighbours of decoder rows: blocked matmuls with a running top-k.

Memory is O(n*k + block), never an n x n matrix. The search follows faiss's
`knn_ground_truth` (contrib/exhaustive_search.py): the keys come in blocks, each block is
searched (`q @ block.T`), its local ids are shifted, and the candidates go into a running
top-k per query.

Conventions (those of Neuronpedia's `topkCosSimIndices/Values`, as the emulator serves them):

- A row whose cosine is undefined (all zeros, or any NaN/Inf) is *invalid*. For a valid query,
  the valid keys come first by cosine (descending, ties by index), then the invalid keys in
  index order with NaN values. An invalid query gets NaN values and the keys in index order.
- `all_pairs_topk` lists each row itself first (1.0, or NaN for an invalid row), then its k-1
  nearest other rows as above.
- Ties at the k-th place keep the lower index on every path, so results do not depend on
  block sizes (values themselves can differ in the last float32 bit between block sizes,
  as BLAS picks other kernels for other shapes).

All-pairs uses the symmetry of W·Wᵀ: block (i, j) with j >= i is computed once (a diagonal
block only on and above its diagonal, in strips); its rows feed row block i and its columns
(the transpose) feed row block j. Invalid rows are taken out before and put back after.

Selection, after the matmul of a block (`selection=`):

- "heap" (CPU, the default where numba is installed, as it is with umap-learn): one compiled,
  single-threaded pass over the block. Each row's running top-k is a min-heap whose root is its
  k-th best; a chunk of 64 entries is skipped after one vectorised count of the entries at or
  above min(row threshold, column thresholds), ~0.1 ns an entry; the few that pass are offered
  to the row's and the column's heaps. Cold rows use a lower bound from the block's group
  maxima (`_lower_bounds`) so the first block does not offer everything. A few queries
  (`query_topk` of one vector) use a fused pass that reads each key once for its norm and
  its dots, about the cost of one matrix-vector product.
- "threshold" (CPU without numba): the same idea with torch ops: group maxima find the
  entries at or above each row's (column's) threshold, which are scattered into a small
  padded matrix and merged (`merge_topk`'s kernel).
- "dense" (GPUs): `torch.topk` of the block along the rows (and the columns, in all-pairs),
  merged into the running top-k; no host synchronisation in the common case.

Low precision (bfloat16/float16, for GPUs) selects with the low-precision matmul and then
rescores the chosen neighbours in float32, so values are exact cosines; recall against a
float32 search is what low precision can lose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence

import threading

import numpy as np
import torch

from .device import DeviceLike, DTypeLike, as_float32, from_numpy, normalize_rows, pick_device, resolve_dtype

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

Progress = Optional[Callable[[int, int], None]]
Selection = Literal["auto", "heap", "threshold", "dense"]
_NEG = float("-inf")
_SELECTIONS = ("auto", "heap", "threshold", "dense")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class TopK:
    """Top-k neighbours of n queries: `values` float32 (n, k), `indices` int64 (n, k), on CPU.

    Row r lists query r's neighbours best first. Unpacks as `values, indices = result`.
    """

    values: torch.Tensor
    indices: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter((self.values, self.indices))

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(values float32, indices int64) as numpy arrays."""
        return self.values.cpu().numpy(), self.indices.cpu().numpy()

    def row(self, r: int) -> list[tuple[int, float]]:
        """[(index, cosine), ...] of query r, best first."""
        return list(zip(self.indices[r].tolist(), self.values[r].tolist()))

    def to_arrow(
        self,
        query_ids: Optional[Sequence[int] | np.ndarray | torch.Tensor] = None,
        *,
        query_column: str = "query",
        neighbor_column: str = "neighbor",
        value_column: str = "cosine",
        rank_column: str = "rank",
    ):
        """A long pyarrow table: one row per (query, rank), rank 0 first.

        `query_ids` names the queries (e.g. the feature indices queried); default 0..n-1.
        """
        import pyarrow as pa

        v, i = self.numpy()
        n, k = v.shape
        if query_ids is None:
            q = np.arange(n, dtype=np.int64)
        else:
            q = np.asarray(query_ids.cpu() if isinstance(query_ids, torch.Tensor) else query_ids, dtype=np.int64)
            if q.shape != (n,):
                raise ValueError(f"query_ids must have {n} entries, got shape {q.shape}")
        return pa.table({
            query_column: pa.array(np.repeat(q, k)),
            rank_column: pa.array(np.tile(np.arange(k, dtype=np.int32), n)),
            neighbor_column: pa.array(i.reshape(-1)),
            value_column: pa.array(v.reshape(-1), type=pa.float32()),
        })


# --------------------------------------------------------------------------- the merge


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype)


_LOW = (1 << 32) - 1
_KEY_MIN = torch.iinfo(torch.int64).min


def _order_key(v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """One int64 per entry ordering (value descending, index ascending): the float32 bits made
    order-preserving in the high half, the complement of index + 1 in the low half. NaN
    ranks as -inf; an empty slot (index < 0) below everything."""
    v = v.float()
    v = torch.where(torch.isnan(v), _NEG, v) + 0.0  # + 0.0 turns -0.0 into +0.0
    b = v.view(torch.int32)
    b = torch.where(b < 0, b ^ 0x7FFFFFFF, b).to(torch.int64)
    key = b * (1 << 32) + (_LOW - (i + 1))
    return torch.where(i < 0, _KEY_MIN, key)


def _topk_merge(v: torch.Tensor, i: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row of (v, i), unsorted; ties at the k-th value keep the lower
    indices (exactly, through `_order_key`), so results never depend on block sizes."""
    if v.shape[1] <= k:
        return v, i
    _, pos = torch.topk(_order_key(v, i), k, dim=1, sorted=False)
    return v.gather(1, pos), i.gather(1, pos)


def _sort_rows(v: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by value descending (NaN as -inf), ties by index ascending, slots with
    index < 0 (placeholders) after everything."""
    _, o = torch.sort(_order_key(v, i), dim=1, descending=True)
    return v.gather(1, o), i.gather(1, o)


def merge_topk(
    vals_a: Any, idx_a: Any, vals_b: Any, idx_b: Any, k: int, *, sorted: bool = True
) -> TopK:
    """Merge two candidate lists per row, (n, ka) and (n, kb), into each row's top k.

    Pure: nothing is modified. NaN values rank after every number; an index < 0 marks an
    empty slot (value -inf), ranked after everything. Ties keep the lower index, so the chosen
    set is deterministic; `sorted=True` orders each row by value descending, ties by index
    ascending, `sorted=False` leaves `torch.topk`'s order (what the search loops use).
    Values come back float32 and indices int64, on the inputs' device.
    """
    va, vb = _as_tensor(vals_a, torch.float32), _as_tensor(vals_b, torch.float32)
    ia, ib = _as_tensor(idx_a, torch.int64), _as_tensor(idx_b, torch.int64)
    if va.shape != ia.shape or vb.shape != ib.shape or va.ndim != 2 or va.shape[0] != vb.shape[0]:
        raise ValueError(f"shape mismatch: values {tuple(va.shape)}/{tuple(vb.shape)}, indices "
                         f"{tuple(ia.shape)}/{tuple(ib.shape)}")
    v, i = torch.cat((va, vb), 1), torch.cat((ia, ib), 1)
    k = min(int(k), v.shape[1])
    if k < 0:
        raise ValueError("k must be >= 0")
    if sorted:
        sv, si = _sort_rows(v, i)
        return TopK(sv[:, :k].contiguous(), si[:, :k].contiguous())
    _, pos = torch.topk(_order_key(v, i), k, dim=1, sorted=False)
    return TopK(v.gather(1, pos), i.gather(1, pos))


class _Running:
    """Running top-k of n rows: values, ids (-1: empty slot) and each row's k-th value."""

    __slots__ = ("k", "vals", "idx", "thr")

    def __init__(self, n: int, k: int, device: torch.device) -> None:
        self.k = k
        self.vals = torch.full((n, k), _NEG, dtype=torch.float32, device=device)
        self.idx = torch.full((n, k), -1, dtype=torch.int64, device=device)
        self.thr = torch.full((n,), _NEG, dtype=torch.float32, device=device)

    def warm(self, r0: int, r1: int) -> bool:
        """Whether every row in r0..r1-1 holds k candidates (its threshold is finite)."""
        return bool(self.thr[r0:r1].min() > _NEG)

    def merge(self, rows: slice | torch.Tensor, cv: torch.Tensor, ci: torch.Tensor) -> None:
        v = torch.cat((self.vals[rows], cv.float()), 1)
        i = torch.cat((self.idx[rows], ci), 1)
        tv, ti = _topk_merge(v, i, self.k)
        self.vals[rows] = tv
        self.idx[rows] = ti
        self.thr[rows] = tv.amin(1)


def _block_topk(S: torch.Tensor, c: int, ids: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, key ids) of the c best entries of each row of S. Where an entry left out ties
    the c-th value chosen, that row is redone with exact (value, index) keys, so ties keep
    the lower index here too."""
    tv, pos = torch.topk(S, c, dim=1, sorted=False)
    ci = ids(pos)
    if S.dtype != torch.float32:  # low precision: ties are rounding, and the values get rescored
        return tv, ci
    kth = tv.amin(1, keepdim=True)
    tied = ((S >= kth).sum(1) > c).nonzero().squeeze(1)
    if tied.numel():
        rows = S[tied]
        cols = ids(torch.arange(S.shape[1], device=S.device)).unsqueeze(0).expand_as(rows)
        _, p = torch.topk(_order_key(rows, cols), c, dim=1, sorted=False)
        tv, ci = tv.clone(), ci.clone()
        tv[tied] = rows.gather(1, p).to(tv.dtype)
        ci[tied] = cols.gather(1, p)
    return tv, ci


def _dense(run: _Running, r0: int, S: torch.Tensor, ids: Callable[[torch.Tensor], torch.Tensor], *, dim: int = 1) -> None:
    """`_block_topk` of block S along `dim` (1: S's rows are run rows r0..; 0: S's columns
    are), merged into the running top-k."""
    c = min(run.k, S.shape[dim])
    if c <= 0:
        return
    tv, ci = _block_topk(S if dim == 1 else S.T, c, ids)
    run.merge(slice(r0, r0 + tv.shape[0]), tv, ci)


def _scatter(run: _Running, base: int, n_rows: int, rl: torch.Tensor, ci: torch.Tensor, v: torch.Tensor,
             presorted: bool) -> None:
    """Merge a sparse candidate list (local row rl, key id ci, value v) into rows base + rl."""
    m = rl.numel()
    if m == 0:
        return
    if not presorted:
        rl, order = torch.sort(rl, stable=True)
        ci, v = ci[order], v[order]
    counts = torch.bincount(rl, minlength=n_rows)
    present = counts > 0
    touched = present.nonzero().squeeze(1)
    maxc = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(m, device=rl.device) - starts[rl]
    comp = (torch.cumsum(present, 0) - 1)[rl]
    pv = torch.full((touched.numel(), maxc), _NEG, dtype=torch.float32, device=rl.device)
    pi = torch.full((touched.numel(), maxc), -1, dtype=torch.int64, device=rl.device)
    pv[comp, rank] = v.float()
    pi[comp, rank] = ci
    run.merge(touched + base, pv, pi)


def _lower_bounds(S: torch.Tensor, k: int, dim: int) -> Optional[torch.Tensor]:
    """Per row (dim=1) or column (dim=0) of S, a lower bound on its k-th largest value: the
    k-th largest of the maxima of G >= 2k disjoint groups (k group maxima are k distinct
    entries, all >= it). One cheap pass instead of a full `topk`; None when S is too small
    along `dim` or the bound is -inf (masked entries), where the caller takes the dense path."""
    L = S.shape[dim]
    G = min(L // 2, max(2 * k, 4 * k if L >= 64 * k else 2 * k))
    if G < 2 * k or G < 1:
        return None
    g = L // G
    if dim == 1:
        M = S[:, : G * g].unflatten(1, (G, g)).amax(2)
    else:
        M = S[: G * g].unflatten(0, (G, g)).amax(1)
    t = torch.topk(M, k, dim=dim, sorted=False).values.amin(dim)
    if not bool(torch.isfinite(t).all()):
        return None
    return t


_GROUP = 32


def _find(S: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(rows, cols, values, rows_sorted) of the entries of S with S[a, b] >= t[a].

    Two levels, so the full block is read once and never scanned by `nonzero`: the maxima of
    groups of `_GROUP` consecutive columns (one pass), the groups whose maximum reaches the
    row's threshold (a small `nonzero`), then those groups' entries (a gather)."""
    R, C = S.shape
    g = _GROUP
    G = C // g
    a = b = v = None
    if G >= 1 and S.is_contiguous():
        M = S[:, : G * g].unflatten(1, (G, g)).amax(2)
        ra, ga = torch.nonzero(M >= t.unsqueeze(1), as_tuple=True)
        if C % g == 0:  # groups are rows of a (R*G, g) view: a contiguous gather
            vals = S.view(-1, g).index_select(0, ra * G + ga)
        else:
            vals = torch.take(S, (ra * C + ga * g).unsqueeze(1) + torch.arange(g, device=S.device))
        gi, off = torch.nonzero(vals >= t[ra].unsqueeze(1), as_tuple=True)
        a, b, v = ra[gi], ga[gi] * g + off, vals[gi, off]
        lo = G * g
    else:
        lo = 0
    if lo < C:
        sub = S[:, lo:]
        a2, b2 = torch.nonzero(sub >= t.unsqueeze(1), as_tuple=True)
        v2 = sub[a2, b2]
        if a is None:
            return a2, b2 + lo, v2, True
        return torch.cat((a, a2)), torch.cat((b, b2 + lo)), torch.cat((v, v2)), False
    return a, b, v, True


_GROUP_COLS = 8


def _find_cols(S: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(rows, cols, values, cols_sorted) of the entries of S with S[a, b] >= t[b]: `_find` on
    the columns (groups of `_GROUP_COLS` consecutive rows), found in column order (no sort)."""
    R, C = S.shape
    g = _GROUP_COLS
    G = R // g
    a = b = v = None
    if G >= 1 and S.is_contiguous():
        M = S[: G * g].unflatten(0, (G, g)).permute(1, 0, 2).amax(0)  # (G, C); this form is the fast kernel
        cb, gr = torch.nonzero((M >= t.unsqueeze(0)).T.contiguous(), as_tuple=True)  # column-major order
        flat = ((gr * g * C + cb).unsqueeze(1) + torch.arange(0, g * C, C, device=S.device))
        vals = torch.take(S, flat)
        gi, off = torch.nonzero(vals >= t[cb].unsqueeze(1), as_tuple=True)
        a, b, v = gr[gi] * g + off, cb[gi], vals[gi, off]
        lo = G * g
    else:
        lo = 0
    if lo < R:
        sub = S[lo:]
        b2, a2 = torch.nonzero((sub >= t.unsqueeze(0)).T, as_tuple=True)
        v2 = sub[a2, b2]
        if a is None:
            return a2 + lo, b2, v2, True
        return torch.cat((a, a2 + lo)), torch.cat((b, b2)), torch.cat((v, v2)), False
    return a, b, v, True


def _threshold(run: _Running, S: torch.Tensor, r0: int, c0: int,
               th_r: Optional[torch.Tensor], th_c: Optional[torch.Tensor],
               col_ids: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Sparse update from block S: the row side (S's rows are run rows r0.., thresholds th_r)
    and/or the column side (S's columns are run rows c0.., thresholds th_c). Each side finds
    its entries at or above its thresholds (`_find`, `_find_cols`) and merges them. Entries
    below a threshold can never enter that row's top-k; ties with it pass (harmless)."""
    R, C = S.shape
    if th_r is not None:
        a, b, v, srt = _find(S, th_r)
        _scatter(run, r0, R, a, col_ids(b), v, presorted=srt)
    if th_c is not None:
        # th_c may be a view just raised by the row side (diagonal block): still a valid bound
        a, b, v, srt = _find_cols(S, th_c)
        _scatter(run, c0, C, b, a + r0, v, presorted=srt)


# --------------------------------------------------------------------------- heap selection (numba)
#
# One pass over a block, single-threaded, compiled with numba (a dependency of umap-learn,
# hence of this project; without it the torch `threshold` path is used). Each row's running
# top-k is a min-heap on (value, -index) whose root is the row's k-th best, so the threshold
# is always exact and ties keep the lower index. Each row of the block is read in chunks of
# 64: one branch-free (vectorised) count of the entries at or above min(row threshold, column
# threshold) skips a chunk with none, about 0.1 ns an entry; the rest are offered entry by entry.

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

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.from_numpy(self.hv)
        i = torch.from_numpy(self.hi)
        empty = i == _EMPTY_ID
        return v.masked_fill(empty, _NEG), i.masked_fill(empty, -1)


def _scan_block(S: np.ndarray, r0: int, c0: int, *, rows: bool, cols: bool, diag: bool, h: "_Heaps",
                floor_r: np.ndarray, floor_c: np.ndarray, cid0: int, rid0: int) -> None:
    """One single-threaded pass of the numba kernel over block S. (Two threads on tiles that
    share no heap row were measured no faster on 2 cores: the pass is ~0.1 ns an entry, close
    to memory speed, and the GEMM between passes already uses every core.)"""
    R, C = S.shape
    _scan(S, 0, R, 0, C, r0, c0, cid0, rid0, rows, cols, diag, h.hv, h.hi, floor_r, floor_c, h.k)


def _floor(h: _Heaps, S: torch.Tensor, r0: int, dim: int) -> np.ndarray:
    """Lower bounds for the heap rows fed by S along `dim` while they are not yet full."""
    n = S.shape[0] if dim == 1 else S.shape[1]
    if not h.cold(r0, r0 + n):
        return h.none(n)
    t = _lower_bounds(S, h.k, dim)
    return h.none(n) if t is None else t.numpy()


# --------------------------------------------------------------------------- helpers


def default_block_rows(device: torch.device, d: int, dtype: torch.dtype = torch.float32, *, n_queries: Optional[int] = None) -> int:
    """Rows per block: ~2-3k on CPU (a 16-36 MB block of W·Wᵀ stays in the L3 cache and the
    GEMM runs near peak), 16k on a GPU (a 0.5-1 GB block; big enough to saturate it). With few
    queries (`n_queries` < 64) the key block is sized to ~8 MB of keys instead (memory bound)."""
    if n_queries is not None and n_queries < 64:
        return int(max(256, min(65536, (8 << 20) // (4 * max(d, 1)))))
    if device.type == "cpu":
        return 2048
    return 16384


def _resolve_selection(selection: str, device: torch.device) -> str:
    """The selection mode: "heap" (numba, CPU), "threshold" (torch sparse) or "dense"."""
    if selection not in _SELECTIONS:
        raise ValueError(f"selection must be one of {_SELECTIONS}, got {selection!r}")
    if selection == "auto":
        if device.type != "cpu":
            return "dense"
        return "heap" if _numba_scan() is not None else "threshold"
    if selection == "heap":
        if device.type != "cpu":
            raise ValueError("selection='heap' runs on CPU only")
        if _numba_scan() is None:
            raise ValueError("selection='heap' needs numba")
    return selection


def _n_rows(x: Any) -> tuple[int, int]:
    shape = tuple(x.shape) if hasattr(x, "shape") else np.asarray(x).shape
    if len(shape) == 1:
        return 1, int(shape[0])
    if len(shape) != 2:
        raise ValueError(f"expected a matrix (rows x dims), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _rows(x: Any, s: int, e: int, device: torch.device) -> torch.Tensor:
    """Rows s..e-1 of a tensor or array as float32 on `device` (no full copy of `x`)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        t = t.unsqueeze(0) if t.ndim == 1 else t
        t = t[s:e]
    else:
        a = x if isinstance(x, np.ndarray) else np.asarray(x)
        a = a[None, :] if a.ndim == 1 else a
        t = from_numpy(a[s:e])
    if t.device != device:
        t = t.to(device, non_blocking=False)
    return t.float() if t.dtype != torch.float32 else t


def _exclude_vector(exclude: Any, nq: int, nk: int) -> Optional[torch.Tensor]:
    if exclude is None:
        return None
    ex = torch.as_tensor(np.asarray(exclude.cpu() if isinstance(exclude, torch.Tensor) else exclude), dtype=torch.int64)
    ex = ex.reshape(-1)
    if ex.numel() == 1 and nq != 1:
        ex = ex.expand(nq).clone()
    if ex.numel() != nq:
        raise ValueError(f"exclude must give one key index per query ({nq}), got {ex.numel()}")
    if bool(((ex >= nk) | (ex < -1)).any()):
        raise ValueError("exclude entries must be key indices or -1 (none)")
    return ex


def _fill(vals: torch.Tensor, idx: torch.Tensor, q_valid: torch.Tensor, width: int,
          invalid_keys: torch.Tensor, exclude: Optional[torch.Tensor]) -> TopK:
    """Final rows on CPU from the sorted top-k of the valid queries (vals/idx: global key ids,
    -inf marking empty slots): empty slots get the invalid keys in index order (NaN), invalid
    queries get NaN and the first keys in index order; `exclude` (per query) is skipped."""
    nq = q_valid.numel()
    out_v = torch.full((nq, width), float("nan"), dtype=torch.float32)
    out_i = torch.empty((nq, width), dtype=torch.int64)
    vq = q_valid.nonzero().squeeze(1)
    if vq.numel():
        empty = vals == _NEG
        m = empty.sum(1)
        M = int(m.max()) if m.numel() else 0
        v = vals.masked_fill(empty, float("nan"))
        if M > 0:
            cand = invalid_keys[: M + 1].unsqueeze(0).expand(vq.numel(), -1)
            if exclude is not None:
                drop = (cand == exclude[vq].unsqueeze(1)).to(torch.int8)
                cand = cand.gather(1, torch.sort(drop, dim=1, stable=True).indices)
            cand = cand[:, :M]
            t = torch.arange(width).unsqueeze(0) - (width - m).unsqueeze(1)
            idx = torch.where(t >= 0, cand.gather(1, t.clamp(0, max(M - 1, 0))), idx)
        out_v[vq] = v
        out_i[vq] = idx
    bq = (~q_valid).nonzero().squeeze(1)
    if bq.numel():
        base = torch.arange(width + 1, dtype=torch.int64).unsqueeze(0).expand(bq.numel(), -1)
        if exclude is not None:
            drop = (base == exclude[bq].unsqueeze(1)).to(torch.int8)
            base = base.gather(1, torch.sort(drop, dim=1, stable=True).indices)
        out_i[bq] = base[:, :width]
    return TopK(out_v, out_i)


def _rescore(qn: torch.Tensor, idx: torch.Tensor, key_rows: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Exact float32 cosines of (query row r, key idx[r, j]) pairs; -inf where idx < 0."""
    n, k = idx.shape
    out = torch.full((n, k), _NEG, dtype=torch.float32, device=idx.device)
    if n == 0 or k == 0:
        return out
    d = qn.shape[1]
    chunk = max(1, (1 << (25 if idx.device.type == "cpu" else 27)) // max(1, k * d))
    for s in range(0, n, chunk):
        ii = idx[s:s + chunk]
        ok = ii >= 0
        keys = key_rows(ii.clamp_min(0).reshape(-1)).reshape(ii.shape[0], k, d)
        dots = torch.bmm(keys, qn[s:s + chunk].unsqueeze(2)).squeeze(2)
        out[s:s + chunk] = dots.masked_fill(~ok, _NEG)
    return out


# --------------------------------------------------------------------------- queries vs keys


def topk_cosine(
    queries: Any,
    keys: Any,
    k: int,
    *,
    block_rows: Optional[int] = None,
    device: DeviceLike = None,
    dtype: DTypeLike = None,
    exclude: Any = None,
    progress: Progress = None,
    selection: Selection = "auto",
) -> TopK:
    """For each query row, its k keys of highest cosine similarity.

    `queries` (nq, d) or one vector (d,); `keys` (nk, d): torch tensors or numpy arrays
    (memmaps included: keys are read block by block, never copied whole). `exclude`: one key
    index per query to leave out (-1: none), e.g. the query's own row. Width: min(k, nk), one
    less if `exclude` is given. Invalid keys (zero/NaN rows) rank last with NaN values; an
    invalid query gets NaN values and the keys in index order. `block_rows` bounds both the
    key block and the query block; memory is O(nq*k + block_rows^2). `progress(done, total)`
    is called after each block. `selection`: "auto" (the numba heap scan on CPU, or the torch
    "threshold" path without numba; "dense" elsewhere), "heap", "threshold" or "dense". With
    fewer than 64 valid queries the keys' blocks are sized by bytes (~8 MB) and each block's
    own top-k is kept and merged in batches. Returns CPU tensors.
    """
    dev = pick_device(device)
    dt = resolve_dtype(dtype, dev)
    mode = _resolve_selection(selection, dev)
    nq, d = _n_rows(queries)
    nk, dk = _n_rows(keys)
    if d != dk:
        raise ValueError(f"queries have {d} dims, keys {dk}")
    if k < 0:
        raise ValueError("k must be >= 0")
    ex = _exclude_vector(exclude, nq, nk)
    width = min(int(k), nk - (1 if ex is not None and bool((ex >= 0).any()) else 0))
    if width <= 0 or nq == 0:
        return TopK(torch.empty((nq, max(width, 0)), dtype=torch.float32), torch.empty((nq, max(width, 0)), dtype=torch.int64))

    qn, qbad = normalize_rows(as_float32(queries, dev))
    q_valid = ~qbad
    vq = q_valid.nonzero().squeeze(1)
    nqv = int(vq.numel())
    Qv = qn[vq] if nqv < nq else qn
    Qc = Qv.to(dt) if dt != torch.float32 else Qv
    ex_v = ex.to(dev)[vq] if ex is not None else None
    if nqv and nqv <= _FUSED_MAX_QUERIES and mode == "heap" and dt == torch.float32:
        return _fused_queries(Qv, q_valid, keys, nk, width, ex, ex_v, block_rows, progress)
    # few queries: memory bound, one read of each key block; its top-k is kept and merged in batches
    few = nqv < 64
    kb = max(1, int(block_rows) if block_rows else default_block_rows(dev, d, dt, n_queries=nqv))
    qb = max(1, int(block_rows) if block_rows else default_block_rows(dev, d, dt))
    if few:
        qb = max(qb, nqv)
    heaps = _Heaps(nqv, width) if mode == "heap" and not few and dt == torch.float32 else None
    run = None if heaps is not None else _Running(nqv, width, dev)
    pend_v: list[torch.Tensor] = []
    pend_i: list[torch.Tensor] = []
    k_starts = list(range(0, nk, kb))
    q_starts = list(range(0, nqv, qb)) if nqv else []
    total = len(k_starts) * max(1, len(q_starts))
    done = 0
    bad_keys: list[torch.Tensor] = []
    s_dtype = dt if dev.type != "cpu" else torch.float32
    buf = None
    for s in k_starts:
        e = min(s + kb, nk)
        K = _rows(keys, s, e, dev)
        if few and dt == torch.float32:
            # memory bound: one read of the block from DRAM for the norms, the matvec from cache
            norms = torch.linalg.vector_norm(K, dim=1)
            kbad = ~torch.isfinite(norms) | (norms == 0)
            Kc = K
        else:
            kn, kbad = normalize_rows(K)
            Kc = kn.to(dt) if dt != torch.float32 else kn
            norms = None
        any_bad = bool(kbad.any())
        if any_bad:
            bad_keys.append(kbad.nonzero().squeeze(1).cpu() + s)
        if heaps is not None and len(q_starts) >= 2 and _cpu_threads() > 1:
            # query blocks on worker threads (single-threaded GEMM + scan each; see _run_exclusive)
            def task(pair, sbuf, s=s, e=e, Kc=Kc, kbad=kbad, any_bad=any_bad):
                q0 = q_starts[pair[0]]
                q1 = min(q0 + qb, nqv)
                S = sbuf[: (q1 - q0) * (e - s)].view(q1 - q0, e - s)
                torch.mm(Qc[q0:q1], Kc.T, out=S)
                _mask_block(S, q0, s, kbad if any_bad else None, ex_v)
                _scan_block(S.numpy(), q0, 0, rows=True, cols=False, diag=False, h=heaps,
                            floor_r=_floor(heaps, S, q0, 1), floor_c=heaps.none(e - s), cid0=s, rid0=0)

            base = done
            _run_exclusive([(i, i) for i in range(len(q_starts))], task, _cpu_threads(),
                           min(qb, nqv) * kb, None if progress is None else (lambda d_, t_, b=base: progress(b + d_, total)))
            done += len(q_starts)
            continue
        for q0 in q_starts:
            q1 = min(q0 + qb, nqv)
            R, C = q1 - q0, e - s
            if dev.type == "cpu" and dt == torch.float32:
                if buf is None or buf.numel() < R * C:
                    buf = torch.empty(max(R * C, min(qb, nqv) * kb), dtype=torch.float32)
                S = buf[: R * C].view(R, C)
                torch.mm(Qc[q0:q1], Kc.T, out=S)
            else:
                S = Qc[q0:q1] @ Kc.T
                if s_dtype != S.dtype:
                    S = S.to(s_dtype)
            if norms is not None:
                S.div_(norms.unsqueeze(0))
            _mask_block(S, q0, s, kbad if any_bad else None, ex_v)
            ids = (lambda p, s=s: p + s)
            if few:
                c = min(width, C)
                tv, ci = _block_topk(S, c, ids)
                pend_v.append(tv.float())
                pend_i.append(ci)
                if len(pend_v) >= 64:
                    run.merge(slice(0, nqv), torch.cat(pend_v, 1), torch.cat(pend_i, 1))
                    pend_v, pend_i = [], []
            elif heaps is not None:
                Sn = S.numpy() if S.is_contiguous() else S.contiguous().numpy()
                _scan_block(Sn, q0, 0, rows=True, cols=False, diag=False, h=heaps, floor_r=_floor(heaps, S, q0, 1),
                            floor_c=heaps.none(C), cid0=s, rid0=0)
            else:
                th = None
                if mode == "threshold":
                    th = run.thr[q0:q1] if run.warm(q0, q1) else _lower_bounds(S, width, 1)
                if th is None:
                    _dense(run, q0, S, ids)
                else:
                    _threshold(run, S, q0, 0, th, None, ids)
            done += 1
            if progress is not None:
                progress(done, total)
        if not q_starts:
            done += 1
            if progress is not None:
                progress(done, total)
    if pend_v:
        run.merge(slice(0, nqv), torch.cat(pend_v, 1), torch.cat(pend_i, 1))
    vals, idx = heaps.result() if heaps is not None else (run.vals, run.idx)
    if dt != torch.float32 and nqv:
        vals = torch.where(vals == _NEG, _NEG, _rescore(Qv, idx, lambda ii: normalize_rows(_gather_rows(keys, ii, dev))[0]))
    vals, idx = _sort_rows(vals.cpu(), idx.cpu())
    invalid_keys = torch.cat(bad_keys) if bad_keys else torch.empty(0, dtype=torch.int64)
    return _fill(vals, idx, q_valid.cpu(), width, invalid_keys, ex)


def _mask_block(S: torch.Tensor, q0: int, s: int, kbad: Optional[torch.Tensor], ex_v: Optional[torch.Tensor]) -> None:
    """-inf at invalid keys (columns) and at each query's excluded key, in block S of queries
    q0.. against keys s.."""
    if kbad is not None:
        S.masked_fill_(kbad.unsqueeze(0), _NEG)
    if ex_v is not None:
        loc = ex_v[q0:q0 + S.shape[0]] - s
        hit = (loc >= 0) & (loc < S.shape[1])
        if bool(hit.any()):
            r = hit.nonzero().squeeze(1)
            S[r, loc[r]] = _NEG


_FUSED_MAX_QUERIES = 8
_FUSED_BLOCK_BYTES = 64 << 20


def _fused_queries(Qv: torch.Tensor, q_valid: torch.Tensor, keys: Any, nk: int, width: int,
                   ex: Optional[torch.Tensor], ex_v: Optional[torch.Tensor], block_rows: Optional[int],
                   progress: Progress) -> TopK:
    """A handful of valid queries on CPU: one numba pass over the keys computes each key's norm
    and dots together (each key read once from memory, ~ the cost of one matrix-vector
    product) and feeds per-query heaps."""
    _numba_scan()
    nqv, d = Qv.shape
    h = _Heaps(nqv, width)
    Qn = np.ascontiguousarray(Qv.numpy())
    exn = (ex_v.numpy() if ex_v is not None else np.full(nqv, -1)).astype(np.int64)
    kb = int(block_rows) if block_rows else max(1, _FUSED_BLOCK_BYTES // (4 * max(d, 1)))
    starts = list(range(0, nk, kb))
    bad_keys = []
    for done, s in enumerate(starts, 1):
        e = min(s + kb, nk)
        K = _rows(keys, s, e, torch.device("cpu"))
        Kn = K.numpy() if K.is_contiguous() else K.contiguous().numpy()
        bad = np.zeros(e - s, dtype=np.bool_)
        _query_scan(Kn, Qn, s, exn, h.hv, h.hi, bad, width)
        if bad.any():
            bad_keys.append(torch.from_numpy(np.flatnonzero(bad) + s))
        if progress is not None:
            progress(done, len(starts))
    vals, idx = _sort_rows(*h.result())
    invalid_keys = torch.cat(bad_keys) if bad_keys else torch.empty(0, dtype=torch.int64)
    return _fill(vals, idx, q_valid.cpu(), width, invalid_keys, ex)


def _gather_rows(x: Any, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        t = t.unsqueeze(0) if t.ndim == 1 else t
        return t[ids.to(t.device)].to(device).float()
    a = np.asarray(x)
    a = a[None, :] if a.ndim == 1 else a
    return from_numpy(a[ids.cpu().numpy()]).to(device)


def query_topk(vectors: Any, W: Any, k: int, **kw: Any) -> TopK:
    """The k rows of W most cosine-similar to each of `vectors` (one vector (d,) or a batch
    (m, d): a steering vector, a probe direction, a row of W_U). See `topk_cosine`."""
    return topk_cosine(vectors, W, k, **kw)


def match_sources(W_a: Any, W_b: Any, k: int = 1, **kw: Any) -> TopK:
    """For each feature (row) of decoder A, its k best matches among the rows of decoder B
    (feature splitting across widths). See `topk_cosine`."""
    return topk_cosine(W_a, W_b, k, **kw)


def feature_topk(W: Any, features: Any, k: int, **kw: Any) -> TopK:
    """Rows `features` of `all_pairs_topk(W, k)`, without the rest: each feature itself first
    (1.0, NaN if its row is invalid), then its k-1 nearest other rows."""
    feats = torch.as_tensor(np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features),
                            dtype=torch.int64).reshape(-1)
    n, _ = _n_rows(W)
    if feats.numel() and (int(feats.min()) < 0 or int(feats.max()) >= n):
        raise IndexError(f"feature index out of range for {n} rows")
    k_total = min(int(k), n)
    dev = pick_device(kw.get("device"))
    Wt = W if isinstance(W, torch.Tensor) else None
    rows = (Wt[feats.to(Wt.device)] if Wt is not None else from_numpy(np.asarray(W)[feats.numpy()]))
    rest = topk_cosine(rows, W, max(k_total - 1, 0), exclude=feats, **kw) if k_total > 1 else None
    _, bad = normalize_rows(rows, dev)
    self_v = torch.where(bad.cpu(), float("nan"), 1.0).unsqueeze(1)
    if rest is None:
        return TopK(self_v[:, :k_total].contiguous(), feats.unsqueeze(1)[:, :k_total].contiguous())
    return TopK(torch.cat((self_v, rest.values), 1), torch.cat((feats.unsqueeze(1), rest.indices), 1))


# --------------------------------------------------------------------------- all pairs


def all_pairs_topk(
    W: Any,
    k: int,
    *,
    block_rows: Optional[int] = None,
    device: DeviceLike = None,
    dtype: DTypeLike = None,
    progress: Progress = None,
    selection: Selection = "auto",
) -> TopK:
    """For every row of W: itself first, then its k-1 most cosine-similar other rows.

    The layout of Neuronpedia's `topkCosSimIndices/Values` (k = 25 there): self first with
    1.0 (NaN for an invalid row), then the valid rows by cosine, then invalid rows in index
    order with NaN; an invalid row lists itself, then the other rows in index order, all NaN.
    Width min(k, n). Each block pair (i, j >= i) of W·Wᵀ is computed once and serves both
    row blocks. `progress(done, total)` counts block pairs. Returns CPU tensors.
    """
    dev = pick_device(device)
    dt = resolve_dtype(dtype, dev)
    mode = _resolve_selection(selection, dev)
    n, d = _n_rows(W)
    if k < 0:
        raise ValueError("k must be >= 0")
    k_total = min(int(k), n)
    if k_total == 0:
        return TopK(torch.empty((n, 0), dtype=torch.float32), torch.empty((n, 0), dtype=torch.int64))
    un, bad = normalize_rows(as_float32(W, dev))
    valid = ~bad
    vid = valid.nonzero().squeeze(1)
    nv = int(vid.numel())
    U = un[vid] if nv < n else un
    width = k_total - 1
    kv = min(width, max(nv - 1, 0))
    if kv > 0:
        block = int(block_rows) if block_rows else default_block_rows(dev, d, dt)
        if mode == "heap" and dt == torch.float32:
            vals, idx = _symmetric_heap(U, kv, max(1, block), progress)
        else:
            vals, idx = _symmetric(U, kv, max(1, block), dt, mode == "threshold", progress)
        if dt != torch.float32:
            vals = torch.where(vals == _NEG, _NEG, _rescore(U, idx, lambda ii: U[ii]))
        idx = torch.where(idx >= 0, vid[idx.clamp_min(0)], idx)
        vals, idx = _sort_rows(vals.cpu(), idx.cpu())
    else:
        if progress is not None:
            progress(1, 1)
        vals = torch.empty((nv, 0), dtype=torch.float32)
        idx = torch.empty((nv, 0), dtype=torch.int64)
    if width > kv:  # room left for invalid rows: pad with empty slots
        pad = width - kv
        vals = torch.cat((vals, torch.full((nv, pad), _NEG)), 1)
        idx = torch.cat((idx, torch.full((nv, pad), -1, dtype=torch.int64)), 1)
    valid_c = valid.cpu()
    invalid_keys = (~valid_c).nonzero().squeeze(1)
    self_ids = torch.arange(n, dtype=torch.int64)
    rest = _fill(vals, idx, valid_c, width, invalid_keys, self_ids)
    self_v = torch.where(valid_c, 1.0, float("nan")).to(torch.float32).unsqueeze(1)
    return TopK(torch.cat((self_v, rest.values), 1), torch.cat((self_ids.unsqueeze(1), rest.indices), 1))


def _symmetric_heap(U: torch.Tensor, k: int, block: int, progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """`_symmetric` with the numba heap scan (CPU, float32): each block pair (i, j >= i) is one
    GEMM (a diagonal one only above its diagonal) and one pass that feeds both sides.

    With T = torch.get_num_threads() > 1, T worker threads each take a block pair whose row
    blocks no other worker holds (so no heap row is written by two threads) and run its GEMM
    single-threaded, then its scan: the scans overlap the other workers' GEMMs instead of
    leaving cores idle, and no OpenMP barrier waits on a descheduled thread. torch's thread
    count is set to 1 for the duration of the call and restored after."""
    _numba_scan()
    nv = U.shape[0]
    h = _Heaps(nv, k)
    starts = list(range(0, nv, block))
    pairs = [(bi, bj) for bi in range(len(starts)) for bj in range(bi, len(starts))]
    T = min(_cpu_threads(), max(1, len(starts) // 2))
    cap = min(block, nv) ** 2

    def run_pair(pair: tuple[int, int], sbuf: torch.Tensor) -> None:
        r0, c0 = starts[pair[0]], starts[pair[1]]
        r1, c1 = min(r0 + block, nv), min(c0 + block, nv)
        A = U[r0:r1]
        R, C = r1 - r0, c1 - c0
        if c0 == r0:
            # the upper triangle only, in strips of _SUB_HEAP rows: strip p is rows p0..p1 of
            # the block against its columns p0.., scanned above its own diagonal
            for p0 in range(0, R, _SUB_HEAP):
                p1 = min(p0 + _SUB_HEAP, R)
                St = sbuf[: (p1 - p0) * (R - p0)].view(p1 - p0, R - p0)
                torch.mm(A[p0:p1], A[p0:].T, out=St)
                _scan_block(St.numpy(), r0 + p0, r0 + p0, rows=True, cols=True, diag=True, h=h,
                            floor_r=h.none(p1 - p0), floor_c=h.none(R - p0), cid0=r0 + p0, rid0=r0 + p0)
        else:
            S = sbuf[: R * C].view(R, C)
            torch.mm(A, U[c0:c1].T, out=S)
            _scan_block(S.numpy(), r0, c0, rows=True, cols=True, diag=False, h=h, floor_r=_floor(h, S, r0, 1),
                        floor_c=_floor(h, S, c0, 0), cid0=c0, rid0=r0)

    if T <= 1:
        sbuf = torch.empty(cap, dtype=torch.float32)
        for done, pair in enumerate(pairs, 1):
            run_pair(pair, sbuf)
            if progress is not None:
                progress(done, len(pairs))
        return h.result()
    _run_exclusive(pairs, run_pair, T, cap, progress)
    return h.result()


def _run_exclusive(pairs: list[tuple[int, int]], fn: Callable, T: int, cap: int, progress: Progress) -> None:
    """Run fn(pair, scratch) for every pair on T threads, never two pairs that share a block at
    the same time, taking pairs in list order where possible. torch runs single-threaded
    meanwhile (each thread is one core's worth of GEMM); progress is reported from this thread."""
    import queue

    pending = list(pairs)
    busy: set[int] = set()
    cond = threading.Condition()
    events: "queue.Queue[Optional[BaseException]]" = queue.Queue()
    failed: list[BaseException] = []

    def worker() -> None:
        sbuf = torch.empty(cap, dtype=torch.float32)
        while True:
            with cond:
                while True:
                    if not pending or failed:
                        return
                    pick = next((p for p in pending if p[0] not in busy and p[1] not in busy), None)
                    if pick is not None:
                        pending.remove(pick)
                        busy.update(pick)
                        break
                    cond.wait()
            err: Optional[BaseException] = None
            try:
                fn(pick, sbuf)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                err = e
            with cond:
                busy.difference_update(pick)
                if err is not None:
                    failed.append(err)
                cond.notify_all()
            events.put(err)

    threads = [threading.Thread(target=worker, name=f"npclient-knn-{t}", daemon=True) for t in range(T)]
    _torch_threads_enter()
    try:
        for t in threads:
            t.start()
        for done in range(1, len(pairs) + 1):
            err = events.get()
            if err is not None:
                raise err
            if progress is not None:
                progress(done, len(pairs))
    finally:
        with cond:
            if len(failed) == 0 and pending:
                failed.append(RuntimeError("interrupted"))
            cond.notify_all()
        for t in threads:
            t.join()
        _torch_threads_exit()


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 0}


def _cpu_threads() -> int:
    """torch's thread count as the caller set it (not the 1 that a running call set)."""
    with _THREADS_LOCK:
        return _THREADS_STATE["saved"] if _THREADS_STATE["depth"] else torch.get_num_threads()


def _torch_threads_enter() -> None:
    """torch single-threaded while worker threads run (nested and concurrent calls share one
    saved value, restored when the last one leaves)."""
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_STATE["depth"] += 1


def _torch_threads_exit() -> None:
    with _THREADS_LOCK:
        _THREADS_STATE["depth"] -= 1
        if _THREADS_STATE["depth"] == 0:
            torch.set_num_threads(_THREADS_STATE["saved"])


def _symmetric(U: torch.Tensor, k: int, block: int, dt: torch.dtype, thresh: bool,
               progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k (unsorted, self excluded) of every row of unit-row matrix U (all valid),
    over block pairs (i, j >= i) of U·Uᵀ: rows of a block feed row block i, its columns row block j."""
    dev = U.device
    nv = U.shape[0]
    Uc = U.to(dt) if dt != torch.float32 else U
    run = _Running(nv, k, dev)
    starts = list(range(0, nv, block))
    nb = len(starts)
    total = nb * (nb + 1) // 2
    done = 0
    cap = min(block, nv) ** 2
    use_buf = dev.type == "cpu" and dt == torch.float32
    sbuf = torch.empty(cap, dtype=torch.float32, device=dev) if use_buf else None
    for bi, r0 in enumerate(starts):
        r1 = min(r0 + block, nv)
        A = Uc[r0:r1]
        for c0 in starts[bi:]:
            c1 = min(c0 + block, nv)
            R, C = r1 - r0, c1 - c0
            diag = c0 == r0
            ids_c = (lambda p, c0=c0: p + c0)
            ids_r = (lambda p, r0=r0: p + r0)
            S = sbuf[: R * C].view(R, C) if use_buf else None
            if thresh and diag and run.warm(r0, r1):
                # upper triangle only (strips of sub-blocks), then both sides, like an off-diagonal block
                S = _upper_triangle(A, S)
                th = run.thr[r0:r1]
                _threshold(run, S, r0, r0, th, th, ids_c)
            else:
                if S is not None:
                    torch.mm(A, Uc[c0:c1].T, out=S)
                else:
                    S = A @ Uc[c0:c1].T
                    if dev.type == "cpu" and S.dtype != torch.float32:
                        S = S.float()
                if diag:
                    S.diagonal().fill_(_NEG)
                if not thresh:
                    _dense(run, r0, S, ids_c, dim=1)
                    if not diag:
                        _dense(run, c0, S, ids_r, dim=0)
                elif diag:  # cold diagonal block (the first one): dense row side
                    _dense(run, r0, S, ids_c, dim=1)
                else:
                    th_r = run.thr[r0:r1] if run.warm(r0, r1) else _lower_bounds(S, k, 1)
                    th_c = run.thr[c0:c1] if run.warm(c0, c1) else _lower_bounds(S, k, 0)
                    if th_r is None:
                        _dense(run, r0, S, ids_c, dim=1)
                    if th_c is None:
                        _dense(run, c0, S, ids_r, dim=0)
                    if th_r is not None or th_c is not None:
                        _threshold(run, S, r0, c0, th_r, th_c, ids_c)
            done += 1
            if progress is not None:
                progress(done, total)
    return run.vals, run.idx


_SUB = 512
_SUB_HEAP = 256


def _upper_triangle(A: torch.Tensor, S: Optional[torch.Tensor]) -> torch.Tensor:
    """A·Aᵀ above the diagonal, in strips of `_SUB` rows (about 5/8 of the flops of the full
    block for 4 strips); the diagonal and everything below it set to -inf."""
    R = A.shape[0]
    if S is None:
        S = torch.empty((R, R), dtype=torch.float32, device=A.device)
    for p0 in range(0, R, _SUB):
        p1 = min(p0 + _SUB, R)
        if p0 == 0 and p1 == R and S.is_contiguous():
            torch.mm(A, A.T, out=S)
        else:
            S[p0:p1, p0:] = A[p0:p1] @ A[p0:].T
        if p0:
            S[p0:p1, :p0] = _NEG
        S[p0:p1, p0:p1].masked_fill_(_tril(p1 - p0, A.device), _NEG)
    return S


_TRIL: dict[tuple[int, str], torch.Tensor] = {}


def _tril(m: int, device: torch.device) -> torch.Tensor:
    key = (m, str(device))
    t = _TRIL.get(key)
    if t is None:
        t = torch.ones((m, m), dtype=torch.bool, device=device).tril()
        _TRIL[key] = t
    return t
