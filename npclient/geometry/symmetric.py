"""All pairs within one matrix: `all_pairs_topk` and the symmetric block-pair machinery.

All-pairs uses the symmetry of W·Wᵀ: block (i, j) with j >= i is computed once (a diagonal
block only on and above its diagonal, in strips); its rows feed row block i and its columns
(the transpose) feed row block j. Invalid rows are taken out before and put back after.
`_symmetric_heap` drives the numba heap scan (CPU, float32 products; worker threads through
`threads.run_exclusive`; over bfloat16 rows for `prefilter`'s candidates), `_symmetric` the
torch selections ("dense" on GPUs, "threshold" on CPU without numba). Conventions and
selection modes: see `topk`.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import numpy as np
import torch

from ..errors import InvalidOptionError
from .blocks import Progress, Selection, _fill, _n_rows, _rescore, _resolve_selection, default_block_rows
from .dense import _dense, _lower_bounds, _threshold
from .device import DeviceLike, DTypeLike, as_float32, normalize_rows, pick_device, resolve_dtype
from .heap_kernel import _Heaps, _numba_scan, heap_step
from .merge import _NEG, TopK, _Running, _sort_rows
from .prefilter import Prefilter, exact_from_candidates, resolve_prefilter, slots
from .threads import cpu_threads, run_exclusive

__all__ = ["all_pairs_topk", "dense_pair", "heap_pair"]


def all_pairs_topk(
    W: Any,
    k: int,
    *,
    block_rows: Optional[int] = None,
    device: DeviceLike = None,
    dtype: DTypeLike = None,
    progress: Progress = None,
    selection: Selection = "auto",
    prefilter: Prefilter = "auto",
) -> TopK:
    """For every row of W: itself first, then its k-1 most cosine-similar other rows.

    The layout of Neuronpedia's `topkCosSimIndices/Values` (k = 25 there): self first with
    1.0 (NaN for an invalid row), then the valid rows by cosine, then invalid rows in index
    order with NaN; an invalid row lists itself, then the other rows in index order, all NaN.
    Width min(k, n). Each block pair (i, j >= i) of W·Wᵀ is computed once and serves both
    row blocks. `progress(done, total)` counts block pairs. Returns CPU tensors.

    `prefilter` (float32 on CPU with the heap scan): "auto" takes the candidates from a bfloat16
    pass where the CPU has AMX (~4x the float32 GEMM rate) and rescores them exactly, so the
    answer is the float32 one (see `prefilter`); "bfloat16" always, "none" never.
    """
    dev = pick_device(device)
    dt = resolve_dtype(dtype, dev)
    mode = _resolve_selection(selection, dev)
    low_candidates = resolve_prefilter(prefilter, dev)
    n, d = _n_rows(W)
    if k < 0:
        raise InvalidOptionError(f"k must be >= 0, got {k}", option="k")
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
        if mode == "heap" and dt == torch.float32 and low_candidates:
            vals, idx = _prefiltered(U, kv, max(1, block), progress)
        elif mode == "heap" and dt == torch.float32:
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


def _prefiltered(U: torch.Tensor, k: int, block: int, progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 top-k of unit-row U (all valid) from the heap scan over U in bfloat16
    (`slots(k)` candidates a row), each candidate rescored exactly (`prefilter`). torch's bf16
    `mm` (oneDNN, AMX) runs ~1.4x MKL's bf16 GEMM here, so with torch loaded this is faster than
    `cpu_allpairs` (the torch-free command's path), whose answer is the same to the bit."""
    low = U.bfloat16()
    approx_v, approx_i = _symmetric_heap(low, slots(k, U.shape[0] - 1), block, progress)
    return exact_from_candidates(U, low, approx_v.numpy(), approx_i.numpy(), k, threads=cpu_threads())


def _symmetric_heap(U: torch.Tensor, k: int, block: int, progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """`_symmetric` with the numba heap scan (CPU, float32 products; U float32, or bfloat16 for
    `_prefiltered`): each block pair (i, j >= i) is one GEMM (a diagonal one only above its
    diagonal) and one pass that feeds both sides.

    With T = torch.get_num_threads() > 1, T worker threads each take a block pair whose row
    blocks no other worker holds (so no heap row is written by two threads) and run its GEMM
    single-threaded, then its scan: the scans overlap the other workers' GEMMs instead of
    leaving cores idle, and no OpenMP barrier waits on a descheduled thread. torch's thread
    count is set to 1 for the duration of the call and restored after
    (`threads.torch_single_threaded`, inside `threads.run_exclusive`)."""
    _numba_scan()
    nv = U.shape[0]
    h = _Heaps(nv, k)
    starts = list(range(0, nv, block))
    pairs = [(bi, bj) for bi in range(len(starts)) for bj in range(bi, len(starts))]
    T = min(cpu_threads(), max(1, len(starts) // 2))
    cap = min(block, nv) ** 2

    def run_pair(pair: tuple[int, int], sbuf: torch.Tensor) -> None:
        r0, c0 = starts[pair[0]], starts[pair[1]]
        heap_pair(U, sbuf, h, r0, min(r0 + block, nv), c0, min(c0 + block, nv), row_off=r0, col_off=c0)

    run_exclusive(pairs, run_pair, T, cap, progress)
    return h.result()


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
                if not thresh or diag:  # dense; a cold diagonal block (the first one) too
                    dense_pair(run, S, r0, c0, diag=diag, row_off=r0, col_off=c0)
                else:
                    th_r = run.thr[r0:r1] if run.warm(r0, r1) else _lower_bounds(S, k, 1)
                    th_c = run.thr[c0:c1] if run.warm(c0, c1) else _lower_bounds(S, k, 0)
                    if th_r is None:
                        _dense(run, r0, S, ids_c, dim=1)
                    if th_c is None:
                        _dense(run, c0, S, lambda p, r0=r0: p + r0, dim=0)
                    if th_r is not None or th_c is not None:
                        _threshold(run, S, r0, c0, th_r, th_c, ids_c)
            done += 1
            if progress is not None:
                progress(done, total)
    return run.vals, run.idx


_SUB = 512


def heap_pair(U: torch.Tensor, sbuf: torch.Tensor, h: _Heaps, r0: int, r1: int, c0: int, c1: int, *,
              row_off: int, col_off: int) -> None:
    """`heap_kernel.heap_step` with torch's GEMM: rows r0:r1 against columns c0:c1 of unit-row U
    (float32, or bfloat16 multiplied in bfloat16 and widened), fed into heaps `h` at rows
    `row_off`/`col_off`; `sbuf` (float32) holds at least (r1 - r0) * (c1 - c0) values."""

    def gemm(out: np.ndarray, a0: int, a1: int, b0: int, b1: int) -> None:
        _gemm_into(torch.from_numpy(out), U[a0:a1], U[b0:b1])

    heap_step(gemm, sbuf.numpy(), h, r0, r1, c0, c1, row_off=row_off, col_off=col_off)


_LOW_OUT = threading.local()


def _gemm_into(S: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> None:
    """S (float32) = A·Bᵀ; bfloat16 rows multiply in bfloat16 (AMX) into this thread's own
    buffer (reused: no 8 MB allocation per block) and are widened into S."""
    if A.dtype == torch.float32:
        torch.mm(A, B.T, out=S)
        return
    buf = getattr(_LOW_OUT, "buf", None)
    if buf is None or buf.numel() < S.numel():
        buf = _LOW_OUT.buf = torch.empty(S.numel(), dtype=torch.bfloat16)
    low = buf[: S.numel()].view(S.shape)
    torch.mm(A, B.T, out=low)
    S.copy_(low)


def dense_pair(run: _Running, S: torch.Tensor, r0: int, c0: int, *, diag: bool, row_off: int, col_off: int) -> None:
    """One block pair's dense step: S = rows r0.. · columns c0.. feeds `run` at rows `row_off`
    (and, off the diagonal, its transpose at `col_off`), ids global. A diagonal block is
    whole, its diagonal masked (in place), and feeds its rows only."""
    if diag:
        S.diagonal().fill_(_NEG)
    _dense(run, row_off, S, lambda p: p + c0, dim=1)
    if not diag:
        _dense(run, col_off, S, lambda p: p + r0, dim=0)


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
