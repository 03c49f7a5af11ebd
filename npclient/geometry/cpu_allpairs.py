"""The exact float32 all-pairs on AMX CPUs, without importing torch.

The same algorithm as `all_pairs_topk` on a CPU with AMX (`prefilter`: a bfloat16 candidate
pass through the numba heap scan, then exact float32 rescoring), with the candidate GEMM taken
from MKL's `cblas_gemm_bf16bf16f32` (`mkl_bf16`) instead of torch's `mm`. A one-shot command
(`np-mirror geometry allpairs`) then never pays `import torch` (1.5-2.3 s on this project's
Xeon, more than the search itself). The candidates differ from torch's (another GEMM, products
not rounded to bf16), the answer does not: both passes are rescored exactly (`prefilter`) from
unit rows that the same `unit_rows` normalised, so it is `all_pairs_topk`'s to the bit. With
torch loaded already, `all_pairs_topk` is the faster of the two (oneDNN's bf16 GEMM ran ~1.4x
MKL's here), so `jobs.all_pairs` takes this path only in a process without torch.

`all_pairs_arrays(W, k)` answers in `all_pairs_topk`'s layout (self first) as numpy arrays,
or None where this path does not apply (no AMX or no MKL, numba missing, an invalid row, a
GPU that torch would pick): the caller then runs `all_pairs_topk`.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from ..errors import NPError
from .exclusive import default_threads, run_pairs_exclusive
from .heap_kernel import _Heaps, _numba_scan, heap_step
from .mkl_bf16 import gemm as mkl_gemm
from .mkl_bf16 import to_bf16_bits
from .prefilter import C_F32_OUT, Prefilter, amx_bf16, check_prefilter, exact_topk, slots
from .unit_rows import unit_rows

__all__ = ["available", "all_pairs_arrays", "prefiltered_topk", "BLOCK_ROWS"]

Progress = Optional[Callable[[int, int], None]]

BLOCK_ROWS = 2048  # `blocks.default_block_rows` on CPU: a 16 MB block of products stays in L3


def available(prefilter: str = "auto") -> bool:
    """Whether this process can take the torch-free path: MKL's bf16 GEMM and numba, on an AMX
    CPU ("auto"; "bfloat16": on any CPU, as `all_pairs_topk`'s option; "none": never)."""
    check_prefilter(prefilter)
    if prefilter == "none" or (prefilter == "auto" and not amx_bf16()):
        return False
    return mkl_gemm() is not None and _numba_scan() is not None


def gpu_possible() -> bool:
    """Whether torch could find a GPU here (an NVIDIA or AMD device node, and a torch build other
    than "+cpu"): then a call without a device belongs to torch, which picks it."""
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/kfd")):
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        return not version("torch").endswith("+cpu")
    except PackageNotFoundError:
        return True


def prefiltered_topk(U: np.ndarray, k: int, *, block: int = BLOCK_ROWS, progress: Progress = None,
                     threads: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's exact float32 top k (self excluded; value descending, ties by lower id) of
    unit rows U (float32, all valid, n - 1 >= k >= 1): the heap scan over MKL bf16 products
    keeps `slots(k)` candidates a row, `prefilter.exact_topk` rescores them. `progress(done,
    total)` counts block pairs."""
    g = mkl_gemm()
    if g is None or _numba_scan() is None:
        raise NPError("the torch-free all-pairs needs MKL's bf16 GEMM and numba (see `available()`)")
    U = np.ascontiguousarray(U, dtype=np.float32)
    n = U.shape[0]
    T_all = max(1, int(threads) if threads else default_threads())
    low = to_bf16_bits(U)
    h = _Heaps(n, slots(k, n - 1))
    starts = list(range(0, n, block))
    pairs = [(bi, bj) for bi in range(len(starts)) for bj in range(bi, len(starts))]
    T = min(T_all, max(1, len(starts) // 2))
    cap = min(block, n) ** 2

    def products_into(out: np.ndarray, a0: int, a1: int, b0: int, b1: int) -> None:
        g.nt(low[a0:a1], low[b0:b1], out)

    def run_pair(pair: tuple[int, int], sbuf: np.ndarray) -> None:
        r0, c0 = starts[pair[0]], starts[pair[1]]
        heap_step(products_into, sbuf, h, r0, min(r0 + block, n), c0, min(c0 + block, n), row_off=r0, col_off=c0)

    def scratch() -> np.ndarray:
        if T > 1:
            g.single_threaded_here()  # each worker is one core's worth of GEMM (alone, MKL's own threads)
        return np.empty(cap, dtype=np.float32)

    run_pairs_exclusive(pairs, run_pair, T, scratch, progress)
    approx_v, approx_i = h.arrays()

    def products(rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, n), dtype=np.float32)
        g.nt(np.ascontiguousarray(low[rows]), low, out)
        return out

    return exact_topk(U, low, approx_v, approx_i, k, products=products, c=C_F32_OUT, threads=T_all)


def all_pairs_arrays(W: np.ndarray, k: int, *, progress: Progress = None, block_rows: Optional[int] = None,
                     threads: Optional[int] = None, prefilter: Prefilter = "auto") -> Optional[tuple[np.ndarray, np.ndarray]]:
    """`all_pairs_topk(W, k)` on the CPU as (values float32, indices int64) numpy arrays, n x
    min(k, n), self first; None where this path does not apply (`available(prefilter)`, an
    invalid row, fewer than two rows or k < 2): run `all_pairs_topk` then."""
    if not available(prefilter):
        return None
    W = np.asarray(W)
    if W.ndim != 2 or W.dtype != np.float32:
        return None
    n = W.shape[0]
    k_total = min(int(k), n)
    if k_total < 2:
        return None
    U, invalid = unit_rows(W)
    if invalid.any():
        return None
    out_v, out_i = prefiltered_topk(U, k_total - 1, block=max(1, int(block_rows or BLOCK_ROWS)), progress=progress,
                                    threads=threads)
    values = np.empty((n, k_total), dtype=np.float32)
    indices = np.empty((n, k_total), dtype=np.int64)
    values[:, 0] = 1.0
    indices[:, 0] = np.arange(n)
    values[:, 1:] = out_v
    indices[:, 1:] = out_i
    return values, indices
