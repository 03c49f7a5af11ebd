"""Exact float32 all-pairs from a bfloat16 candidate pass, for CPUs whose AMX units multiply
bfloat16 ~4x faster than float32 (measured on this project's Xeon: 1,100 vs 290 GFLOP/s).
Torch-free (numpy and numba): torch's callers go through `exact_from_candidates`.

The bf16 pass keeps each row's `slots(k)` best *approximate* cosines (the heap scan, unchanged);
each row then gets a proven bound on how far those approximations can be from the float32
cosines, keeps every candidate that could still be a true neighbour, and rescores it exactly
(float64 accumulation, rounded to float32). A row whose list cannot be proven to hold every
possible neighbour (near-duplicates, dense clusters) takes its candidates from its whole row of
products instead (no list size limit). So the answer is the exact float32 answer, the same
whichever pass produced the candidates: the local engine and the Ray engine agree to the bit
however their tiles ran.

The bound, for unit float32 rows u, v with bf16 roundings ũ, ṽ (du = u - ũ, dv = v - ṽ):
u·v - ũ·ṽ = ũ·dv + du·ṽ + du·dv, so |u·v - ũ·ṽ| <= |ũ||dv| + |du||ṽ| + |du||dv| (Cauchy-Schwarz);
bf16 x bf16 products are exact in float32, and summing d of them in float32 adds at most
γ_d·|ũ||ṽ| (γ_d = d·2^-24 / (1 - d·2^-24)); rounding the sum to bf16 moves it by at most
c·|x| (c = 2^-8 / (1 - 2^-8)); the rescored y is within 2^-23 of u·v. So for a row r and any
column j: |x - y| <= E_r + c·|x|, with E_r = |ũ_r|·max|dv| + |du_r|·max|ṽ| + |du_r|·max|dv|
+ γ_d·|ũ_r|·max|ṽ| + 2^-23. A float32 GEMM is the case du = dv = 0 (c = 2^-24, a margin), and
so are bf16 products summed into float32 without the final bf16 rounding (MKL's
`gemm_bf16bf16f32`, the torch-free path's: `C_F32_OUT`).

Completeness: if a_k is the k-th best approximation of row r, k columns have y >= a_k - E_r - c|a_k|
=: L, so the k-th best y is at least L, and every column that can be in the top k has
x + c|x| >= L - E_r, i.e. x >= T. The pass held the row's `slots` best x (the Ray engine: that
many in each tile's list, over the tile's columns); if the weakest of each full list is < T
(or the list holds every other row), no column outside the lists reaches T.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Literal, Optional

import numpy as np

from ..errors import InvalidOptionError
from .mkl_bf16 import widen_bf16
from .unit_rows import row_norms

if TYPE_CHECKING:
    import torch

__all__ = ["Prefilter", "resolve_prefilter", "slots", "row_bounds", "exact_topk", "exact_from_candidates",
           "C_BF16_OUT", "C_F32_OUT"]

Products = Callable[[np.ndarray], np.ndarray]  # rows -> a new float32 array of their products with every row

Prefilter = Literal["auto", "bfloat16", "none"]
_PREFILTERS = ("auto", "bfloat16", "none")

C_BF16_OUT = 2.0 ** -8 / (1 - 2.0 ** -8)  # c for products rounded to bf16 (torch's bf16 mm)
C_F32_OUT = 2.0 ** -24  # c for bf16 products summed into float32 (MKL's gemm_bf16bf16f32): a margin
_RESCORE_ERR = 2.0 ** -23


@lru_cache(maxsize=1)
def amx_bf16() -> bool:
    """Whether this CPU has AMX bfloat16 tiles (Linux: the `amx_bf16` flag). Without them a bf16
    GEMM is no faster than float32 (often slower)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " amx_bf16" in flags


def check_prefilter(prefilter: str) -> None:
    if prefilter not in _PREFILTERS:
        raise InvalidOptionError(f"prefilter must be one of {_PREFILTERS}, got {prefilter!r}", option="prefilter")


def resolve_prefilter(prefilter: str, device: "torch.device") -> bool:
    """Whether the float32 CPU all-pairs takes its candidates from a bf16 pass: "auto" where the
    CPU has AMX and torch's oneDNN can use it, "bfloat16" always (the answer is the same, only
    slower without AMX), "none" never."""
    check_prefilter(prefilter)
    if device.type != "cpu" or prefilter == "none":
        return False
    if prefilter == "bfloat16":
        return True
    import torch

    return amx_bf16() and bool(torch.backends.mkldnn.is_available())


def slots(k: int, n_others: int, *, lists: int = 1) -> int:
    """Candidates the bf16 pass keeps per row for a final top k: 2k + 16 in one list (at k = 24
    on random 768-d rows the proof holds for ~96% of rows, which then rescore ~50 candidates
    each); k + 8 in each of `lists` > 1 lists over disjoint columns (the Ray engine's tiles),
    among which those ~50 spread (4 lists of 32: every row settled at that size)."""
    return max(1, min((2 * int(k) + 16) if lists <= 1 else (int(k) + 8), int(n_others)))


def row_bounds(U: np.ndarray, low: Optional[np.ndarray], *, c: float = C_BF16_OUT) -> tuple[np.ndarray, float]:
    """(E_r for every row, c): |approximate - exact cosine| <= E_r + c·|approximate| for the
    products of `low` (U rounded to bf16, as bf16 bit patterns, uint16; None: a float32 GEMM of
    U itself, c = 2^-24) whose float32 sums are rounded by at most c·|x| on output (`C_BF16_OUT`
    for products in bf16, `C_F32_OUT` for products kept in float32). Widened slice by slice (no
    n x d float32 copy of `low`). The norms are float64 sums, so the final 1e-4 margin covers
    them with room to spare."""
    d = U.shape[1]
    gamma = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)
    if low is None:
        nrm = row_norms(U)
        du = np.zeros_like(nrm)
        c = 2.0 ** -24
    else:
        nrm = np.empty(U.shape[0], dtype=np.float64)
        du = np.empty_like(nrm)
        step = 4096
        for s in range(0, U.shape[0], step):
            lowf = widen_bf16(low[s:s + step])
            nrm[s:s + step] = row_norms(lowf)
            du[s:s + step] = row_norms(U[s:s + step] - lowf)  # exact in float32
    n_max = float(nrm.max(initial=0.0))
    d_max = float(du.max(initial=0.0))
    E = nrm * d_max + du * n_max + du * d_max + gamma * nrm * n_max + _RESCORE_ERR
    return E * (1 + 1e-4), c


def _threshold_py(kth, e, c):  # pragma: no cover - compiled by numba
    """The least approximate value x that may still belong to a row's top k, given its k-th best
    approximation `kth` and bound e + c|x| (the module docstring's T)."""
    L = kth - e - c * abs(kth)
    Z = L - e
    return Z / (1 + c) if Z >= 0 else Z / (1 - c)


def _candidates_py(V, I, k, seg, n_others, E, c, r0, r1, cand, cval, count):  # pragma: no cover - compiled by numba
    """Rows r0:r1 of the approximate lists (V values, I ids, I < 0 empty), each row's list made
    of segments `seg` wide, each the best `seg` of its own columns (one segment: the local
    engine; one a tile: the Ray engine): each row's candidates (ids with x >= T, best x first,
    into cand[r], their x into cval[r]) and their number, or -1 where a column left out of a
    full segment may reach T (the segment's weakest is >= T)."""
    W = V.shape[1]
    buf = np.empty(W, np.float32)
    ids = np.empty(W, np.int64)
    for r in range(r0, r1):
        m = 0
        for j in range(W):
            if I[r, j] >= 0:
                buf[m] = V[r, j]
                ids[m] = I[r, j]
                m += 1
        if m == 0:
            count[r] = 0
            continue
        o = np.argsort(buf[:m])
        T = _threshold(buf[o[m - k]] if m >= k else buf[o[0]], E[r], c)
        settled = m >= n_others  # every other row is in the list
        if not settled:
            settled = True
            for s0 in range(0, W, seg):
                full = True
                weakest = np.inf
                for j in range(s0, min(s0 + seg, W)):
                    if I[r, j] < 0:
                        full = False
                        break
                    if V[r, j] < weakest:
                        weakest = V[r, j]
                if full and weakest >= T:
                    settled = False
                    break
        if not settled:
            count[r] = -1
            continue
        q = 0
        for t in range(m - 1, -1, -1):
            x = buf[o[t]]
            if x < T:
                break
            cand[r, q] = ids[o[t]]
            cval[r, q] = x
            q += 1
        count[r] = q


def _thresholds_py(kth, E, c, out):  # pragma: no cover - compiled by numba
    for r in range(kth.shape[0]):
        out[r] = _threshold(kth[r], E[r], c)


def _rescore_top_py(U, rows, cand, cval, count, E, c, k, out_v, out_i):  # pragma: no cover - compiled by numba
    """For each rows[p]: the exact cosine (float64 sum, rounded to float32) with its candidates
    cand[p, :count[p]] (best approximation cval first), the k best into out_v/out_i[rows[p]]
    (value descending, ties by lower id; unfilled slots stay -inf / -1). Stops at the first
    candidate whose bound x + E + c|x| is below the k-th exact value: no later one can enter."""
    d = U.shape[1]
    for p in range(rows.shape[0]):
        r = rows[p]
        ur = U[r]
        filled = 0
        for t in range(count[p]):
            x = cval[p, t]
            if filled == k and x + E[r] + c * abs(x) < out_v[r, k - 1]:
                break
            j = cand[p, t]
            uj = U[j]
            acc = 0.0
            for e in range(d):
                acc += np.float64(ur[e]) * np.float64(uj[e])
            y = np.float32(acc)
            if filled == k:
                lv = out_v[r, k - 1]
                if y < lv or (y == lv and j > out_i[r, k - 1]):
                    continue
                pos = k - 1
            else:
                pos = filled
                filled += 1
            while pos > 0 and (out_v[r, pos - 1] < y or (out_v[r, pos - 1] == y and out_i[r, pos - 1] > j)):
                out_v[r, pos] = out_v[r, pos - 1]
                out_i[r, pos] = out_i[r, pos - 1]
                pos -= 1
            out_v[r, pos] = y
            out_i[r, pos] = j


_threshold = None
_KERNELS: dict[str, object] = {}


def _kernels() -> tuple:
    """The numba-compiled kernels (cached on disk like `heap_kernel`'s)."""
    global _threshold
    if not _KERNELS:
        import numba

        _threshold = numba.njit(cache=True, nogil=True, inline="always")(_threshold_py)
        _KERNELS["candidates"] = numba.njit(cache=True, nogil=True)(_candidates_py)
        _KERNELS["thresholds"] = numba.njit(cache=True, nogil=True)(_thresholds_py)
        _KERNELS["rescore_top"] = numba.njit(cache=True, nogil=True, fastmath=True)(_rescore_top_py)
    return _KERNELS["candidates"], _KERNELS["thresholds"], _KERNELS["rescore_top"]


def _spans(n: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n // max(1, parts))
    return [(s, min(s + step, n)) for s in range(0, n, step)] if n else []


def exact_topk(Uc: np.ndarray, low: Optional[np.ndarray], vals: np.ndarray, idx: np.ndarray, k: int, *,
               products: Products, c: float = C_BF16_OUT, list_width: Optional[int] = None,
               threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each row's exact float32 top k (self excluded, sorted: value descending, ties by lower id)
    of unit-row Uc (float32, C-contiguous, all valid), from its approximate list (vals/idx,
    idx < 0 empty) of the products of `low` (Uc rounded to bf16, as bit patterns; None: float32
    products), each rounded by at most c·|x| on output (`row_bounds`): one list of the best a
    row, or several lists over disjoint columns side by side (the Ray engine's tiles),
    `list_width` each (default: the whole width, one list). A row the lists cannot settle takes
    its candidates from its whole row of products instead: `products(rows)` gives them, float32
    (len(rows) x n), computed as the pass computed its own."""
    cand_k, _, rescore_k = _kernels()
    E, c = row_bounds(Uc, low, c=c)
    n = Uc.shape[0]
    vals = np.ascontiguousarray(vals, dtype=np.float32)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    cand = np.empty(idx.shape, dtype=np.int64)
    cval = np.empty(idx.shape, dtype=np.float32)
    count = np.empty(n, dtype=np.int64)
    out_v = np.full((n, k), -np.inf, dtype=np.float32)
    out_i = np.full((n, k), -1, dtype=np.int64)

    def rescore(span: tuple[int, int]) -> None:
        rows = settled[span[0]:span[1]]
        rescore_k(Uc, rows, cand[rows], cval[rows], count[rows], E, c, k, out_v, out_i)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        seg = int(list_width) if list_width else idx.shape[1]
        list(pool.map(lambda s: cand_k(vals, idx, k, seg, n - 1, E, c, s[0], s[1], cand, cval, count), _spans(n, threads)))
        settled = np.flatnonzero(count >= 0)
        list(pool.map(rescore, _spans(settled.size, threads)))
    unsettled = np.flatnonzero(count < 0)
    if unsettled.size:
        _whole_rows(Uc, products, unsettled, k, E, c, out_v, out_i)
    return out_v, out_i


def exact_from_candidates(U: "torch.Tensor", low: Optional["torch.Tensor"], vals: np.ndarray, idx: np.ndarray, k: int,
                          *, list_width: Optional[int] = None, threads: int = 1) -> tuple["torch.Tensor", "torch.Tensor"]:
    """`exact_topk` for torch's candidate passes: U float32 unit rows, `low` U in bfloat16 whose
    products were rounded to bf16 (torch's bf16 `mm`; None: float32 products). Torch tensors out."""
    import torch

    M = U if low is None else low

    def products(rows: np.ndarray) -> np.ndarray:
        return (M[torch.from_numpy(rows)] @ M.T).float().numpy()

    bits = None if low is None else low.contiguous().view(torch.int16).numpy().view(np.uint16)
    out_v, out_i = exact_topk(np.ascontiguousarray(U.numpy()), bits, vals, idx, k, products=products,
                              c=C_BF16_OUT, list_width=list_width, threads=threads)
    return torch.from_numpy(out_v), torch.from_numpy(out_i)


def _whole_rows(Uc: np.ndarray, products: Products, rows: np.ndarray, k: int, E: np.ndarray, c: float,
                out_v: np.ndarray, out_i: np.ndarray) -> None:
    """Rows whose list was not provably complete (near-duplicates, dense clusters): the products
    with every row, thresholded by the same bound (no list size limit), rescored as the others."""
    _, thresholds_k, rescore_k = _kernels()
    n = Uc.shape[0]
    kk = min(k, n - 1)
    chunk = max(1, (64 << 20) // (4 * max(1, n)))
    for s in range(0, rows.size, chunk):
        rr = rows[s:s + chunk]
        Sn = np.asarray(products(rr), dtype=np.float32)  # a new array (`Products`): changed in place
        Sn[np.arange(rr.size), rr] = -np.inf
        kth = np.partition(Sn, n - kk, axis=1)[:, n - kk].astype(np.float32)
        T = np.empty(rr.size, dtype=np.float64)
        thresholds_k(kth, E[rr], c, T)
        mask = Sn >= np.nextafter(T.astype(np.float32), np.float32(-np.inf))[:, None]
        lists = [np.flatnonzero(m) for m in mask]
        width = max(1, max(len(x) for x in lists))
        cand = np.full((rr.size, width), -1, dtype=np.int64)
        cval = np.full((rr.size, width), np.inf, dtype=np.float32)
        for p, x in enumerate(lists):
            xs = Sn[p, x]
            o = np.argsort(-xs, kind="stable")
            cand[p, :len(x)] = x[o]
            cval[p, :len(x)] = xs[o]
        rescore_k(Uc, rr.astype(np.int64), cand, cval, np.array([len(x) for x in lists], dtype=np.int64), E, c, k,
                  out_v, out_i)
